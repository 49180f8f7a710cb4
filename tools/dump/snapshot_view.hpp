// SnapshotView: a decoded snapshot as pagedkv-dump shows it: the data, the computed statistics,
// who references each page, how full each page is, which pages are cached (and when each
// evictable one would be evicted), and the --cache / --row selection.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "cache/snapshot/snapshot_data.hpp"
#include "pagedkv/detailed_stats.hpp"

namespace pagedkv::dump {

// One table entry pointing at a page: entry `position` of row `row` of cache `cache` (a spare
// row of a static cache when `spare`), in the table of layer group `group` (0 without
// layer_windows).
struct PageOwner {
    uint32_t cache = 0;
    uint32_t row = 0;
    bool spare = false;
    // The entry's index in the table: the page holds the row's slots position * block_size on.
    uint32_t position = 0;
    uint32_t group = 0;

    // The same table's entry at another position.
    PageOwner at(uint32_t p) const {
        PageOwner w = *this;
        w.position = p;
        return w;
    }
};

// The page slots a row's tokens occupy, over its layers: token t of the row sits at slot
// first + t of its block table (slot s in page s / block_size). A crop or a sliding window
// moves `first` instead of moving bytes, so the slots before it hold nothing. first == end: no
// token (a static row not written yet).
struct RowSlots {
    int64_t first = 0;
    int64_t end = 0;
    // The slots of the page at `position` that hold tokens, [lo, hi) within the page.
    std::pair<int64_t, int64_t> in_page(uint32_t position, uint32_t block_size) const;
};
RowSlots row_slots(const SnapshotCache& k, size_t row);
// The same over the layers of one layer group (those of its table).
RowSlots row_slots(const SnapshotCache& k, size_t row, std::span<const uint32_t> layers);

struct Selection {
    std::optional<uint32_t> cache;
    std::optional<uint32_t> row;
};

struct SnapshotView {
    static constexpr uint32_t kNone = UINT32_MAX;

    std::string path;
    uint64_t file_bytes = 0;
    uint32_t format_version = 0;  // of the file (README.md#format)
    SnapshotData data;
    LayerGroups groups;  // of data.layer_windows (one group holding every layer without)
    DetailedStats stats;
    std::vector<std::vector<PageOwner>> owners;  // [block]: every reference to it
    std::vector<uint32_t> slots_used;            // [block]: slots holding a token
    // Prefix caching, per block: its entry in data.prefix, and its place on the evictable list
    // (0: evicted first); kNone when it has none.
    std::vector<uint32_t> prefix_entry;
    std::vector<uint32_t> lru_position;
    Selection selection;

    bool cached(uint32_t block) const { return prefix_entry[block] != kNone; }
    bool evictable(uint32_t block) const { return lru_position[block] != kNone; }
    bool selected(uint32_t cache) const { return !selection.cache || *selection.cache == cache; }
    bool selected(uint32_t cache, uint32_t row) const {
        return selected(cache) && (!selection.row || *selection.row == row);
    }
    uint32_t refcount(uint32_t block) const { return data.allocator.refcounts[block]; }
    // Whether the pool has layer groups (layer_windows): a table per group per row.
    bool grouped() const { return !data.layer_windows.empty(); }
    // "g1 w1024": a layer group and its window (0: full attention).
    std::string group_name(uint32_t g) const;
};

// Decodes `bytes` (Error(CorruptSnapshot) when damaged) and checks the selection against it
// (Error(InvalidArgument) naming the option when it selects nothing).
SnapshotView make_view(std::string path, std::span<const uint8_t> bytes, Selection selection);

}  // namespace pagedkv::dump
