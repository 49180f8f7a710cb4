#include "allocator/block_allocator.hpp"

#include <fmt/format.h>

#include "allocator/block_table.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv {

BlockAllocator::BlockAllocator(uint64_t num_blocks) {
    if (num_blocks == 0 || num_blocks > UINT32_MAX)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("BlockAllocator: num_blocks must be in [1, {}], got {}", UINT32_MAX,
                                num_blocks));
    refcount_.assign(num_blocks, 0);
    free_.reserve(num_blocks);
    // Pushed in reverse so that a fresh pool hands out 0, 1, 2, ...: dumps read naturally.
    for (uint64_t i = num_blocks; i-- > 0;)
        free_.push_back(static_cast<BlockId>(i));
    counters_.num_blocks = num_blocks;
    counters_.free_blocks = num_blocks;
}

void BlockAllocator::throw_out_of_blocks(uint64_t n) const {
    throw Error(ErrorCode::OutOfBlocks, fmt::format("out of blocks: need {} pages, {} of {} free",
                                                    n, free_.size(), refcount_.size()));
}

void BlockAllocator::throw_not_in_use(BlockId b, const char* what) const {
    if (index(b) >= refcount_.size())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: block {} out of range (pool has {})", what, index(b),
                                refcount_.size()));
    throw Error(ErrorCode::InvalidArgument, fmt::format("{}: block {} is free", what, index(b)));
}

uint32_t BlockAllocator::refcount(BlockId b) const {
    if (index(b) >= refcount_.size())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("refcount: block {} out of range (pool has {})", index(b),
                                refcount_.size()));
    return refcount_[index(b)];
}

AllocatorState BlockAllocator::state() const {
    AllocatorState s;
    s.refcounts = refcount_;
    s.free_list = free_;
    s.peak_used_blocks = counters_.peak_used_blocks;
    s.allocations = counters_.allocations;
    s.releases = counters_.releases;
    return s;
}

std::optional<StateProblem> check_state(const AllocatorState& s, uint64_t n) {
    using W = StateProblem::Where;
    if (s.refcounts.size() != n)
        return StateProblem{
            W::Refcounts, 0, "refcounts",
            fmt::format("{} reference counts for a pool of {} blocks", s.refcounts.size(), n)};
    std::vector<uint64_t> first_seen(n, UINT64_MAX);
    for (size_t i = 0; i < s.free_list.size(); ++i) {
        const uint32_t b = index(s.free_list[i]);
        auto at = [&](std::string what) {
            return StateProblem{W::FreeList, i, fmt::format("free_list[{}]", i), std::move(what)};
        };
        if (b >= n) return at(fmt::format("block {} out of range, the pool has {} blocks", b, n));
        if (first_seen[b] != UINT64_MAX)
            return at(fmt::format("block {} is on the free list twice (also at free_list[{}])", b,
                                  first_seen[b]));
        first_seen[b] = i;
        if (s.refcounts[b] != 0)
            return at(
                fmt::format("block {} is on the free list but has refcount {}", b, s.refcounts[b]));
    }
    uint64_t used = 0;
    for (uint64_t b = 0; b < n; ++b) {
        if (s.refcounts[b] == 0 && first_seen[b] == UINT64_MAX)
            return StateProblem{
                W::Refcounts, b, fmt::format("refcounts[{}]", b),
                fmt::format("block {} has refcount 0 but is not on the free list", b)};
        used += s.refcounts[b] > 0;
    }
    if (s.peak_used_blocks < used || s.peak_used_blocks > n)
        return StateProblem{W::PeakUsed, 0, "peak_used_blocks",
                            fmt::format("peak_used_blocks {} is outside [{} blocks in use, {} "
                                        "blocks]",
                                        s.peak_used_blocks, used, n)};
    if (s.allocations < s.releases || s.allocations - s.releases != used)
        return StateProblem{W::Allocations, 0, "allocations",
                            fmt::format("allocations {} - releases {} != {} blocks in use",
                                        s.allocations, s.releases, used)};
    return std::nullopt;
}

std::optional<StateProblem> check_references(std::span<const uint32_t> refcounts,
                                             std::span<const uint64_t> refs) {
    for (uint64_t b = 0; b < refcounts.size(); ++b)
        if (refs[b] != refcounts[b])
            return StateProblem{StateProblem::Where::Refcounts, b, fmt::format("refcounts[{}]", b),
                                fmt::format("block {} has refcount {} but the block tables "
                                            "reference it {} time{}",
                                            b, refcounts[b], refs[b], refs[b] == 1 ? "" : "s")};
    return std::nullopt;
}

void BlockAllocator::restore(const AllocatorState& s) {
    const uint64_t n = refcount_.size();
    for (const BlockTable* t : tables_)
        if (!t->empty())
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("BlockAllocator::restore: a registered block table holds {} "
                                    "blocks",
                                    t->size()));
    if (const auto problem = check_state(s, n))
        throw Error(ErrorCode::InvalidArgument, "BlockAllocator::restore: " + problem->what);
    uint64_t used = 0, shared = 0;
    for (uint32_t rc : s.refcounts) {
        used += rc > 0;
        shared += rc > 1;
    }
    // Copies first (they may throw bad_alloc), then nothing that throws.
    std::vector<uint32_t> refcounts = s.refcounts;
    std::vector<BlockId> free_list = s.free_list;
    free_list.reserve(n);  // allocate() and release() never reallocate afterwards
    refcount_.swap(refcounts);
    free_.swap(free_list);
    counters_.used_blocks = used;
    counters_.free_blocks = n - used;
    counters_.shared_blocks = shared;
    counters_.peak_used_blocks = s.peak_used_blocks;
    counters_.allocations = s.allocations;
    counters_.releases = s.releases;
}

std::string BlockAllocator::check() const {
    const uint64_t n = refcount_.size();
    if (counters_.free_blocks != free_.size())
        return fmt::format("free counter {} != free list length {}", counters_.free_blocks,
                           free_.size());
    if (counters_.used_blocks + counters_.free_blocks != n)
        return fmt::format("used {} + free {} != total {}", counters_.used_blocks,
                           counters_.free_blocks, n);
    if (const auto problem = check_state(state(), n)) return problem->what;
    std::vector<uint64_t> refs(n, 0);
    for (const BlockTable* t : tables_)
        for (BlockId b : t->blocks()) {
            if (index(b) >= n) return fmt::format("a table references block {} >= {}", index(b), n);
            ++refs[index(b)];
        }
    if (const auto problem = check_references(refcount_, refs)) return problem->what;
    uint64_t used = 0, shared = 0;
    for (uint32_t rc : refcount_) {
        used += rc > 0;
        shared += rc > 1;
    }
    if (used != counters_.used_blocks)
        return fmt::format("used counter {} != blocks in use {}", counters_.used_blocks, used);
    if (shared != counters_.shared_blocks)
        return fmt::format("shared counter {} != shared blocks {}", counters_.shared_blocks,
                           shared);
    return {};
}

}  // namespace pagedkv
