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
    RowSlots s{INT64_MAX, 0};
    for (size_t l = 0; l < k.len.size(); ++l) {
        if (row >= k.len[l].size() || k.len[l][row] <= 0) continue;
        s.first = std::min(s.first, k.start[l][row]);
        s.end = std::max(s.end, k.start[l][row] + k.len[l][row]);
    }
    if (s.first == INT64_MAX) {  // no token in any layer: where the next one goes
        s.first = s.end = k.start.empty() || row >= k.start[0].size() ? 0 : k.start[0][row];
    }
    return s;
}

SnapshotView make_view(std::string path, std::span<const uint8_t> bytes, Selection selection) {
    SnapshotView v;
    v.path = std::move(path);
    v.file_bytes = bytes.size();
    v.data = decode_snapshot(bytes);
    // The decoder checked the header: the version is one this build reads.
    for (int i = 0; i < 4; ++i)
        v.format_version |= uint32_t(bytes[snapshot_format::kVersionAt + size_t(i)]) << (8 * i);
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
        for (uint32_t r = 0; r < k.rows.size(); ++r)
            for (uint32_t i = 0; i < k.rows[r].size(); ++i)
                v.owners[index(k.rows[r][i])].push_back({c, r, false, i});
        for (uint32_t r = 0; r < k.spare.size(); ++r)
            for (uint32_t i = 0; i < k.spare[r].size(); ++i)
                v.owners[index(k.spare[r][i])].push_back({c, r, true, i});
    }
    return v;
}

}  // namespace pagedkv::dump
