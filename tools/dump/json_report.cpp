#include "json_report.hpp"

#include <fmt/format.h>

#include <set>

#include "json_text.hpp"

namespace pagedkv::dump {

namespace {

using tools::Json;

Json block_ids(const std::vector<BlockId>& blocks) {
    Json ids = Json::array();
    for (BlockId b : blocks)
        ids.push_back(index(b));
    return ids;
}

// The allocator keeps its LIFO free list bottom first; the report lists it top first, as the
// text report does: the first entry is handed out next.
Json free_list_top_first(const std::vector<BlockId>& free_list) {
    Json ids = Json::array();
    for (auto it = free_list.rbegin(); it != free_list.rend(); ++it)
        ids.push_back(index(*it));
    return ids;
}

// The selection option's value, or null when it was not given.
Json optional_index(const std::optional<uint32_t>& i) {
    return i ? Json(*i) : Json(nullptr);
}

Json row_json(const SnapshotView& v, const SnapshotCache& k, uint32_t r) {
    Json lengths = Json::array(), starts = Json::array(), shared = Json::array();
    for (const auto& layer : k.len)
        lengths.push_back(layer[r]);
    for (const auto& layer : k.start)
        starts.push_back(layer[r]);
    for (BlockId b : k.rows[r])
        shared.push_back(v.refcount(index(b)) > 1);
    // With layer groups, first_slot and end_slot are those of group 0's table (blocks).
    const RowSlots slots = v.grouped() ? row_slots(k, r, v.groups.layers[0]) : row_slots(k, r);
    Json dropped = Json::array(), groups = Json::array();
    for (size_t l = 0; l < k.len.size(); ++l)
        dropped.push_back(l < k.dropped.size() ? k.dropped[l][r] : 0);
    for (uint32_t g = 0; v.grouped() && g < v.groups.num_groups(); ++g) {
        const auto& table = k.table(r, g);
        Json flags = Json::array();
        for (BlockId b : table)
            flags.push_back(v.refcount(index(b)) > 1);
        const RowSlots gs = row_slots(k, r, v.groups.layers[g]);
        groups.push_back({{"group", g},
                          {"window", v.groups.window[g]},
                          {"layers", v.groups.layers[g]},
                          {"first_slot", gs.first},
                          {"end_slot", gs.end},
                          {"blocks", block_ids(table)},
                          {"shared", std::move(flags)}});
    }
    return {{"row", r},
            {"length", k.row_length(r)},
            {"lengths", std::move(lengths)},
            {"starts", std::move(starts)},
            {"first_slot", slots.first},
            {"end_slot", slots.end},
            {"blocks", block_ids(k.rows[r])},
            {"shared", std::move(shared)},
            {"dropped", std::move(dropped)},
            {"groups", std::move(groups)}};
}

Json cache_json(const SnapshotView& v, uint32_t c) {
    const SnapshotCache& k = v.data.caches[c];
    Json cache = {{"index", c}, {"kind", to_string(k.kind)}};
    if (k.kind == SnapshotCacheKind::Static) {
        cache["batch_size"] = k.batch_size;
        cache["max_cache_len"] = k.max_cache_len;
    }
    if (k.kind == SnapshotCacheKind::SlidingWindow) cache["window"] = k.window;
    std::set<uint32_t> pages;
    for (const auto* tables : {&k.rows, &k.spare})
        for (const auto& t : *tables)
            for (BlockId b : t)
                pages.insert(index(b));
    for (const auto& row : k.more)  // layer groups 1..
        for (const auto& t : row)
            for (BlockId b : t)
                pages.insert(index(b));
    cache["pages"] = pages.size();
    cache["num_rows"] = k.rows.size();
    Json rows = Json::array();
    for (uint32_t r = 0; r < k.rows.size(); ++r)
        if (v.selected(c, r)) rows.push_back(row_json(v, k, r));
    cache["rows"] = std::move(rows);
    Json spare = Json::array();
    for (uint32_t r = 0; r < k.spare.size() && !v.selection.row; ++r)
        spare.push_back({{"row", r}, {"blocks", block_ids(k.spare[r])}});
    cache["spare_rows"] = std::move(spare);
    return cache;
}

// The prefix index's pages, parents first. Hashes as 16 hex digits (a JSON number cannot hold
// 64 bits exactly everywhere), as the text report shows them.
Json prefix_json(const SnapshotView& v) {
    Json entries = Json::array();
    for (const PrefixEntry& e : v.data.prefix) {
        const uint32_t b = index(e.block);
        entries.push_back(
            {{"block", b},
             {"hash", fmt::format("{:016x}", e.hash)},
             {"parent", e.parent == PrefixEntry::kNoParent ? Json(nullptr) : Json(e.parent)},
             {"salt", e.salt},
             {"tokens", e.tokens},
             {"refcount", v.refcount(b)},
             {"evictable", v.evictable(b)},
             {"lru_position", v.evictable(b) ? Json(v.lru_position[b]) : Json(nullptr)}});
    }
    return {{"cached", block_ids(v.data.allocator.cached)},
            {"evictable", block_ids(v.data.allocator.evictable)},
            {"entries", std::move(entries)}};
}

}  // namespace

std::string json_report(const SnapshotView& v) {
    const SnapshotData& d = v.data;
    const SnapshotLayout& l = d.layout;
    const DetailedStats& st = v.stats;
    Json doc;
    doc["schema_version"] = kJsonSchemaVersion;
    doc["file"] = {{"path", v.path},
                   {"bytes", v.file_bytes},
                   {"format_version", v.format_version},
                   {"page_contents", d.has_pages}};
    doc["selection"] = {{"cache", optional_index(v.selection.cache)},
                        {"row", optional_index(v.selection.row)}};
    doc["layout"] = {{"num_layers", l.num_layers},      {"num_kv_heads", l.num_kv_heads},
                     {"head_dim", l.head_dim},          {"v_head_dim", l.v_head_dim},
                     {"block_size", l.block_size},      {"dtype", to_string(l.dtype)},
                     {"num_blocks", l.num_blocks},      {"max_slab_bytes", l.max_slab_bytes},
                     {"block_bytes", l.block_bytes()},  {"page_layout", to_string(l.layout)},
                     {"scale_bytes", l.scale_bytes()},  {"model_layers", d.model_layers()},
                     {"layer_windows", d.layer_windows}};
    doc["pool"] = {{"num_blocks", st.num_blocks},
                   {"used_blocks", st.used_blocks},
                   {"free_blocks", st.free_blocks},
                   {"cached_blocks", st.cached_blocks},
                   {"cached_held_blocks", st.cached_held_blocks},
                   {"shared_blocks", st.shared_blocks},
                   {"peak_used_blocks", st.peak_used_blocks},
                   {"pages_copied", d.pages_copied},
                   {"allocations", d.allocator.allocations},
                   {"releases", d.allocator.releases},
                   {"references", st.references},
                   {"largest_free_run", st.largest_free_run},
                   {"free_runs", st.free_runs},
                   {"slots_held", st.slots_held},
                   {"tokens_stored", st.tokens_stored},
                   {"waste_slots", st.waste_slots},
                   {"waste_fraction", tools::json_number(st.waste_fraction())},
                   {"refcount_histogram", st.refcount_histogram},
                   {"refcounts", d.allocator.refcounts},
                   {"free_list", free_list_top_first(d.allocator.free_list)}};
    Json caches = Json::array();
    for (uint32_t c = 0; c < d.caches.size(); ++c) {
        if (!v.selected(c) || (v.selection.row && *v.selection.row >= d.caches[c].rows.size()))
            continue;
        caches.push_back(cache_json(v, c));
    }
    doc["caches"] = std::move(caches);
    doc["prefix_cache"] = prefix_json(v);
    return tools::json_text(doc);
}

}  // namespace pagedkv::dump
