#include "snapshot_view.hpp"

#include <fmt/format.h>

#include "cache/snapshot/detailed_stats.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv::dump {

SnapshotView make_view(std::string path, std::span<const uint8_t> bytes, Selection selection) {
    SnapshotView v;
    v.path = std::move(path);
    v.file_bytes = bytes.size();
    v.data = decode_snapshot(bytes);
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
    v.owners.resize(v.data.layout.num_blocks);
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
