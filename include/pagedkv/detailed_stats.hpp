// DetailedStats: figures about a pool computed by walking its reference counts and block tables,
// the second tier of statistics next to the counters of PoolStats (as in VMA), for dumps.
#pragma once

#include <cstdint>
#include <vector>

#include "pagedkv/block_counts.hpp"

namespace pagedkv {

// The counters (as BlockPool::stats() has them: free_blocks the free list, cached_blocks the
// evictable cached pages), then what only a walk finds.
struct DetailedStats : BlockCounts {
    // Table entries over every row of every cache: the sum of the reference counts.
    uint64_t references = 0;
    // Prefix caching: cached pages that some row holds (the evictable ones are cached_blocks),
    // and all the pages the prefix index names (cached_held_blocks + cached_blocks).
    uint64_t cached_held_blocks = 0;
    uint64_t prefix_entries = 0;
    // Longest run of consecutive free block ids (evictable cached blocks are not free), and how
    // many maximal runs the free blocks form (1 when they are contiguous). Paging does not need
    // contiguity; a runtime that hands whole ranges to another allocator does.
    uint64_t largest_free_run = 0;
    uint64_t free_runs = 0;
    // refcount_histogram[k]: blocks referenced by k table entries (index 0: free and evictable
    // blocks).
    std::vector<uint64_t> refcount_histogram;
    // Token slots of the pages in use (used_blocks x block_size), and how many of them hold a
    // token of some row in some layer; the rest is waste (a shared slot counts once).
    uint64_t slots_held = 0;
    uint64_t tokens_stored = 0;
    uint64_t waste_slots = 0;
    uint64_t caches = 0;
    uint64_t rows = 0;

    // waste_slots / slots_held, 0 for an empty pool.
    double waste_fraction() const noexcept {
        return slots_held ? double(waste_slots) / double(slots_held) : 0.0;
    }
};

}  // namespace pagedkv
