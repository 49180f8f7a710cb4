#include "allocator/block_allocator.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "allocator/block_table.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv {

namespace {

inline void prefetch_for_write(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 1);
#else
    (void)p;
#endif
}

}  // namespace

BlockAllocator::BlockAllocator(uint64_t num_blocks) {
    if (num_blocks == 0 || num_blocks > UINT32_MAX)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("BlockAllocator: num_blocks must be in [1, {}], got {}", UINT32_MAX,
                                num_blocks));
    refcount_ = std::make_unique<uint8_t[]>(num_blocks);  // zeroed
    free_ = std::make_unique_for_overwrite<BlockId[]>(num_blocks);
    // Pushed in reverse so that a fresh pool hands out 0, 1, 2, ...: dumps read naturally.
    for (uint64_t i = 0; i < num_blocks; ++i)
        free_[i] = static_cast<BlockId>(num_blocks - 1 - i);
    free_top_ = num_blocks;
    spare_.reserve(kSpareBuffers);
    counters_.num_blocks = num_blocks;
    counters_.free_blocks = num_blocks;
}

void BlockAllocator::retain_big(BlockId b) {
    uint8_t& rc = refcount_[index(b)];
    if (rc == kBig - 1) {
        big_.emplace(index(b), uint32_t{kBig});  // may throw: nothing changed yet
        rc = kBig;
    } else {
        uint32_t& count = big_.find(index(b))->second;
        if (count == UINT32_MAX)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("retain: block {} has {} references already", index(b), count));
        ++count;
    }
}

void BlockAllocator::release_big(BlockId b) noexcept {
    const auto it = big_.find(index(b));
    if (--it->second == kBig - 1) {
        big_.erase(it);
        refcount_[index(b)] = kBig - 1;
    }
}

void BlockAllocator::make_room(std::vector<BlockId>& out, uint64_t n) {
    out.reserve(std::max<size_t>(out.size() + n, 2 * out.capacity()));
}

template <class Order>
void BlockAllocator::release_each(std::span<const BlockId> blocks, size_t& done, Order order) {
    uint8_t* const rc = refcount_.get();
    const uint64_t n = num_blocks();
    BlockId* const fl = free_.get();
    size_t top = free_top_;
    uint64_t freed = 0, to_lru = 0, unshared = 0;
    auto commit = [&] {
        free_top_ = top;
        counters_.used_blocks -= freed + to_lru;
        counters_.free_blocks += freed;
        counters_.cached_blocks += to_lru;
        counters_.releases += freed + to_lru;
        counters_.shared_blocks -= unshared;
    };
    // A table's pages lie anywhere in a large pool: ask for the reference counts a few pages
    // ahead, so that the cache misses overlap rather than each stalling the loop in turn.
    constexpr size_t kAhead = 16;
    auto prefetch = [&](size_t i) {
        const uint32_t x = index(blocks[order(i)]);
        if (x < n) prefetch_for_write(rc + x);
    };
    const size_t ahead = std::min(kAhead, blocks.size());
    for (size_t i = 0; i < ahead; ++i)
        prefetch(i);
    for (size_t i = 0; i < blocks.size(); ++i) {
        if (i + kAhead < blocks.size()) prefetch(i + kAhead);
        const BlockId b = blocks[order(i)];
        const uint32_t x = index(b);
        if (x >= n) [[unlikely]] {
            commit();
            done = i;
            throw_not_in_use(b, "release");
        }
        const uint8_t r = rc[x];
        // One test for the two rare cases, 0 (free: an error) and kBig (a large count).
        if (uint8_t(r - 1) >= kBig - 1) [[unlikely]] {
            if (r == 0) {
                commit();
                done = i;
                throw_not_in_use(b, "release");
            }
            release_big(b);
            continue;
        }
        const uint8_t left = uint8_t(r - 1);
        rc[x] = left;
        if (left == 0) {
            if (caching_ && cached_[x]) [[unlikely]] {
                lru_push_back(x);
                ++to_lru;
            } else {
                fl[top++] = b;
                ++freed;
            }
        } else {
            unshared += left == 1;
        }
    }
    commit();
    done = blocks.size();
}

void BlockAllocator::release_reverse(std::span<const BlockId> blocks, size_t& done) {
    const size_t last = blocks.size() - 1;
    release_each(blocks, done, [last](size_t i) { return last - i; });
}

void BlockAllocator::release_forward(std::span<const BlockId> blocks, size_t& done) {
    release_each(blocks, done, [](size_t i) { return i; });
}

void BlockAllocator::register_table(BlockTable* t) {
    t->slot_ = tables_.size();
    tables_.push_back(t);
}

void BlockAllocator::unregister_table(BlockTable* t) noexcept {
    BlockTable* last = tables_.back();
    tables_[t->slot_] = last;
    last->slot_ = t->slot_;
    tables_.pop_back();
}

void BlockAllocator::throw_out_of_blocks(uint64_t n) const {
    if (counters_.cached_blocks)
        throw Error(ErrorCode::OutOfBlocks,
                    fmt::format("out of blocks: need {} pages, {} of {} free and {} evictable", n,
                                free_top_, num_blocks(), counters_.cached_blocks));
    throw Error(ErrorCode::OutOfBlocks, fmt::format("out of blocks: need {} pages, {} of {} free",
                                                    n, free_top_, num_blocks()));
}

void BlockAllocator::evict_for(uint64_t n, std::vector<BlockId>& out) {
    if (n > free_top_ + counters_.cached_blocks) throw_out_of_blocks(n);
    if (n > out.capacity() - out.size()) make_room(out, n);  // may throw: nothing changed
    // Each eviction frees at least one block (the listener may free more: children whose
    // parent went), so this ends; nothing below throws.
    while (free_top_ < n) {
        const uint32_t x = lru_next_[lru_end_];
        lru_unlink(x);
        cached_[x] = 0;
        --counters_.cached_blocks;
        ++counters_.free_blocks;
        free_[free_top_++] = BlockId{x};
        ++evictions_;
        if (listener_) listener_->evicted(BlockId{x});
    }
}

void BlockAllocator::enable_caching(EvictionListener* listener) {
    if (!caching_) {
        const uint64_t n = num_blocks();
        auto flags = std::make_unique<uint8_t[]>(n);  // zeroed
        auto prev = std::make_unique_for_overwrite<uint32_t[]>(n + 1);
        auto next = std::make_unique_for_overwrite<uint32_t[]>(n + 1);
        lru_end_ = uint32_t(n);
        prev[n] = next[n] = uint32_t(n);
        cached_ = std::move(flags);
        lru_prev_ = std::move(prev);
        lru_next_ = std::move(next);
        caching_ = true;
    }
    listener_ = listener;
}

void BlockAllocator::disable_caching() noexcept {
    listener_ = nullptr;
}

void BlockAllocator::mark_cached(BlockId b) {
    if (!caching_) throw Error(ErrorCode::InvalidArgument, "mark_cached: caching is not enabled");
    if (index(b) >= num_blocks() || refcount_[index(b)] == 0) throw_not_in_use(b, "mark_cached");
    cached_[index(b)] = 1;
}

void BlockAllocator::uncache(BlockId b) noexcept {
    const uint32_t x = index(b);
    if (!caching_ || x >= num_blocks() || !cached_[x]) return;
    cached_[x] = 0;
    if (refcount_[x] != 0) return;
    lru_unlink(x);
    --counters_.cached_blocks;
    ++counters_.free_blocks;
    free_[free_top_++] = b;
}

void BlockAllocator::reuse(BlockId b) {
    const uint32_t x = index(b);
    if (!is_cached(b))
        throw Error(ErrorCode::InvalidArgument, fmt::format("reuse: block {} is not cached", x));
    if (refcount_[x] != 0) return retain(b);
    lru_unlink(x);
    refcount_[x] = 1;
    --counters_.cached_blocks;
    ++counters_.used_blocks;
    ++counters_.allocations;
    if (counters_.used_blocks > counters_.peak_used_blocks)
        counters_.peak_used_blocks = counters_.used_blocks;
}

std::vector<BlockId> BlockAllocator::evictable() const {
    std::vector<BlockId> out;
    if (!caching_) return out;
    out.reserve(counters_.cached_blocks);
    for (uint32_t x = lru_next_[lru_end_]; x != lru_end_; x = lru_next_[x])
        out.push_back(BlockId{x});
    return out;
}

void BlockAllocator::throw_not_in_use(BlockId b, const char* what) const {
    if (index(b) >= num_blocks())
        throw Error(
            ErrorCode::InvalidArgument,
            fmt::format("{}: block {} out of range (pool has {})", what, index(b), num_blocks()));
    throw Error(ErrorCode::InvalidArgument, fmt::format("{}: block {} is free", what, index(b)));
}

uint32_t BlockAllocator::refcount(BlockId b) const {
    if (index(b) >= num_blocks())
        throw Error(
            ErrorCode::InvalidArgument,
            fmt::format("refcount: block {} out of range (pool has {})", index(b), num_blocks()));
    const uint8_t rc = refcount_[index(b)];
    return rc == kBig ? big_.find(index(b))->second : rc;
}

std::vector<uint32_t> BlockAllocator::refcounts() const {
    std::vector<uint32_t> out(refcount_.get(), refcount_.get() + num_blocks());
    for (const auto& [b, count] : big_)
        out[b] = count;
    return out;
}

AllocatorState BlockAllocator::state() const {
    AllocatorState s;
    s.refcounts = refcounts();
    s.free_list.assign(free_.get(), free_.get() + free_top_);
    if (caching_) {
        for (uint64_t b = 0; b < num_blocks(); ++b)
            if (cached_[b]) s.cached.push_back(BlockId(b));
        s.evictable = evictable();
    }
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
    // Cached blocks: ascending, in range, none on the free list.
    std::vector<uint8_t> cached(n, 0);
    for (size_t i = 0; i < s.cached.size(); ++i) {
        const uint32_t b = index(s.cached[i]);
        auto at = [&](std::string what) {
            return StateProblem{W::Cached, i, fmt::format("cached[{}]", i), std::move(what)};
        };
        if (b >= n) return at(fmt::format("block {} out of range, the pool has {} blocks", b, n));
        if (i > 0 && b <= index(s.cached[i - 1]))
            return at(fmt::format("block {} is not above the one before it", b));
        if (first_seen[b] != UINT64_MAX)
            return at(fmt::format("block {} is cached but on the free list (free_list[{}])", b,
                                  first_seen[b]));
        cached[b] = 1;
    }
    // Evictable blocks: cached, of refcount 0, each once.
    for (size_t i = 0; i < s.evictable.size(); ++i) {
        const uint32_t b = index(s.evictable[i]);
        auto at = [&](std::string what) {
            return StateProblem{W::Evictable, i, fmt::format("evictable[{}]", i), std::move(what)};
        };
        if (b >= n) return at(fmt::format("block {} out of range, the pool has {} blocks", b, n));
        if (cached[b] != 1)
            return at(cached[b] == 2 ? fmt::format("block {} is evictable twice", b)
                                     : fmt::format("block {} is evictable but not cached", b));
        if (s.refcounts[b] != 0)
            return at(fmt::format("block {} is evictable but has refcount {}", b, s.refcounts[b]));
        cached[b] = 2;
    }
    uint64_t used = 0;
    for (uint64_t b = 0; b < n; ++b) {
        if (s.refcounts[b] == 0 && first_seen[b] == UINT64_MAX && cached[b] != 2)
            return StateProblem{
                W::Refcounts, b, fmt::format("refcounts[{}]", b),
                cached[b] ? fmt::format("block {} is cached with refcount 0 but not evictable", b)
                          : fmt::format("block {} has refcount 0 but is not on the free list", b)};
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
    const uint64_t n = num_blocks();
    for (const BlockTable* t : tables_)
        if (!t->empty())
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("BlockAllocator::restore: a registered block table holds {} "
                                    "blocks",
                                    t->size()));
    if (const auto problem = check_state(s, n))
        throw Error(ErrorCode::InvalidArgument, "BlockAllocator::restore: " + problem->what);
    if (!s.cached.empty() && !caching_)
        throw Error(ErrorCode::InvalidArgument,
                    "BlockAllocator::restore: the state has cached blocks but caching is not "
                    "enabled");
    // The new arrays first (they may throw bad_alloc), then nothing that throws.
    auto refcounts = std::make_unique_for_overwrite<uint8_t[]>(n);
    std::unordered_map<uint32_t, uint32_t> big;
    uint64_t used = 0, shared = 0;
    for (uint64_t b = 0; b < n; ++b) {
        const uint32_t rc = s.refcounts[b];
        used += rc > 0;
        shared += rc > 1;
        refcounts[b] = uint8_t(std::min<uint32_t>(rc, kBig));
        if (rc >= kBig) big.emplace(uint32_t(b), rc);
    }
    auto free_list = std::make_unique_for_overwrite<BlockId[]>(n);
    std::copy(s.free_list.begin(), s.free_list.end(), free_list.get());
    refcount_.swap(refcounts);
    big_.swap(big);
    free_.swap(free_list);
    free_top_ = s.free_list.size();
    if (caching_) {
        std::fill(cached_.get(), cached_.get() + n, uint8_t{0});
        for (BlockId b : s.cached)
            cached_[index(b)] = 1;
        lru_prev_[lru_end_] = lru_next_[lru_end_] = lru_end_;
        for (BlockId b : s.evictable)
            lru_push_back(index(b));
    }
    counters_.used_blocks = used;
    counters_.free_blocks = s.free_list.size();
    counters_.cached_blocks = s.evictable.size();
    counters_.shared_blocks = shared;
    counters_.peak_used_blocks = s.peak_used_blocks;
    counters_.allocations = s.allocations;
    counters_.releases = s.releases;
}

std::string BlockAllocator::check() const {
    const uint64_t n = num_blocks();
    if (counters_.free_blocks != free_top_)
        return fmt::format("free counter {} != free list length {}", counters_.free_blocks,
                           free_top_);
    if (counters_.used_blocks + counters_.free_blocks + counters_.cached_blocks != n)
        return fmt::format("used {} + free {} + evictable {} != total {}", counters_.used_blocks,
                           counters_.free_blocks, counters_.cached_blocks, n);
    if (caching_) {
        // The evictable list, walked both ways: as long as the counter, and linked back.
        uint64_t walked = 0;
        for (uint32_t x = lru_next_[lru_end_]; x != lru_end_ && walked <= n; x = lru_next_[x]) {
            if (x >= n || lru_prev_[lru_next_[x]] != x)
                return fmt::format("the evictable list is broken at block {}", x);
            ++walked;
        }
        if (walked != counters_.cached_blocks)
            return fmt::format("evictable counter {} != evictable list length {}",
                               counters_.cached_blocks, walked);
    }
    // The large counts: each where its byte says so, and large.
    uint64_t marked = 0;
    for (uint64_t b = 0; b < n; ++b)
        marked += refcount_[b] == kBig;
    for (const auto& [b, count] : big_)
        if (b >= n || refcount_[b] != kBig || count < kBig)
            return fmt::format("block {} has a large reference count {} out of place", b, count);
    if (marked != big_.size())
        return fmt::format("{} blocks marked with a large reference count, {} recorded", marked,
                           big_.size());
    const AllocatorState s = state();
    if (const auto problem = check_state(s, n)) return problem->what;
    std::vector<uint64_t> refs(n, 0);
    for (const BlockTable* t : tables_)
        for (BlockId b : t->blocks()) {
            if (index(b) >= n) return fmt::format("a table references block {} >= {}", index(b), n);
            ++refs[index(b)];
        }
    if (const auto problem = check_references(s.refcounts, refs)) return problem->what;
    uint64_t used = 0, shared = 0;
    for (uint32_t rc : s.refcounts) {
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
