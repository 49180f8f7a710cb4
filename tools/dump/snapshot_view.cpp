#include "snapshot_view.hpp"

#include <fmt/format.h>

#include "cache/snapshot/detailed_stats.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "cache/snapshot/snapshot_format.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv::dump {

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
            for (BlockId b : k.rows[r])
                v.owners[index(b)].push_back({c, r, false});
        for (uint32_t r = 0; r < k.spare.size(); ++r)
            for (BlockId b : k.spare[r])
                v.owners[index(b)].push_back({c, r, true});
    }
    return v;
}

}  // namespace pagedkv::dump
