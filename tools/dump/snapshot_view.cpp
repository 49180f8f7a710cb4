#include "snapshot_view.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "cache/snapshot/detailed_stats.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "cache/snapshot/snapshot_format.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv::dump {

std::pair<int64_t, int64_t> RowSlots::in_page(uint32_t position, uint32_t block_size) const {
    const int64_t lo = int64_t(position) * block_size, hi = lo + block_size;
    const int64_t a = std::clamp(first, lo, hi), b = std::clamp(end, lo, hi);
    return a < b ? std::pair{a - lo, b - lo} : std::pair<int64_t, int64_t>{0, 0};
}

RowSlots row_slots(const SnapshotCache& k, size_t row) {
    std::vector<uint32_t> all(k.len.size());
    for (size_t l = 0; l < all.size(); ++l)
        all[l] = uint32_t(l);
    return row_slots(k, row, all);
}

RowSlots row_slots(const SnapshotCache& k, size_t row, std::span<const uint32_t> layers) {
    RowSlots s{INT64_MAX, 0};
    for (uint32_t l : layers) {
        if (l >= k.len.size() || row >= k.len[l].size() || k.len[l][row] <= 0) continue;
        s.first = std::min(s.first, k.start[l][row]);
        s.end = std::max(s.end, k.start[l][row] + k.len[l][row]);
    }
    if (s.first == INT64_MAX) {  // no token in any layer: where the next one goes
        const uint32_t l = layers.empty() ? 0 : layers[0];
        s.first = s.end = l >= k.start.size() || row >= k.start[l].size() ? 0 : k.start[l][row];
    }
    return s;
}

std::string SnapshotView::group_name(uint32_t g) const {
    return fmt::format("g{} w{}", g, groups.window[g]);
}

SnapshotView make_view(std::string path, std::span<const uint8_t> bytes, Selection selection) {
    SnapshotView v;
    v.path = std::move(path);
    v.file_bytes = bytes.size();
    v.data = decode_snapshot(bytes);
    // The decoder checked the header: the version is one this build reads.
    for (int i = 0; i < 4; ++i)
        v.format_version |= uint32_t(bytes[snapshot_format::kVersionAt + size_t(i)]) << (8 * i);
    v.groups = v.data.groups();
    v.stats = compute_detailed_stats(v.data);
    v.slots_used = slots_in_use(v.data);
    v.selection = selection;
    const auto& caches = v.data.caches;
    if (selection.cache && *selection.cache >= caches.size())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("--cache {}: the snapshot has {} cache{}", *selection.cache,
                                caches.size(), caches.size() == 1 ? "" : "s"));
    if (selection.row) {
        bool found = false;
        for (uint32_t c = 0; c < caches.size(); ++c)
            found = found || (v.selected(c) && *selection.row < caches[c].rows.size());
        if (!found)
            throw Error(ErrorCode::InvalidArgument,
                        selection.cache
                            ? fmt::format("--row {}: cache {} has {} rows", *selection.row,
                                          *selection.cache, caches[*selection.cache].rows.size())
                            : fmt::format("--row {}: no cache has that many rows", *selection.row));
    }
    const uint64_t n = v.data.layout.num_blocks;
    v.prefix_entry.assign(n, SnapshotView::kNone);
    v.lru_position.assign(n, SnapshotView::kNone);
    for (size_t i = 0; i < v.data.prefix.size(); ++i)
        v.prefix_entry[index(v.data.prefix[i].block)] = uint32_t(i);
    for (size_t i = 0; i < v.data.allocator.evictable.size(); ++i)
        v.lru_position[index(v.data.allocator.evictable[i])] = uint32_t(i);
    v.owners.resize(n);
    for (uint32_t c = 0; c < caches.size(); ++c) {
        const SnapshotCache& k = caches[c];
        // Every layer group's table of every row (group 0's alone without layer groups).
        for (uint32_t r = 0; r < k.rows.size(); ++r)
            for (uint32_t g = 0; g < (v.grouped() ? v.groups.num_groups() : 1); ++g) {
                const std::vector<BlockId>& t = k.table(r, g);
                for (uint32_t i = 0; i < t.size(); ++i)
                    v.owners[index(t[i])].push_back({c, r, false, i, g});
            }
        for (uint32_t r = 0; r < k.spare.size(); ++r)
            for (uint32_t i = 0; i < k.spare[r].size(); ++i)
                v.owners[index(k.spare[r][i])].push_back({c, r, true, i, 0});
    }
    return v;
}

}  // namespace pagedkv::dump
