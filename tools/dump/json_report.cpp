#include "json_report.hpp"

#include <fmt/format.h>

#include <set>

namespace pagedkv::dump {

namespace {

// Writes JSON text with two-space indentation; arrays of numbers stay on one line.
class JsonWriter {
  public:
    void begin_object(const char* key = nullptr) { open(key, '{'); }
    void end_object() { close('}'); }
    void begin_array(const char* key = nullptr) { open(key, '['); }
    void end_array() { close(']'); }
    void field(const char* key, const std::string& raw_value) {
        item(key);
        out_ += raw_value;
    }
    void field(const char* key, uint64_t v) { field(key, fmt::format("{}", v)); }
    void field(const char* key, int64_t v) { field(key, fmt::format("{}", v)); }
    void field(const char* key, uint32_t v) { field(key, uint64_t(v)); }
    void field(const char* key, bool v) { field(key, std::string(v ? "true" : "false")); }
    void field(const char* key, double v) { field(key, fmt::format("{:.6g}", v)); }
    void text(const char* key, const std::string& s) { field(key, json_string(s)); }
    template <class Range, class F>
    void numbers(const char* key, const Range& r, F&& to_number) {
        std::string s = "[";
        bool first = true;
        for (const auto& x : r) {
            s += fmt::format("{}{}", first ? "" : ", ", to_number(x));
            first = false;
        }
        field(key, s + "]");
    }
    std::string take() { return std::move(out_) + "\n"; }

  private:
    void item(const char* key) {
        if (!first_.empty()) {
            out_ += first_.back() ? "\n" : ",\n";
            first_.back() = false;
        }
        out_.append(2 * first_.size(), ' ');
        if (key) out_ += json_string(key) + ": ";
    }
    void open(const char* key, char c) {
        item(key);
        out_ += c;
        first_.push_back(true);
    }
    void close(char c) {
        const bool empty = first_.back();
        first_.pop_back();
        if (!empty) {
            out_ += "\n";
            out_.append(2 * first_.size(), ' ');
        }
        out_ += c;
    }

    std::string out_;
    std::vector<bool> first_;
};

std::string block_ids(const std::vector<BlockId>& blocks) {
    std::string s = "[";
    for (size_t i = 0; i < blocks.size(); ++i)
        s += fmt::format("{}{}", i ? ", " : "", index(blocks[i]));
    return s + "]";
}

}  // namespace

std::string json_string(const std::string& s) {
    std::string o = "\"";
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c == '"' || c == '\\')
            o += std::string("\\") + ch;
        else if (c < 0x20)
            o += fmt::format("\\u{:04x}", c);
        else
            o += ch;
    }
    return o + "\"";
}

std::string json_report(const SnapshotView& v) {
    const SnapshotData& d = v.data;
    const SnapshotLayout& l = d.layout;
    const DetailedStats& st = v.stats;
    JsonWriter w;
    w.begin_object();
    w.field("schema_version", uint64_t(kJsonSchemaVersion));

    w.begin_object("file");
    w.text("path", v.path);
    w.field("bytes", v.file_bytes);
    w.field("format_version", uint64_t(1));
    w.field("page_contents", d.has_pages);
    w.end_object();

    w.begin_object("selection");
    w.field("cache", v.selection.cache ? fmt::format("{}", *v.selection.cache) : "null");
    w.field("row", v.selection.row ? fmt::format("{}", *v.selection.row) : "null");
    w.end_object();

    w.begin_object("layout");
    w.field("num_layers", l.num_layers);
    w.field("num_kv_heads", l.num_kv_heads);
    w.field("head_dim", l.head_dim);
    w.field("v_head_dim", l.v_head_dim);
    w.field("block_size", l.block_size);
    w.text("dtype", to_string(l.dtype));
    w.field("num_blocks", l.num_blocks);
    w.field("max_slab_bytes", l.max_slab_bytes);
    w.field("block_bytes", l.block_bytes());
    w.end_object();

    w.begin_object("pool");
    w.field("num_blocks", st.num_blocks);
    w.field("used_blocks", st.used_blocks);
    w.field("free_blocks", st.free_blocks);
    w.field("shared_blocks", st.shared_blocks);
    w.field("peak_used_blocks", st.peak_used_blocks);
    w.field("pages_copied", d.pages_copied);
    w.field("allocations", d.allocator.allocations);
    w.field("releases", d.allocator.releases);
    w.field("references", st.references);
    w.field("largest_free_run", st.largest_free_run);
    w.field("free_runs", st.free_runs);
    w.field("slots_held", st.slots_held);
    w.field("tokens_stored", st.tokens_stored);
    w.field("waste_slots", st.waste_slots);
    w.field("waste_fraction", st.waste_fraction());
    w.numbers("refcount_histogram", st.refcount_histogram, [](uint64_t n) { return n; });
    w.numbers("refcounts", d.allocator.refcounts, [](uint32_t n) { return n; });
    w.numbers("free_list", d.allocator.free_list, [](BlockId b) { return index(b); });
    w.end_object();

    w.begin_array("caches");
    for (uint32_t c = 0; c < d.caches.size(); ++c) {
        const SnapshotCache& k = d.caches[c];
        if (!v.selected(c) || (v.selection.row && *v.selection.row >= k.rows.size())) continue;
        w.begin_object();
        w.field("index", c);
        w.text("kind", to_string(k.kind));
        if (k.kind == SnapshotCacheKind::Static) {
            w.field("batch_size", k.batch_size);
            w.field("max_cache_len", k.max_cache_len);
        }
        if (k.kind == SnapshotCacheKind::SlidingWindow) w.field("window", k.window);
        std::set<uint32_t> pages;
        for (const auto* tables : {&k.rows, &k.spare})
            for (const auto& t : *tables)
                for (BlockId b : t)
                    pages.insert(index(b));
        w.field("pages", uint64_t(pages.size()));
        w.field("num_rows", uint64_t(k.rows.size()));
        w.begin_array("rows");
        for (uint32_t r = 0; r < k.rows.size(); ++r) {
            if (!v.selected(c, r)) continue;
            w.begin_object();
            w.field("row", r);
            w.field("length", k.row_length(r));
            w.numbers("lengths", k.len,
                      [r](const std::vector<int64_t>& layer) { return layer[r]; });
            w.numbers("starts", k.start,
                      [r](const std::vector<int64_t>& layer) { return layer[r]; });
            w.field("blocks", block_ids(k.rows[r]));
            w.numbers("shared", k.rows[r],
                      [&](BlockId b) { return v.refcount(index(b)) > 1 ? "true" : "false"; });
            w.end_object();
        }
        w.end_array();
        w.begin_array("spare_rows");
        for (uint32_t r = 0; r < k.spare.size() && !v.selection.row; ++r) {
            w.begin_object();
            w.field("row", r);
            w.field("blocks", block_ids(k.spare[r]));
            w.end_object();
        }
        w.end_array();
        w.end_object();
    }
    w.end_array();
    w.end_object();
    return w.take();
}

}  // namespace pagedkv::dump
