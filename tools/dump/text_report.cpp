#include "text_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace pagedkv::dump {

namespace {

// Free-list entries printed before "... (N more)": enough to see the allocation order.
constexpr size_t kFreeListShown = 32;

std::string plural(uint64_t n, const char* one, const char* many) {
    return fmt::format("{} {}", n, n == 1 ? one : many);
}

std::string table(const SnapshotView& v, const std::vector<BlockId>& blocks) {
    std::string s = "[";
    for (size_t i = 0; i < blocks.size(); ++i) {
        const uint32_t b = index(blocks[i]);
        s += fmt::format("{}{}{}", i ? " " : "", b, v.refcount(b) > 1 ? "*" : "");
    }
    return s + "]";
}

std::string cache_title(const SnapshotView& v, uint32_t c) {
    const SnapshotCache& k = v.data.caches[c];
    std::string kind = to_string(k.kind);
    if (k.kind == SnapshotCacheKind::Static)
        kind += fmt::format(" (batch_size {}, max_cache_len {})", k.batch_size, k.max_cache_len);
    if (k.kind == SnapshotCacheKind::SlidingWindow) kind += fmt::format(" (window {})", k.window);
    std::set<uint32_t> pages;
    for (const auto* tables : {&k.rows, &k.spare})
        for (const auto& t : *tables)
            for (BlockId b : t)
                pages.insert(index(b));
    for (const auto& row : k.more)  // layer groups 1..
        for (const auto& t : row)
            for (BlockId b : t)
                pages.insert(index(b));
    std::string rows = plural(k.rows.size(), "row", "rows");
    if (!k.spare.empty()) rows += fmt::format(" + {} spare", k.spare.size());
    return fmt::format("cache {}  {}  {}, {}", c, kind, rows,
                       plural(pages.size(), "page", "pages"));
}

// With layer groups: a line per group of the row, its window and layers, the tokens they hold
// (and those a sliding layer let go), its table and where its first token sits.
std::string group_lines(const SnapshotView& v, const SnapshotCache& k, uint32_t r) {
    std::string s;
    for (uint32_t g = 0; g < v.groups.num_groups(); ++g) {
        const auto& layers = v.groups.layers[g];
        std::string names;
        int64_t held = 0, dropped = 0;
        for (uint32_t l : layers) {
            names += fmt::format("{}{}", names.empty() ? "" : " ", l);
            held = std::max(held, k.len[l][r]);
            if (l < k.dropped.size()) dropped = std::max(dropped, k.dropped[l][r]);
        }
        s += fmt::format("\n    {}  layers {}  held {}", v.group_name(g), names, held);
        if (dropped > 0) s += fmt::format(" ({} let go)", dropped);
        s += "  " + table(v, k.table(r, g));
        const RowSlots slots = row_slots(k, r, layers);
        if (slots.first != 0 && slots.first != slots.end)
            s += fmt::format("  (first token at slot {})", slots.first);
    }
    return s;
}

std::string row_line(const SnapshotView& v, const SnapshotCache& k, uint32_t r) {
    // With layer groups: the longest layer, then a line per group's table.
    if (v.grouped())
        return fmt::format("  row {}  len {}", r, k.row_length(r)) + group_lines(v, k, r);
    std::string s = fmt::format("  row {}  len {}  {}", r, k.row_length(r), table(v, k.rows[r]));
    bool same_len = true;
    std::set<int64_t> starts;  // of the layers holding tokens
    for (size_t l = 0; l < k.len.size(); ++l) {
        same_len = same_len && k.len[l][r] == k.len[0][r];
        if (k.len[l][r] > 0) starts.insert(k.start[l][r]);
    }
    if (!same_len) {
        s += "  (layer lengths";
        for (const auto& layer : k.len)
            s += fmt::format(" {}", layer[r]);
        s += ")";
    }
    // Leading tokens were dropped (crop, sliding window) without moving bytes.
    if (starts.size() == 1 && *starts.begin() != 0)
        s += fmt::format("  (first token at slot {})", *starts.begin());
    if (starts.size() > 1) {
        s += "  (first token per layer at slots";
        for (const auto& layer : k.start)
            s += fmt::format(" {}", layer[r]);
        s += ")";
    }
    return s;
}

// The prefix index's pages, parents first: block, hash, parent, salt, and whether a row holds
// it or it waits on the evictable list (LRU 0 is evicted first).
std::string prefix_section(const SnapshotView& v) {
    const SnapshotData& d = v.data;
    const DetailedStats& st = v.stats;
    std::string o = fmt::format("\nprefix cache  {}: {} held by rows, {} evictable",
                                plural(d.prefix.size(), "cached page", "cached pages"),
                                st.cached_held_blocks, st.cached_blocks);
    if (!d.allocator.evictable.empty()) {
        o += "  (evicted in the order";
        for (BlockId b : d.allocator.evictable)
            o += fmt::format(" {}", index(b));
        o += ")";
    }
    o += "\n  block   hash              parent  salt  state\n";
    for (const PrefixEntry& e : d.prefix) {
        const uint32_t b = index(e.block);
        const std::string parent =
            e.parent == PrefixEntry::kNoParent ? "-" : fmt::format("{}", e.parent);
        const std::string state =
            v.evictable(b) ? fmt::format("evictable, LRU {}{}", v.lru_position[b],
                                         v.lru_position[b] == 0 ? " (evicted next)" : "")
                           : fmt::format("held, {}", plural(v.refcount(b), "ref", "refs"));
        o += fmt::format("  {:<7} {:016x}  {:<7} {:<5} {}\n", b, e.hash, parent, e.salt, state);
    }
    return o;
}

}  // namespace

std::string layout_name(PageLayout l) {
    return l == PageLayout::TokenMajor ? "token-major pages" : "head-major pages";
}

std::string human_bytes(uint64_t b) {
    if (b < 1024) return fmt::format("{} B", b);
    if (b < (uint64_t(1) << 20)) return fmt::format("{:.1f} KiB", double(b) / 1024);
    if (b < (uint64_t(1) << 30)) return fmt::format("{:.2f} MiB", double(b) / (1 << 20));
    return fmt::format("{:.2f} GiB", double(b) / double(uint64_t(1) << 30));
}

std::string text_report(const SnapshotView& v) {
    const SnapshotData& d = v.data;
    const SnapshotLayout& l = d.layout;
    const DetailedStats& st = v.stats;
    std::string o;
    auto line = [&](const char* key, const std::string& value) {
        o += fmt::format("{:<11}{}\n", key, value);
    };
    line("snapshot",
         fmt::format("{}  (format {}, {}, {})", v.path, v.format_version, human_bytes(v.file_bytes),
                     d.has_pages ? "with page contents" : "no page contents"));
    line("layout",
         fmt::format("{}, {}, head_dim {}, v_head_dim {}, {}, {} tokens a page, {} a page, {}",
                     plural(l.num_layers, "layer", "layers"),
                     plural(l.num_kv_heads, "kv head", "kv heads"), l.head_dim, l.v_head_dim,
                     to_string(l.dtype), l.block_size, human_bytes(l.block_bytes()),
                     layout_name(l.layout)));
    if (v.grouped()) {
        std::string windows;
        for (uint32_t w : d.layer_windows)
            windows += fmt::format("{}{}", windows.empty() ? "" : " ", w);
        std::string groups;
        for (uint32_t g = 0; g < v.groups.num_groups(); ++g)
            groups += fmt::format("{}{}", g ? ", " : "", v.group_name(g));
        line("groups", fmt::format("{} model layers, windows {} (0: full attention); a page "
                                   "holds one group's {}: {}",
                                   d.model_layers(), windows,
                                   plural(l.num_layers, "layer", "layers"), groups));
    }
    if (l.scale_bytes() != 0)
        line("quantized",
             fmt::format("{} codes, one f32 scale per token per kv head after each page's codes "
                         "({} of a block's {} are scales)",
                         to_string(l.dtype),
                         human_bytes(2 * l.scale_bytes() * l.page_rows() * l.num_layers),
                         human_bytes(l.block_bytes())));
    line("pages",
         fmt::format("{} total, {} used, {} free, {} cached, {} shared, peak {}, {} copied "
                     "on write",
                     st.num_blocks, st.used_blocks, st.free_blocks, st.cached_blocks,
                     st.shared_blocks, st.peak_used_blocks, d.pages_copied));
    line("waste", fmt::format("{} of {} token slots in used pages hold no token ({:.1f}%)",
                              st.waste_slots, st.slots_held, 100.0 * st.waste_fraction()));
    line("free runs", fmt::format("largest {}, {} in all",
                                  plural(st.largest_free_run, "page", "pages"), st.free_runs));
    std::string hist;
    auto bucket = [&](const std::string& name, uint64_t count) {
        if (count != 0) hist += fmt::format("{}{}: {}", hist.empty() ? "" : ", ", name, count);
    };
    // No reference: free pages, and cached ones waiting on the evictable list.
    bucket("free", st.free_blocks);
    bucket("evictable", st.cached_blocks);
    for (size_t k = 1; k < st.refcount_histogram.size(); ++k)
        bucket(plural(k, "ref", "refs"), st.refcount_histogram[k]);
    line("refcounts", hist + "  (pages per reference count)");
    const auto& fl = d.allocator.free_list;
    std::string free_list;
    for (size_t i = 0; i < fl.size() && i < kFreeListShown; ++i)
        free_list += fmt::format("{}{}", i ? " " : "", index(fl[fl.size() - 1 - i]));
    if (fl.size() > kFreeListShown)
        free_list += fmt::format(" ... ({} more)", fl.size() - kFreeListShown);
    line("free list", fl.empty() ? "empty" : free_list + "  (next handed out first)");
    std::string caches = fmt::format("{}, {}", d.caches.size(), plural(st.rows, "row", "rows"));
    if (v.selection.cache || v.selection.row) {
        caches += "  (showing";
        if (v.selection.cache) caches += fmt::format(" cache {}", *v.selection.cache);
        if (v.selection.row) caches += fmt::format(" row {}", *v.selection.row);
        caches += ")";
    }
    line("caches", caches + "  (* marks a page shared with another row)");

    for (uint32_t c = 0; c < d.caches.size(); ++c) {
        if (!v.selected(c)) continue;
        const SnapshotCache& k = d.caches[c];
        if (v.selection.row && *v.selection.row >= k.rows.size()) continue;
        o += "\n" + cache_title(v, c) + "\n";
        for (uint32_t r = 0; r < k.rows.size(); ++r)
            if (v.selected(c, r)) o += row_line(v, k, r) + "\n";
        if (!v.selection.row)
            for (uint32_t r = 0; r < k.spare.size(); ++r)
                o += fmt::format("  spare {}  {}\n", r, table(v, k.spare[r]));
    }
    if (d.has_prefix_cache()) o += prefix_section(v);
    return o;
}

}  // namespace pagedkv::dump
