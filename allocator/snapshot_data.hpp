// SnapshotData: everything a snapshot file holds, decoded: the pool layout, the allocator's
// exact state, every cache's kind and tables, and optionally the bytes of the pages in use.
// Plain data with no GPU behind it: the codec, the checks and the dump tool work on it alone.
#pragma once

#include <cstdint>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_id.hpp"
#include "pagedkv/dtype.hpp"

namespace pagedkv {

// The pool's PoolConfig, restated here because allocator/ may not include Vulkan headers (the
// public PoolConfig header does).
struct SnapshotLayout {
    uint32_t num_layers = 0;
    uint32_t num_kv_heads = 0;
    uint32_t head_dim = 0;
    uint32_t v_head_dim = 0;
    uint32_t block_size = 0;
    DType dtype = DType::F16;
    uint64_t num_blocks = 0;
    uint64_t max_slab_bytes = 0;

    // Bytes of one block: every layer's K page and V page of block_size tokens.
    uint64_t block_bytes() const noexcept {
        return uint64_t(num_layers) * num_kv_heads * block_size *
               (uint64_t(head_dim) + v_head_dim) * dtype_size(dtype);
    }

    bool operator==(const SnapshotLayout&) const = default;
};

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
    bool has_pages = false;
    // With has_pages: the blocks in use (reference count above zero) in ascending id order,
    // block_bytes() each.
    std::vector<uint8_t> pages;

    uint64_t used_blocks() const;

    bool operator==(const SnapshotData&) const = default;
};

}  // namespace pagedkv
