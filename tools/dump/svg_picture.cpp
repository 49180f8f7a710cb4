#include "svg_picture.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <span>
#include <utility>

#include "svg_writer.hpp"
#include "text_report.hpp"

namespace pagedkv::dump {

namespace {

constexpr int kMargin = 20;   // around everything
constexpr int kTitle = 62;    // the two title lines
constexpr int kHeading = 26;  // a view's heading line
constexpr int kSection = 24;  // between the two views
constexpr int kLegendRow = 22;
constexpr int kLegendW = 420;
constexpr int kNoteLine = 15;
constexpr size_t kLegendRows = 24;       // row entries the blocks view's legend names
constexpr size_t kDistinctColours = 10;  // the Tableau 10 colours; later hues may look alike
constexpr int kShareNote = 330;          // lanes view, full detail: room for "shares ... with"
constexpr const char* kFont = "DejaVu Sans, Helvetica, Arial, sans-serif";
// Prefix caching: an evictable page (no row holds it, a later prompt may) is filled with its own
// colour; a cached page that rows hold gets a corner mark of the darker one.
constexpr const char* kEvictableFill = "#e3d7f4";
constexpr const char* kCachedInk = "#5b2a86";
constexpr int kCorner = 11;            // the corner mark's legs, px
constexpr uint32_t kGrey = 0xc8c8c8;   // rows outside the --cache / --row selection
constexpr uint32_t kSpare = 0x9a9a9a;  // a static cache's spare tables

struct Rgb {
    double r, g, b;  // 0..1
    std::string hex() const {
        auto c = [](double x) { return int(std::lround(std::clamp(x, 0.0, 1.0) * 255)); };
        return fmt::format("#{:02x}{:02x}{:02x}", c(r), c(g), c(b));
    }
    // Black text on light colours, white on dark (relative luminance, sRGB weights).
    const char* text() const {
        return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 ? "#111" : "#fff";
    }
    Rgb tint(double keep) const {
        return {1 - (1 - r) * keep, 1 - (1 - g) * keep, 1 - (1 - b) * keep};
    }
};

Rgb from_hex(uint32_t x) {
    return {double((x >> 16) & 0xFF) / 255, double((x >> 8) & 0xFF) / 255, double(x & 0xFF) / 255};
}

// Tableau 10 first (distinct and readable), then hues spaced by the golden angle.
Rgb colour(size_t i) {
    static const uint32_t tableau[] = {0x4e79a7, 0xf28e2b, 0xe15759, 0x76b7b2, 0x59a14f,
                                       0xedc948, 0xb07aa1, 0xff9da7, 0x9c755f, 0x79706e};
    static_assert(std::size(tableau) == kDistinctColours);
    if (i < std::size(tableau)) return from_hex(tableau[i]);
    const double h = std::fmod(double(i) * 137.508, 360.0) / 60.0, s = 0.55, l = 0.58;
    const double c = (1 - std::fabs(2 * l - 1)) * s, x = c * (1 - std::fabs(std::fmod(h, 2) - 1));
    const double m = l - c / 2;
    const int sector = int(h);
    const double rgb[6][3] = {{c, x, 0}, {x, c, 0}, {0, c, x}, {0, x, c}, {x, 0, c}, {c, 0, x}};
    return {rgb[sector][0] + m, rgb[sector][1] + m, rgb[sector][2] + m};
}

std::string plural(uint64_t n, const char* one, const char* many) {
    return fmt::format("{} {}", n, n == 1 ? one : many);
}

// The sizes of one level of detail.
struct Geometry {
    bool compact = false;
    int cell = 36;       // a page's square, px
    int gap = 4;         // between squares
    int grid_cols = 16;  // blocks view: pages a line
    int lane_cols = 32;  // lanes view: pages a line before a lane wraps
    int label_w = 250;   // lanes view: the column of lane labels
    int lane_gap = 14;   // between lanes (links run through it)
    int step() const { return cell + gap; }
};

Geometry geometry(uint64_t pages, bool compact) {
    if (compact) return {true, 9, 1, pages <= 4096 ? 64 : 128, 96, 64, 4};
    return {false, 36, 4, pages <= 512 ? 16 : 32, 32, 250, 14};
}

// A lane of the lanes view: one block table in logical order. One per batch row or sequence
// and layer group (one group without layer_windows; each group's table with its own slots) and
// per spare table of a static cache, then the free list and the evictable pages.
struct Lane {
    enum class Kind { Row, Spare, Free, Evictable };
    Kind kind = Kind::Row;
    PageOwner owner;  // Row and Spare: whose table (and which layer group's)
    RowSlots slots;   // Row: where its tokens sit
    std::vector<uint32_t> blocks;
    std::string label, detail;
    int y = 0, lines = 1;  // placed by the layout
};

class Picture {
  public:
    Picture(const SnapshotView& v, const SvgOptions& options)
        : v_(v), d_(v.data), bs_(v.data.layout.block_size) {
        const uint64_t n = d_.layout.num_blocks;
        const bool compact = options.compact.value_or(n > kCompactAbove);
        g_ = geometry(n, compact);
        blocks_view_ = options.view != SvgView::Lanes;
        lanes_view_ = options.view != SvgView::Blocks;
        for (uint32_t c = 0; c < d_.caches.size(); ++c) {
            slots_.emplace_back();
            for (uint32_t r = 0; r < d_.caches[c].rows.size(); ++r) {
                colours_[{c, r}] = colour(colours_.size());
                auto& groups = slots_.back().emplace_back();
                for (const auto& layers : v.groups.layers)
                    groups.push_back(row_slots(d_.caches[c], r, layers));
                if (v.selected(c, r)) selected_rows_.emplace_back(c, r);
            }
        }
        const auto& fl = d_.allocator.free_list;  // bottom first: the last is handed out next
        free_rank_.assign(n, SnapshotView::kNone);
        for (size_t i = 0; i < fl.size(); ++i)
            free_rank_[index(fl[i])] = uint32_t(fl.size() - 1 - i);
        if (lanes_view_) make_lanes();
    }

    std::string draw();

  private:
    Rgb owner_colour(const PageOwner& w) const {
        if (!v_.selected(w.cache, w.spare ? UINT32_MAX : w.row)) return from_hex(kGrey);
        return w.spare ? from_hex(kSpare) : colours_.at({w.cache, w.row});
    }
    // A page keeps its first owner's colour wherever it is drawn.
    Rgb page_colour(uint32_t b) const { return owner_colour(v_.owners[b].front()); }
    bool reserved(uint32_t b) const { return !v_.owners[b].empty() && v_.slots_used[b] == 0; }
    bool shared(uint32_t b) const { return v_.owners[b].size() > 1; }
    // The slots of block b that owner w's tokens occupy, [lo, hi) within the page.
    std::pair<int64_t, int64_t> owner_span(const PageOwner& w) const {
        if (w.spare) return {0, 0};
        return slots_[w.cache][w.row][w.group].in_page(w.position, bs_);
    }
    // Every owner's slots in block b, merged.
    std::vector<std::pair<int64_t, int64_t>> page_spans(uint32_t b) const;
    std::string owner_line(const PageOwner& w) const;
    std::string page_title(uint32_t b) const;
    // With layer groups, a row's table names its group and window ("cache 0 row 1 g1 w1024").
    std::string group_suffix(const PageOwner& w) const {
        return v_.grouped() && !w.spare ? " " + v_.group_name(w.group) : "";
    }
    std::string owner_name(const PageOwner& w) const {
        return fmt::format("cache {} {} {}{}", w.cache, w.spare ? "spare" : "row", w.row,
                           group_suffix(w));
    }
    std::string lane_name(const PageOwner& w) const {
        return g_.compact
                   ? fmt::format("c{} {}{}{}", w.cache, w.spare ? "s" : "r", w.row, group_suffix(w))
                   : owner_name(w);
    }
    static bool same_table(const PageOwner& a, const PageOwner& b) {
        return a.cache == b.cache && a.row == b.row && a.spare == b.spare && a.group == b.group;
    }

    void make_lanes();
    void define_patterns();
    void draw_title(int width);
    int draw_grid(int top);
    int draw_lanes(int top);
    void draw_legend(int x, int top);
    int legend_height() const;
    // One page as a square at (x, y), full detail: the bands of its owners' colours (one in a
    // lane), the slots holding tokens solid at their place, marks, id.
    void full_page(int x, int y, uint32_t b, const std::vector<Rgb>& bands,
                   const std::vector<std::pair<int64_t, int64_t>>& spans, const std::string& id);
    // A lane's entries as runs [i, e): one entry each in full detail; compact, neighbouring
    // entries that look alike, drawn as one rectangle with one tooltip.
    std::vector<std::pair<size_t, size_t>> lane_runs(const Lane& lane) const;
    void compact_run(int x, int y, const Lane& lane, size_t i0, size_t i1);
    // A free or evictable page, full detail.
    void unowned_page(int x, int y, uint32_t b);

    const SnapshotView& v_;
    const SnapshotData& d_;
    const uint32_t bs_;
    Geometry g_;
    bool blocks_view_ = true, lanes_view_ = true;
    std::map<std::pair<uint32_t, uint32_t>, Rgb> colours_;
    std::vector<std::vector<std::vector<RowSlots>>> slots_;  // [cache][row][layer group]
    std::vector<std::pair<uint32_t, uint32_t>> selected_rows_;
    std::vector<uint32_t> free_rank_;  // [block]: 0 handed out next; kNone when not free
    std::vector<Lane> lanes_;
    tools::SvgWriter* o_ = nullptr;
    size_t clip_ids_ = 0;
};

std::vector<std::pair<int64_t, int64_t>> Picture::page_spans(uint32_t b) const {
    std::vector<std::pair<int64_t, int64_t>> iv;
    for (const PageOwner& w : v_.owners[b])
        if (auto s = owner_span(w); s.first < s.second) iv.push_back(s);
    std::sort(iv.begin(), iv.end());
    std::vector<std::pair<int64_t, int64_t>> merged;
    for (const auto& s : iv) {
        if (!merged.empty() && s.first <= merged.back().second)
            merged.back().second = std::max(merged.back().second, s.second);
        else
            merged.push_back(s);
    }
    return merged;
}

std::string Picture::owner_line(const PageOwner& w) const {
    const std::string who = fmt::format("{}, entry {}", owner_name(w), w.position);
    if (w.spare) return who + ": reserved, no batch row uses it";
    const RowSlots& s = slots_[w.cache][w.row][w.group];
    const auto [lo, hi] = s.in_page(w.position, bs_);
    const int64_t base = int64_t(w.position) * bs_;
    if (lo == hi)
        return who + (s.first != s.end && base + bs_ <= s.first
                          ? ": no token, before the row's first slot (cropped or slid out)"
                          : ": no token yet (reserved)");
    return who + fmt::format(": tokens {}..{} at slots {}..{}", base + lo - s.first,
                             base + hi - 1 - s.first, lo, hi - 1);
}

std::string Picture::page_title(uint32_t b) const {
    const auto& owners = v_.owners[b];
    if (owners.empty() && v_.evictable(b))
        return fmt::format("page {}: cached, no row holds it: evictable, lru {}{}", b,
                           v_.lru_position[b], v_.lru_position[b] == 0 ? " (evicted first)" : "");
    if (owners.empty())
        return free_rank_[b] == 0 ? fmt::format("page {}: free, handed out next", b)
                                  : fmt::format("page {}: free, handed out after {} other{}", b,
                                                free_rank_[b], free_rank_[b] == 1 ? "" : "s");
    std::string t = fmt::format("page {}: {}, {} of {} slots hold tokens{}", b,
                                plural(v_.refcount(b), "ref", "refs"), v_.slots_used[b], bs_,
                                v_.cached(b) ? ", cached (prefix index)" : "");
    for (const PageOwner& w : owners)
        t += "\n" + owner_line(w);
    return t;
}

void Picture::make_lanes() {
    for (uint32_t c = 0; c < d_.caches.size(); ++c) {
        const SnapshotCache& k = d_.caches[c];
        const uint32_t groups = v_.grouped() ? v_.groups.num_groups() : 1;
        for (uint32_t r = 0; r < k.rows.size(); ++r)
            for (uint32_t g = 0; g < groups; ++g) {
                if (!v_.selected(c, r)) continue;
                Lane lane;
                lane.owner = {c, r, false, 0, g};
                lane.slots = slots_[c][r][g];
                for (BlockId b : k.table(r, g))
                    lane.blocks.push_back(index(b));
                lane.label = lane_name(lane.owner);
                // The tokens its layers hold (a group's: those of its table).
                int64_t held = 0;
                for (uint32_t l : v_.groups.layers[g])
                    if (l < k.len.size() && r < k.len[l].size()) held = std::max(held, k.len[l][r]);
                lane.detail = fmt::format("{}, {}", to_string(k.kind),
                                          plural(uint64_t(held), "token", "tokens"));
                if (lane.slots.first != 0 && lane.slots.first != lane.slots.end)
                    lane.detail += fmt::format(" from slot {}", lane.slots.first);
                int64_t gone = 0;  // tokens its sliding layers let go
                for (uint32_t l : v_.groups.layers[g])
                    if (l < k.dropped.size() && r < k.dropped[l].size())
                        gone = std::max(gone, k.dropped[l][r]);
                if (gone > 0) lane.detail += fmt::format(", {} let go", gone);
                lanes_.push_back(std::move(lane));
            }
        for (uint32_t r = 0; r < k.spare.size() && !v_.selection.row; ++r) {
            if (!v_.selected(c)) continue;
            Lane lane;
            lane.kind = Lane::Kind::Spare;
            lane.owner = {c, r, true, 0, 0};
            for (BlockId b : k.spare[r])
                lane.blocks.push_back(index(b));
            lane.label = lane_name(lane.owner);
            lane.detail = "static, reserved: no batch row uses it";
            lanes_.push_back(std::move(lane));
        }
    }
    const auto& fl = d_.allocator.free_list;
    if (!fl.empty()) {
        Lane lane;
        lane.kind = Lane::Kind::Free;
        for (size_t i = fl.size(); i-- > 0;)
            lane.blocks.push_back(index(fl[i]));
        lane.label = g_.compact ? "free" : "free list";
        lane.detail = fmt::format("{}, next handed out first", plural(fl.size(), "page", "pages"));
        lanes_.push_back(std::move(lane));
    }
    if (!d_.allocator.evictable.empty()) {
        Lane lane;
        lane.kind = Lane::Kind::Evictable;
        for (BlockId b : d_.allocator.evictable)
            lane.blocks.push_back(index(b));
        lane.label = g_.compact ? "evict" : "evictable";
        lane.detail = fmt::format("{}, lru 0 evicted first",
                                  plural(lane.blocks.size(), "cached page", "cached pages"));
        lanes_.push_back(std::move(lane));
    }
}

void Picture::define_patterns() {
    tools::SvgWriter& o = *o_;
    o.open("defs");
    // Shared pages: dark diagonal lines. Reserved pages holding no token: light grey ones the
    // other way, over the row's palest colour.
    for (const auto& [id, angle, ink, opacity] :
         {std::tuple{"hatch", 45, "#000", "0.35"}, std::tuple{"reserved", -45, "#555", "0.5"}}) {
        o.open("pattern", {{"id", id},
                           {"width", 6},
                           {"height", 6},
                           {"patternUnits", "userSpaceOnUse"},
                           {"patternTransform", fmt::format("rotate({})", angle)}});
        o.element("line", {{"x1", 0},
                           {"y1", 0},
                           {"x2", 0},
                           {"y2", 6},
                           {"stroke", ink},
                           {"stroke-width", 2},
                           {"stroke-opacity", opacity}});
        o.close();
    }
    o.close();
}

void Picture::full_page(int x, int y, uint32_t b, const std::vector<Rgb>& bands,
                        const std::vector<std::pair<int64_t, int64_t>>& spans,
                        const std::string& id) {
    tools::SvgWriter& o = *o_;
    const int cell = g_.cell;
    const bool is_reserved = reserved(b), is_shared = shared(b);
    o.open("g");
    o.text("title", {}, page_title(b));
    const std::string clip = id.empty() ? fmt::format("p{}", b) : id;
    o.open("clipPath", {{"id", clip}});
    o.element("rect", {{"x", x}, {"y", y}, {"width", cell}, {"height", cell}, {"rx", 3}});
    o.close();
    o.open("g", {{"clip-path", fmt::format("url(#{})", clip)}});
    uint32_t filled = 0;
    for (const auto& [lo, hi] : spans)
        filled += uint32_t(hi - lo);
    for (size_t i = 0; i < bands.size(); ++i) {
        const double bh = double(cell) / double(bands.size());
        const std::string by = fmt::format("{:.1f}", y + bh * double(i));
        o.element("rect", {{"x", x},
                           {"y", by},
                           {"width", cell},
                           {"height", fmt::format("{:.1f}", bh)},
                           {"fill", bands[i].tint(is_reserved ? 0.12 : 0.35).hex()}});
        // The slots holding tokens, where they are: a cropped row's first page is pale on
        // the left.
        for (const auto& [lo, hi] : spans)
            o.element("rect",
                      {{"x", fmt::format("{:.1f}", x + double(cell) * double(lo) / bs_)},
                       {"y", by},
                       {"width", fmt::format("{:.1f}", double(cell) * double(hi - lo) / bs_)},
                       {"height", fmt::format("{:.1f}", bh)},
                       {"fill", bands[i].hex()}});
    }
    if (v_.cached(b))  // held by rows and named by the prefix index
        o.element("polygon", {{"points", fmt::format("{},{} {},{} {},{}", x + cell - kCorner, y,
                                                     x + cell, y, x + cell, y + kCorner)},
                              {"fill", kCachedInk}});
    o.close();
    if (is_shared || is_reserved) {
        tools::Attrs outline{
            {"x", x + 1.5},      {"y", y + 1.5},
            {"width", cell - 3}, {"height", cell - 3},
            {"rx", 3},           {"fill", is_reserved ? "url(#reserved)" : "url(#hatch)"}};
        if (is_shared) {
            outline.insert(outline.end(), {{"stroke", "#111"}, {"stroke-width", 3}});
        } else {
            outline.insert(outline.end(), {{"stroke", bands.front().hex()},
                                           {"stroke-width", 2},
                                           {"stroke-dasharray", "4 2"}});
        }
        o.element("rect", outline);
    }
    const Rgb c = bands.front();
    const char* ink = 4 * filled >= 3 * bs_ ? c.text() : "#111";
    const bool owner_label = colours_.size() > kDistinctColours && !is_shared;
    o.text("text",
           {{"x", x + cell / 2},
            {"y", y + (is_shared || owner_label ? 16 : cell / 2 + 4)},
            {"font-size", 11},
            {"text-anchor", "middle"},
            {"fill", ink}},
           fmt::format("{}", b));
    if (is_shared)
        o.text("text",
               {{"x", x + cell / 2},
                {"y", y + 29},
                {"font-size", 10},
                {"font-weight", "bold"},
                {"text-anchor", "middle"},
                {"fill", ink}},
               fmt::format("×{}", v_.owners[b].size()));
    else if (owner_label)  // hues repeat: name the row
        o.text(
            "text",
            {{"x", x + cell / 2},
             {"y", y + 29},
             {"font-size", 8},
             {"text-anchor", "middle"},
             {"fill", ink}},
            fmt::format("{}{}", v_.owners[b].front().spare ? "s" : "r", v_.owners[b].front().row));
    o.close();
}

std::vector<std::pair<size_t, size_t>> Picture::lane_runs(const Lane& lane) const {
    std::vector<std::pair<size_t, size_t>> runs;
    const bool row = lane.kind == Lane::Kind::Row || lane.kind == Lane::Kind::Spare;
    // Full detail: a run per page. Compact: neighbouring pages that look alike, within a line.
    auto key = [&](size_t i) {
        const uint32_t b = lane.blocks[i];
        if (!row) return fmt::format("{}", v_.evictable(b));
        const auto span = owner_span(lane.owner.at(uint32_t(i)));
        return fmt::format("{} {} {} {}", page_colour(b).hex(), v_.owners[b].size(), reserved(b),
                           span.first < span.second);
    };
    for (size_t i = 0; i < lane.blocks.size();) {
        size_t e = i + 1;
        if (g_.compact) {
            const std::string k = key(i);
            while (e < lane.blocks.size() && e % size_t(g_.lane_cols) != 0 && key(e) == k)
                ++e;
        }
        runs.emplace_back(i, e);
        i = e;
    }
    return runs;
}

// "12..15" for ascending consecutive ids, else the first few and how many more.
std::string id_list(std::span<const uint32_t> ids) {
    bool consecutive = true;
    for (size_t i = 1; i < ids.size(); ++i)
        consecutive = consecutive && ids[i] == ids[i - 1] + 1;
    if (consecutive && ids.size() > 2) return fmt::format("{}..{}", ids.front(), ids.back());
    std::string s;
    for (size_t i = 0; i < ids.size() && i < 6; ++i)
        s += fmt::format("{}{}", i ? " " : "", ids[i]);
    if (ids.size() > 6) s += fmt::format(" and {} more", ids.size() - 6);
    return s;
}

void Picture::compact_run(int x, int y, const Lane& lane, size_t i0, size_t i1) {
    tools::SvgWriter& o = *o_;
    const uint32_t b = lane.blocks[i0];
    const std::span<const uint32_t> ids(lane.blocks.data() + i0, i1 - i0);
    tools::Attrs attrs{
        {"x", x}, {"y", y}, {"width", int(i1 - i0) * g_.step() - g_.gap}, {"height", g_.cell}};
    std::string title;
    if (lane.kind == Lane::Kind::Free || lane.kind == Lane::Kind::Evictable) {
        const bool ev = lane.kind == Lane::Kind::Evictable;
        attrs.insert(attrs.end(), {{"fill", ev ? kEvictableFill : "#f4f4f4"},
                                   {"stroke", ev ? kCachedInk : "#bbb"},
                                   {"stroke-width", "0.5"}});
        title =
            i1 - i0 == 1
                ? page_title(b)
                : fmt::format("{} {}..{} ({}): pages {}", ev ? "evictable, lru" : "free list", i0,
                              i1 - 1, ev ? "0 evicted first" : "0 handed out next", id_list(ids));
    } else {
        const PageOwner w0 = lane.owner.at(uint32_t(i0)), w1 = lane.owner.at(uint32_t(i1 - 1));
        const auto s0 = owner_span(w0), s1 = owner_span(w1);
        const bool tokens = s0.first < s0.second;
        const Rgb c = page_colour(b);
        attrs.push_back({"fill", reserved(b) ? "url(#reserved)"
                                 : tokens    ? c.hex()
                                             : c.tint(0.35).hex()});
        if (shared(b) || reserved(b))  // reserved: outlined in the row's colour
            attrs.insert(attrs.end(),
                         {{"stroke", shared(b) ? "#111" : c.hex()}, {"stroke-width", 1}});
        if (i1 - i0 == 1) {
            title = page_title(b);
        } else {
            title = fmt::format("{}, entries {}..{}: pages {}", owner_name(lane.owner), i0, i1 - 1,
                                id_list(ids));
            if (tokens) {
                const int64_t first = lane.slots.first;
                title += fmt::format(", tokens {}..{}", int64_t(i0) * bs_ + s0.first - first,
                                     int64_t(i1 - 1) * bs_ + s1.second - 1 - first);
            } else {
                title += reserved(b) ? ", no token yet (reserved)" : ", no token of this row";
            }
            if (shared(b)) {
                std::string others;
                for (const PageOwner& other : v_.owners[b])
                    if (!same_table(other, w0))
                        others += (others.empty() ? "" : ", ") + owner_name(other);
                title += fmt::format("; each shared by {} rows (page {}: {})", v_.owners[b].size(),
                                     b, others);
            }
        }
    }
    o.open("rect", attrs);
    o.text("title", {}, title);
    o.close();
}

void Picture::unowned_page(int x, int y, uint32_t b) {
    tools::SvgWriter& o = *o_;
    const bool evictable = v_.evictable(b);
    const int cell = g_.cell;
    o.open("g");
    o.text("title", {}, page_title(b));
    if (evictable) {
        o.element("rect", {{"x", x + 0.5},
                           {"y", y + 0.5},
                           {"width", cell - 1},
                           {"height", cell - 1},
                           {"rx", 3},
                           {"fill", kEvictableFill},
                           {"stroke", kCachedInk}});
        o.text("text",
               {{"x", x + cell / 2},
                {"y", y + 16},
                {"font-size", 11},
                {"text-anchor", "middle"},
                {"fill", kCachedInk}},
               fmt::format("{}", b));
        // Its place in the eviction order: 0 goes first.
        o.text("text",
               {{"x", x + cell / 2},
                {"y", y + 29},
                {"font-size", 9},
                {"text-anchor", "middle"},
                {"fill", kCachedInk}},
               fmt::format("lru {}", v_.lru_position[b]));
    } else {
        o.element("rect", {{"x", x + 0.5},
                           {"y", y + 0.5},
                           {"width", cell - 1},
                           {"height", cell - 1},
                           {"rx", 3},
                           {"fill", "#fff"},
                           {"stroke", "#bbb"},
                           {"stroke-dasharray", "3 2"}});
        o.text("text",
               {{"x", x + cell / 2},
                {"y", y + cell / 2 + 4},
                {"font-size", 11},
                {"text-anchor", "middle"},
                {"fill", "#aaa"}},
               fmt::format("{}", b));
    }
    o.close();
}

// The blocks view: every page by block id. Compact, a line's consecutive pages of one look and
// owner are one rectangle whose tooltip names them.
int Picture::draw_grid(int top) {
    tools::SvgWriter& o = *o_;
    const uint64_t n = d_.layout.num_blocks;
    const int cols = g_.grid_cols;
    o.text("text", {{"x", kMargin}, {"y", top + 16}, {"font-size", 14}, {"font-weight", "bold"}},
           fmt::format("Pages by block id, {} a line", cols));
    top += kHeading;
    if (!g_.compact) {
        for (uint32_t b = 0; b < n; ++b) {
            const int x = kMargin + int(b % uint32_t(cols)) * g_.step();
            const int y = top + int(b / uint32_t(cols)) * g_.step();
            if (v_.owners[b].empty()) {
                unowned_page(x, y, b);
                continue;
            }
            // One horizontal band per colour of the rows referencing the page (at most four).
            std::vector<Rgb> bands;
            for (const PageOwner& w : v_.owners[b]) {
                const Rgb oc = owner_colour(w);
                const bool seen = std::any_of(bands.begin(), bands.end(),
                                              [&](const Rgb& x2) { return x2.hex() == oc.hex(); });
                if (!seen && bands.size() < 4) bands.push_back(oc);
            }
            full_page(x, y, b, bands, page_spans(b), "");
        }
    } else {
        // What makes two neighbouring pages one run: same fill, same first owner, same marks.
        auto key = [&](uint32_t b) {
            const auto& w = v_.owners[b];
            if (w.empty()) return fmt::format("{}", v_.evictable(b) ? "e" : "f");
            return fmt::format("{} {} {} {} {} {} {}", w.front().cache, w.front().row,
                               w.front().spare, w.front().group, w.size(), reserved(b),
                               v_.cached(b));
        };
        for (uint64_t line = 0; line * uint64_t(cols) < n; ++line) {
            const uint32_t first = uint32_t(line * uint64_t(cols));
            const uint32_t last = uint32_t(std::min<uint64_t>(n, first + uint64_t(cols)));
            for (uint32_t b = first; b < last;) {
                uint32_t e = b + 1;
                const std::string k = key(b);
                while (e < last && key(e) == k)
                    ++e;
                const auto& w = v_.owners[b];
                tools::Attrs attrs{{"x", kMargin + int(b - first) * g_.step()},
                                   {"y", top + int(line) * g_.step()},
                                   {"width", int(e - b) * g_.step() - g_.gap},
                                   {"height", g_.cell}};
                std::string what;
                if (w.empty()) {
                    const bool ev = v_.evictable(b);
                    attrs.insert(attrs.end(), {{"fill", ev ? kEvictableFill : "#f4f4f4"},
                                               {"stroke", ev ? kCachedInk : "#bbb"},
                                               {"stroke-width", "0.5"}});
                    what = ev ? "cached, evictable" : "free";
                } else {
                    attrs.push_back(
                        {"fill", reserved(b) ? "url(#reserved)" : page_colour(b).hex()});
                    if (w.size() > 1 || reserved(b))
                        attrs.insert(attrs.end(),
                                     {{"stroke", w.size() > 1 ? "#111" : page_colour(b).hex()},
                                      {"stroke-width", 1}});
                    what =
                        fmt::format("{}{}{}", owner_name(w.front()),
                                    w.size() > 1 ? fmt::format(" and {} more", w.size() - 1) : "",
                                    reserved(b) ? ", no token yet (reserved)" : "");
                }
                o.open("rect", attrs);
                o.text(
                    "title", {},
                    e - b == 1 ? page_title(b) : fmt::format("pages {}..{}: {}", b, e - 1, what));
                o.close();
                b = e;
            }
        }
    }
    const int lines = int((n + uint64_t(cols) - 1) / uint64_t(cols));
    return kHeading + lines * g_.step() - g_.gap;
}

// The lanes view: labels on the left, each lane's pages in table order, wrapping after
// lane_cols; lines between the cells of a page in several lanes, under the cells.
int Picture::draw_lanes(int top) {
    tools::SvgWriter& o = *o_;
    o.text("text", {{"x", kMargin}, {"y", top + 16}, {"font-size", 14}, {"font-weight", "bold"}},
           g_.compact ? "Lanes: each row's pages in block-table order; lines link shared pages"
                      : "Lanes: each row's pages in block-table order, a line links a page's "
                        "lanes");
    top += kHeading;
    const int cells_x = kMargin + g_.label_w;
    int y = top;
    std::map<uint32_t, std::vector<std::pair<int, int>>> where;  // block: its cells, lane order
    std::vector<std::vector<std::pair<size_t, size_t>>> runs(lanes_.size());
    for (size_t li = 0; li < lanes_.size(); ++li) {
        Lane& lane = lanes_[li];
        lane.y = y;
        lane.lines = std::max(
            1, int((lane.blocks.size() + size_t(g_.lane_cols) - 1) / size_t(g_.lane_cols)));
        runs[li] = lane_runs(lane);
        // Full detail links every shared page's cells; compact, the first cells of runs.
        for (const auto& [i, end] : runs[li])
            where[lane.blocks[i]].emplace_back(cells_x + int(i % size_t(g_.lane_cols)) * g_.step(),
                                               y + int(i / size_t(g_.lane_cols)) * g_.step());
        y += lane.lines * g_.step() - g_.gap + g_.lane_gap;
    }
    // The links, under the cells: from a cell's bottom to the next lane's cell's top.
    for (const auto& [b, cells] : where) {
        if (cells.size() < 2) continue;
        const std::string ink = page_colour(b).hex();
        for (size_t i = 0; i + 1 < cells.size(); ++i) {
            const int x1 = cells[i].first + g_.cell / 2, y1 = cells[i].second + g_.cell;
            const int x2 = cells[i + 1].first + g_.cell / 2, y2 = cells[i + 1].second;
            const int ym = (y1 + y2) / 2;
            o.element(
                "path",
                {{"d", fmt::format("M{} {}C{} {} {} {} {} {}", x1, y1, x1, ym, x2, ym, x2, y2)},
                 {"fill", "none"},
                 {"stroke", ink},
                 {"stroke-width", g_.compact ? 1 : 3},
                 {"stroke-opacity", "0.8"}});
        }
    }
    for (const Lane& lane : lanes_) {
        const bool row = lane.kind == Lane::Kind::Row || lane.kind == Lane::Kind::Spare;
        const Rgb lc = row ? owner_colour(lane.owner) : from_hex(0xbbbbbb);
        if (g_.compact) {
            o.text(
                "text",
                {{"x", kMargin}, {"y", lane.y + g_.cell - 1}, {"font-size", 9}, {"fill", "#222"}},
                lane.label);
        } else {
            o.element("rect", {{"x", kMargin},
                               {"y", lane.y + 2},
                               {"width", 6},
                               {"height", g_.cell - 4},
                               {"fill", lc.hex()}});
            o.text("text",
                   {{"x", kMargin + 12},
                    {"y", lane.y + 14},
                    {"font-size", 12},
                    {"font-weight", "bold"}},
                   lane.label);
            o.text("text",
                   {{"x", kMargin + 12}, {"y", lane.y + 29}, {"font-size", 10}, {"fill", "#444"}},
                   lane.detail);
        }
        if (lane.blocks.empty())
            o.text("text",
                   {{"x", cells_x},
                    {"y", lane.y + g_.cell / 2 + 4},
                    {"font-size", g_.compact ? 9 : 11},
                    {"fill", "#888"}},
                   "no pages");
        std::map<std::string, uint32_t> sharers;  // other lane: pages shared with it
        for (const auto& [i0, i1] : runs[size_t(&lane - lanes_.data())]) {
            const int x = cells_x + int(i0 % size_t(g_.lane_cols)) * g_.step();
            const int cy = lane.y + int(i0 / size_t(g_.lane_cols)) * g_.step();
            if (g_.compact) {
                compact_run(x, cy, lane, i0, i1);
                continue;
            }
            const uint32_t b = lane.blocks[i0];
            if (!row) {
                unowned_page(x, cy, b);
                continue;
            }
            const PageOwner w = lane.owner.at(uint32_t(i0));
            const auto span = owner_span(w);
            for (const PageOwner& other : v_.owners[b])
                if (!same_table(other, w)) ++sharers[lane_name(other)];
            std::vector<std::pair<int64_t, int64_t>> spans;
            if (span.first < span.second) spans.push_back(span);
            full_page(x, cy, b, {page_colour(b)}, spans, fmt::format("l{}", clip_ids_++));
        }
        if (!g_.compact && !sharers.empty()) {
            std::string names;
            size_t shown = 0, total = 0;
            for (const auto& [name, count] : sharers) {
                total += count;
                if (shown++ < 3) names += fmt::format("{}{}", shown > 1 ? ", " : "", name);
            }
            if (sharers.size() > 3) names += fmt::format(" and {} more", sharers.size() - 3);
            const int used = int(std::min(lane.blocks.size(), size_t(g_.lane_cols)));
            o.text("text",
                   {{"x", cells_x + used * g_.step() + 8},
                    {"y", lane.y + g_.cell / 2 + 4},
                    {"font-size", 11},
                    {"fill", "#333"}},
                   fmt::format("shares with {}", names));
        }
    }
    return y - top - g_.lane_gap + kHeading;
}

int Picture::legend_height() const {
    // Conservative: every swatch and note the legend may draw.
    const bool list_rows = !lanes_view_ && !g_.compact;
    const size_t rows = list_rows ? std::min(selected_rows_.size(), kLegendRows) + 1 : 2;
    return int(rows + 9) * kLegendRow + 6 * kNoteLine + 20;
}

void Picture::draw_legend(int x, int top) {
    tools::SvgWriter& o = *o_;
    const DetailedStats& st = v_.stats;
    bool any_shared = false, any_spare = false, any_other = false, any_reserved = false;
    for (uint32_t b = 0; b < v_.owners.size(); ++b) {
        any_shared = any_shared || shared(b);
        any_reserved = any_reserved || reserved(b);
        for (const PageOwner& w : v_.owners[b]) {
            any_spare = any_spare || w.spare;
            any_other = any_other || (!w.spare && !v_.selected(w.cache, w.row));
        }
    }
    int ly = top + 12;
    auto swatch = [&](const tools::Attrs& fill_attrs, const std::string& label) {
        tools::Attrs attrs{{"x", x}, {"y", ly - 12}, {"width", 16}, {"height", 16}, {"rx", 2}};
        attrs.insert(attrs.end(), fill_attrs.begin(), fill_attrs.end());
        o.element("rect", attrs);
        o.text("text", {{"x", x + 24}, {"y", ly}, {"font-size", 12}}, label);
        ly += kLegendRow;
    };
    auto note = [&](const std::string& text) {
        o.text("text", {{"x", x}, {"y", ly}, {"font-size", 11}, {"fill", "#555"}}, text);
        ly += kNoteLine;
    };
    const size_t rows = selected_rows_.size();
    if (!lanes_view_ && !g_.compact) {
        // The blocks view alone: a colour per row, the first kLegendRows named.
        for (size_t i = 0; i < rows && i < kLegendRows; ++i) {
            const auto [c, r] = selected_rows_[i];
            const SnapshotCache& k = d_.caches[c];
            swatch({{"fill", colours_.at({c, r}).hex()}},
                   fmt::format("cache {} row {} ({}): {}, {} tokens", c, r, to_string(k.kind),
                               plural(k.rows[r].size(), "page", "pages"), k.row_length(r)));
        }
        if (rows > kLegendRows)
            swatch(
                {{"fill", "#fff"}, {"stroke", "#bbb"}},
                fmt::format("+ {} more rows: a page's tooltip names its rows", rows - kLegendRows));
    } else {
        // The lanes name their rows; a summary instead of a list that would stop short.
        o.element(
            "rect",
            {{"x", x}, {"y", ly - 12}, {"width", 8}, {"height", 16}, {"fill", colour(0).hex()}});
        o.element("rect", {{"x", x + 8},
                           {"y", ly - 12},
                           {"width", 8},
                           {"height", 16},
                           {"fill", colour(1).hex()}});
        o.text("text", {{"x", x + 24}, {"y", ly}, {"font-size", 12}},
               fmt::format("{} in {}: a colour each{}", plural(rows, "row", "rows"),
                           plural(d_.caches.size(), "cache", "caches"),
                           lanes_view_ ? ", named by its lane" : ""));
        ly += kLegendRow;
        if (colours_.size() > kDistinctColours) {
            note(
                fmt::format("Colours after the first {} are hues that may look", kDistinctColours));
            note("alike: the lane labels and every page's tooltip name its rows.");
            ly += 4;
        }
    }
    if (any_other) swatch({{"fill", from_hex(kGrey).hex()}}, "rows not selected");
    if (any_spare)
        swatch({{"fill", from_hex(kSpare).hex()}},
               "spare table of a static cache (no row uses it)");
    if (any_reserved)
        swatch({{"fill", "url(#reserved)"},
                {"stroke", "#4e79a7"},
                {"stroke-width", 2},
                {"stroke-dasharray", "4 2"}},
               "reserved, no token yet (static cache): hatched");
    if (any_shared)
        swatch({{"fill", "url(#hatch)"}, {"stroke", "#111"}, {"stroke-width", g_.compact ? 1 : 3}},
               g_.compact ? "shared page: several rows reference it"
                          : "shared page: ×N rows reference it");
    if (any_shared && lanes_view_) {
        o.element("path", {{"d", fmt::format("M{} {}C{} {} {} {} {} {}", x + 4, ly - 12, x + 4,
                                             ly - 4, x + 12, ly - 4, x + 12, ly + 4)},
                           {"fill", "none"},
                           {"stroke", colour(0).hex()},
                           {"stroke-width", 3}});
        o.text("text", {{"x", x + 24}, {"y", ly}, {"font-size", 12}},
               "lanes: a line links a shared page's cells");
        ly += kLegendRow;
    }
    if (st.cached_held_blocks > 0) {
        const int at = ly - 12;
        swatch({{"fill", "#ddd"}}, "cached page held by rows (prefix index)");
        o.element("polygon", {{"points", fmt::format("{},{} {},{} {},{}", x + 16 - 7, at, x + 16,
                                                     at, x + 16, at + 7)},
                              {"fill", kCachedInk}});
    }
    if (st.cached_blocks > 0)
        swatch({{"fill", kEvictableFill}, {"stroke", kCachedInk}},
               g_.compact ? "cached page no row holds: evictable"
                          : "cached page no row holds: evictable, lru 0 evicted first");
    if (st.free_blocks > 0)
        swatch({{"fill", g_.compact ? "#f4f4f4" : "#fff"},
                {"stroke", "#bbb"},
                {"stroke-dasharray", g_.compact ? "none" : "3 2"}},
               "free page");
    ly += 4;
    if (g_.compact) {
        note(
            fmt::format("Compact ({} pages): solid, a page holding tokens;", d_.layout.num_blocks));
        note("pale, one holding none of its lane's. Hover a page for its");
        note("block id, rows, reference count and token range.");
    } else {
        note("Solid: the slots holding tokens, where they sit in the page;");
        note("pale: empty slots (before a cropped or sliding row's first");
        note("slot, after its last token). Hover a page for its block id,");
        note("rows, reference count and token range.");
    }
}

void Picture::draw_title(int width) {
    tools::SvgWriter& o = *o_;
    const DetailedStats& st = v_.stats;
    o.element("rect", {{"width", width}, {"height", "100%"}, {"fill", "#fff"}});
    o.text("text",
           {{"x", kMargin}, {"y", kMargin + 18}, {"font-size", 17}, {"font-weight", "bold"}},
           fmt::format("pagedkv pool: {} pages of {} tokens, {} used, {} free, {} cached, {} "
                       "shared, peak {}",
                       d_.layout.num_blocks, bs_, st.used_blocks, st.free_blocks, st.cached_blocks,
                       st.shared_blocks, st.peak_used_blocks));
    std::string sub = fmt::format(
        "{} of {} token slots in used pages empty ({:.1f}% waste), largest free run {}, {} a "
        "page ({}), {}",
        st.waste_slots, st.slots_held, 100.0 * st.waste_fraction(), st.largest_free_run,
        human_bytes(d_.layout.block_bytes()), layout_name(d_.layout.layout), v_.path);
    if (v_.selection.cache || v_.selection.row)
        sub += fmt::format("  (showing{}{})",
                           v_.selection.cache ? fmt::format(" cache {}", *v_.selection.cache) : "",
                           v_.selection.row ? fmt::format(" row {}", *v_.selection.row) : "");
    o.text("text", {{"x", kMargin}, {"y", kMargin + 40}, {"font-size", 13}, {"fill", "#444"}}, sub);
}

std::string Picture::draw() {
    const uint64_t n = d_.layout.num_blocks;
    // Sizes first: the document's width and height come before its elements.
    const int grid_lines = int((n + uint64_t(g_.grid_cols) - 1) / uint64_t(g_.grid_cols));
    const int grid_w = g_.grid_cols * g_.step() - g_.gap;
    const int grid_h = kHeading + grid_lines * g_.step() - g_.gap;
    size_t widest = 1;
    const bool any_shared = v_.stats.shared_blocks > 0;  // room for "shares with ..."
    int lanes_h = kHeading;
    for (const Lane& lane : lanes_) {
        widest = std::max(widest, std::min(lane.blocks.size(), size_t(g_.lane_cols)));
        const int lines = std::max(
            1, int((lane.blocks.size() + size_t(g_.lane_cols) - 1) / size_t(g_.lane_cols)));
        lanes_h += lines * g_.step() - g_.gap + g_.lane_gap;
    }
    const int lanes_w = g_.label_w + int(widest) * g_.step() - g_.gap +
                        (g_.compact || !any_shared ? 0 : kShareNote);
    const int content_w = std::max(blocks_view_ ? grid_w : 0, lanes_view_ ? lanes_w : 0);
    const int content_h = (blocks_view_ ? grid_h : 0) +
                          (blocks_view_ && lanes_view_ ? kSection : 0) +
                          (lanes_view_ ? lanes_h : 0);
    const int top = kMargin + kTitle;
    const int legend_x = kMargin + content_w + 28;
    const int width = std::max(legend_x + kLegendW, 1100);
    const int height = top + std::max(content_h, legend_height()) + kMargin;

    tools::SvgWriter o({{"width", width},
                        {"height", height},
                        {"viewBox", fmt::format("0 0 {} {}", width, height)},
                        {"font-family", kFont}});
    o_ = &o;
    define_patterns();
    draw_title(width);
    int y = top;
    if (blocks_view_) y += draw_grid(y) + kSection;
    if (lanes_view_) draw_lanes(y);
    draw_legend(legend_x, top);
    o_ = nullptr;
    return o.finish();
}

}  // namespace

std::string svg_picture(const SnapshotView& v, const SvgOptions& options) {
    return Picture(v, options).draw();
}

}  // namespace pagedkv::dump
