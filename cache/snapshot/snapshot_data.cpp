#include "cache/snapshot/snapshot_data.hpp"

#include <algorithm>

namespace pagedkv {

const char* to_string(SnapshotCacheKind k) noexcept {
    switch (k) {
        case SnapshotCacheKind::Dynamic:
            return "dynamic";
        case SnapshotCacheKind::Static:
            return "static";
        case SnapshotCacheKind::SlidingWindow:
            return "sliding";
    }
    return "unknown";
}

int64_t SnapshotCache::row_length(size_t row) const {
    int64_t n = 0;
    for (const auto& layer : len)
        if (row < layer.size()) n = std::max(n, layer[row]);
    return n;
}

uint64_t SnapshotData::used_blocks() const {
    return uint64_t(std::count_if(allocator.refcounts.begin(), allocator.refcounts.end(),
                                  [](uint32_t r) { return r > 0; }));
}

}  // namespace pagedkv
