// SnapshotData: everything a snapshot file holds, decoded: the pool layout, the allocator's
// exact state (cached and evictable blocks included), the prefix index's entries, every cache's
// kind and tables, and optionally the bytes of the pages holding K/V.
// Plain data with no GPU behind it: the codec, the checks and the dump tool work on it alone.
#pragma once

#include <cstdint>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_id.hpp"
#include "allocator/page_format.hpp"
#include "allocator/prefix_index.hpp"
#include "pagedkv/dtype.hpp"

namespace pagedkv {

// The pool's shape (allocator/page_format.hpp): its page format, blocks and slab limit.
using SnapshotLayout = PoolShape;

enum class SnapshotCacheKind : uint32_t { Dynamic = 0, Static = 1, SlidingWindow = 2 };

const char* to_string(SnapshotCacheKind k) noexcept;

struct SnapshotCache {
    SnapshotCacheKind kind = SnapshotCacheKind::Dynamic;
    uint32_t batch_size = 0;                 // static caches: rows reserved at construction, else 0
    uint32_t max_cache_len = 0;              // static caches, else 0
    uint32_t window = 0;                     // sliding-window caches, else 0
    std::vector<std::vector<BlockId>> rows;  // one block table per batch row
    std::vector<std::vector<BlockId>> spare;  // a static cache's reserved tables not in use
    // [layer][row]: tokens held, and the page slot of the first one (token t at start + t).
    std::vector<std::vector<int64_t>> len;
    std::vector<std::vector<int64_t>> start;

    // The longest of a row's layers.
    int64_t row_length(size_t row) const;

    bool operator==(const SnapshotCache&) const = default;
};

struct SnapshotData {
    SnapshotLayout layout;
    AllocatorState allocator;
    uint64_t pages_copied = 0;  // the pool's copy-on-write counter
    std::vector<SnapshotCache> caches;
    // Prefix caching: the index's entries, each page after its parent (PrefixIndex::entries()),
    // one per block of allocator.cached. Empty without prefix caching (and in version-1 files).
    std::vector<PrefixEntry> prefix;
    bool has_pages = false;
    // With has_pages: the bytes of page_blocks(), in that order, block_bytes() each.
    std::vector<uint8_t> pages;

    uint64_t used_blocks() const;
    // The blocks whose bytes a snapshot with pages holds, ascending: those in use (reference
    // count above zero) and the evictable cached ones (no reference, but K/V that a later
    // prefix-cache hit reads). Free blocks hold nothing anyone reads.
    std::vector<uint32_t> page_blocks() const;
    // Whether there is anything of prefix caching to record (the PRFX section).
    bool has_prefix_cache() const {
        return !allocator.cached.empty() || !allocator.evictable.empty() || !prefix.empty();
    }

    bool operator==(const SnapshotData&) const = default;
};

}  // namespace pagedkv
