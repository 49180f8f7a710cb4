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

void BlockAllocator::restore(const AllocatorState& s) {
    auto bad = [](const std::string& m) {
        return Error(ErrorCode::InvalidArgument, "BlockAllocator::restore: " + m);
    };
    const uint64_t n = refcount_.size();
    for (const BlockTable* t : tables_)
        if (!t->empty())
            throw bad(fmt::format("a registered block table holds {} blocks", t->size()));
    if (s.refcounts.size() != n)
        throw bad(
            fmt::format("{} reference counts for a pool of {} blocks", s.refcounts.size(), n));
    std::vector<uint8_t> on_free_list(n, 0);
    for (size_t i = 0; i < s.free_list.size(); ++i) {
        const uint32_t b = index(s.free_list[i]);
        if (b >= n) throw bad(fmt::format("free_list[{}] is block {} >= {}", i, b, n));
        if (on_free_list[b]++) throw bad(fmt::format("block {} twice on the free list", b));
        if (s.refcounts[b] != 0)
            throw bad(fmt::format("block {} is free but has refcount {}", b, s.refcounts[b]));
    }
    uint64_t used = 0, shared = 0;
    for (uint64_t i = 0; i < n; ++i) {
        if (s.refcounts[i] == 0 && !on_free_list[i])
            throw bad(fmt::format("block {} has refcount 0 but is not on the free list", i));
        used += s.refcounts[i] > 0;
        shared += s.refcounts[i] > 1;
    }
    if (s.peak_used_blocks < used || s.peak_used_blocks > n)
        throw bad(fmt::format("peak_used_blocks {} outside [{}, {}]", s.peak_used_blocks, used, n));
    if (s.allocations < s.releases || s.allocations - s.releases != used)
        throw bad(fmt::format("allocations {} - releases {} != {} blocks in use", s.allocations,
                              s.releases, used));
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
    std::vector<uint8_t> on_free_list(n, 0);
    for (BlockId b : free_) {
        if (index(b) >= n) return fmt::format("free list holds block {} >= {}", index(b), n);
        if (on_free_list[index(b)]++) return fmt::format("block {} twice on free list", index(b));
        if (refcount_[index(b)] != 0)
            return fmt::format("block {} is free but has refcount {}", index(b),
                               refcount_[index(b)]);
    }
    std::vector<uint32_t> refs(n, 0);
    for (const BlockTable* t : tables_)
        for (BlockId b : t->blocks()) {
            if (index(b) >= n) return fmt::format("a table references block {} >= {}", index(b), n);
            ++refs[index(b)];
        }
    uint64_t used = 0, shared = 0;
    for (uint64_t i = 0; i < n; ++i) {
        if (refs[i] != refcount_[i])
            return fmt::format("block {} has refcount {} but {} table references", i, refcount_[i],
                               refs[i]);
        if (refcount_[i] > 0 && on_free_list[i])
            return fmt::format("block {} is both free and referenced", i);
        used += refcount_[i] > 0;
        shared += refcount_[i] > 1;
    }
    if (used != counters_.used_blocks)
        return fmt::format("used counter {} != blocks in use {}", counters_.used_blocks, used);
    if (shared != counters_.shared_blocks)
        return fmt::format("shared counter {} != shared blocks {}", counters_.shared_blocks,
                           shared);
    return {};
}

}  // namespace pagedkv
