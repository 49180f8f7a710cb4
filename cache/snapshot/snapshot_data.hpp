// SnapshotData: everything a snapshot file holds, decoded: the pool layout, the allocator's
// exact state (cached and evictable blocks included), the prefix index's entries, every cache's
// kind and tables, and optionally the bytes of the pages holding K/V.
// Plain data with no GPU behind it: the codec, the checks and the dump tool work on it alone.
#pragma once

#include <cstdint>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_id.hpp"
#include "allocator/layer_groups.hpp"
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
    // [layer][row]: tokens held, and the page slot of the first one (token t at start + t) in
    // the table of the layer's group. Every layer of the model (SnapshotData::model_layers).
    std::vector<std::vector<int64_t>> len;
    std::vector<std::vector<int64_t>> start;
    // Layer groups (SnapshotData::layer_windows; both empty without): [row][g - 1] the block
    // table of group g = 1.. (rows holds group 0's), and [layer][row] the tokens a sliding
    // layer let go (tokens seen = len + dropped).
    std::vector<std::vector<std::vector<BlockId>>> more;
    std::vector<std::vector<int64_t>> dropped;

    // The block table of a row's layer group g (rows[row] for group 0).
    const std::vector<BlockId>& table(size_t row, uint32_t g) const {
        return g == 0 ? rows[row] : more[row][g - 1];
    }
    // The longest of a row's layers (tokens held).
    int64_t row_length(size_t row) const;
    // Tokens a row's layer has seen: held, and let go by a layer window.
    int64_t seen(size_t layer, size_t row) const {
        const int64_t d =
            layer < dropped.size() && row < dropped[layer].size() ? dropped[layer][row] : 0;
        return len[layer][row] + d;
    }

    bool operator==(const SnapshotCache&) const = default;
};

struct SnapshotData {
    SnapshotLayout layout;
    // PoolConfig::layer_windows (one per model layer; empty: none). With them layout.num_layers
    // is a page's layers (LayerGroups::per_page) and the model has layer_windows.size().
    std::vector<uint32_t> layer_windows;
    AllocatorState allocator;
    uint64_t pages_copied = 0;  // the pool's copy-on-write counter
    std::vector<SnapshotCache> caches;
    // Prefix caching: the index's entries, each page after its parent (PrefixIndex::entries()),
    // one per block of allocator.cached. Empty without prefix caching (and in version-1 files).
    std::vector<PrefixEntry> prefix;
    bool has_pages = false;
    // With has_pages: the bytes of page_blocks(), in that order, block_bytes() each.
    std::vector<uint8_t> pages;

    // The model's layers: those of the caches' len and start.
    uint32_t model_layers() const {
        return layer_windows.empty() ? layout.num_layers : uint32_t(layer_windows.size());
    }
    // The layer groups (one holding every layer without layer_windows).
    LayerGroups groups() const { return LayerGroups::make(model_layers(), layer_windows); }

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
