// BlockCounts: where a pool's blocks stand. The one set of fields that every tier of statistics
// shares: the allocator's running counters, BlockPool::stats() and the computed DetailedStats.
#pragma once

#include <cstdint>

namespace pagedkv {

struct BlockCounts {
    uint64_t num_blocks = 0;
    uint64_t used_blocks = 0;
    uint64_t free_blocks = 0;    // never-cached free blocks: the free list
    uint64_t cached_blocks = 0;  // free but cached (prefix caching): evictable, least recent first
    uint64_t peak_used_blocks = 0;
    uint64_t shared_blocks = 0;  // blocks with a reference count above one

    bool operator==(const BlockCounts&) const = default;
};

}  // namespace pagedkv
