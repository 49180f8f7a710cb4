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

std::vector<uint32_t> SnapshotData::page_blocks() const {
    const auto& rc = allocator.refcounts;
    std::vector<uint8_t> evictable(rc.size(), 0);
    for (BlockId b : allocator.evictable)
        if (index(b) < rc.size()) evictable[index(b)] = 1;
    std::vector<uint32_t> out;
    for (size_t b = 0; b < rc.size(); ++b)
        if (rc[b] > 0 || evictable[b]) out.push_back(uint32_t(b));
    return out;
}

}  // namespace pagedkv
