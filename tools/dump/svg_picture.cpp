#include "svg_picture.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "svg_writer.hpp"
#include "text_report.hpp"

namespace pagedkv::dump {

namespace {

constexpr int kCell = 36;    // a page's square, px
constexpr int kGap = 4;      // between squares
constexpr int kMargin = 20;  // around everything
constexpr int kTitle = 62;   // the two title lines
constexpr int kLegendRow = 22;
constexpr size_t kLegendRows = 24;  // row entries shown before "+ N more"
constexpr const char* kFont = "DejaVu Sans, Helvetica, Arial, sans-serif";
// Prefix caching: an evictable page (no row holds it, a later prompt may) is filled with its own
// colour; a cached page that rows hold gets a corner mark of the darker one.
constexpr const char* kEvictableFill = "#e3d7f4";
constexpr const char* kCachedInk = "#5b2a86";
constexpr int kCorner = 11;  // the corner mark's legs, px

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
    if (i < std::size(tableau)) return from_hex(tableau[i]);
    const double h = std::fmod(double(i) * 137.508, 360.0) / 60.0, s = 0.55, l = 0.58;
    const double c = (1 - std::fabs(2 * l - 1)) * s, x = c * (1 - std::fabs(std::fmod(h, 2) - 1));
    const double m = l - c / 2;
    const int sector = int(h);
    const double rgb[6][3] = {{c, x, 0}, {x, c, 0}, {0, c, x}, {0, x, c}, {x, 0, c}, {c, 0, x}};
    return {rgb[sector][0] + m, rgb[sector][1] + m, rgb[sector][2] + m};
}

}  // namespace

std::string svg_picture(const SnapshotView& v) {
    const SnapshotData& d = v.data;
    const DetailedStats& st = v.stats;
    const uint64_t n = d.layout.num_blocks;
    const uint32_t bs = d.layout.block_size;
    const int cols = n <= 512 ? 16 : n <= 4096 ? 32 : 64;
    const int grid_rows = int((n + uint64_t(cols) - 1) / uint64_t(cols));
    const bool ids = n <= 4096;  // ids inside the squares while they stay legible

    // A colour per (cache, row) in order; rows outside the selection are grey.
    std::map<std::pair<uint32_t, uint32_t>, Rgb> colours;
    std::vector<std::pair<uint32_t, uint32_t>> legend_rows;
    for (uint32_t c = 0; c < d.caches.size(); ++c)
        for (uint32_t r = 0; r < d.caches[c].rows.size(); ++r) {
            colours[{c, r}] = colour(colours.size());
            if (v.selected(c, r)) legend_rows.emplace_back(c, r);
        }
    const Rgb grey = from_hex(0xc8c8c8);
    auto owner_colour = [&](const PageOwner& o) {
        if (!v.selected(o.cache, o.spare ? UINT32_MAX : o.row)) return grey;
        return o.spare ? from_hex(0x9a9a9a) : colours.at({o.cache, o.row});
    };
    // Which marks the legend needs.
    bool any_shared = false, any_spare = false, any_other = false;
    const bool any_evictable = st.cached_blocks > 0, any_held_cached = st.cached_held_blocks > 0;
    for (const auto& owners : v.owners) {
        any_shared = any_shared || owners.size() > 1;
        for (const PageOwner& w : owners) {
            any_spare = any_spare || w.spare;
            any_other = any_other || (!w.spare && !v.selected(w.cache, w.row));
        }
    }

    const int grid_w = cols * (kCell + kGap) - kGap;
    const int grid_h = grid_rows * (kCell + kGap) - kGap;
    const int legend_x = kMargin + grid_w + 28;
    const int legend_entries = int(std::min(legend_rows.size(), kLegendRows)) +
                               (legend_rows.size() > kLegendRows) + any_other + any_spare +
                               any_shared + any_held_cached + any_evictable + 1;
    const int legend_h = legend_entries * kLegendRow + 44;  // and two lines of notes
    const int width = legend_x + 380;
    const int height = kMargin + kTitle + std::max(grid_h, legend_h) + kMargin;

    tools::SvgWriter o({{"width", width},
                        {"height", height},
                        {"viewBox", fmt::format("0 0 {} {}", width, height)},
                        {"font-family", kFont}});
    o.open("defs");
    o.open("pattern", {{"id", "hatch"},
                       {"width", 6},
                       {"height", 6},
                       {"patternUnits", "userSpaceOnUse"},
                       {"patternTransform", "rotate(45)"}});
    o.element("line", {{"x1", 0},
                       {"y1", 0},
                       {"x2", 0},
                       {"y2", 6},
                       {"stroke", "#000"},
                       {"stroke-width", 2},
                       {"stroke-opacity", "0.35"}});
    o.close();
    o.close();
    o.element("rect", {{"width", width}, {"height", height}, {"fill", "#fff"}});
    o.text(
        "text", {{"x", kMargin}, {"y", kMargin + 18}, {"font-size", 17}, {"font-weight", "bold"}},
        fmt::format("pagedkv pool: {} pages of {} tokens, {} used, {} free, {} cached, {} shared, "
                    "peak {}",
                    n, bs, st.used_blocks, st.free_blocks, st.cached_blocks, st.shared_blocks,
                    st.peak_used_blocks));
    std::string sub = fmt::format(
        "{} of {} token slots in used pages empty ({:.1f}% waste), largest free run {}, {} a "
        "page ({}), {}",
        st.waste_slots, st.slots_held, 100.0 * st.waste_fraction(), st.largest_free_run,
        human_bytes(d.layout.block_bytes()), layout_name(d.layout.layout), v.path);
    if (v.selection.cache || v.selection.row)
        sub += fmt::format("  (showing{}{})",
                           v.selection.cache ? fmt::format(" cache {}", *v.selection.cache) : "",
                           v.selection.row ? fmt::format(" row {}", *v.selection.row) : "");
    o.text("text", {{"x", kMargin}, {"y", kMargin + 40}, {"font-size", 13}, {"fill", "#444"}}, sub);

    const int top = kMargin + kTitle;
    for (uint64_t b = 0; b < n; ++b) {
        const int x = kMargin + int(b % uint64_t(cols)) * (kCell + kGap);
        const int y = top + int(b / uint64_t(cols)) * (kCell + kGap);
        const auto& owners = v.owners[b];
        if (owners.empty() && v.evictable(uint32_t(b))) {
            o.element("rect", {{"x", x + 0.5},
                               {"y", y + 0.5},
                               {"width", kCell - 1},
                               {"height", kCell - 1},
                               {"rx", 3},
                               {"fill", kEvictableFill},
                               {"stroke", kCachedInk}});
            if (ids) {
                o.text("text",
                       {{"x", x + kCell / 2},
                        {"y", y + 16},
                        {"font-size", 11},
                        {"text-anchor", "middle"},
                        {"fill", kCachedInk}},
                       fmt::format("{}", b));
                // Its place in the eviction order: 0 goes first.
                o.text("text",
                       {{"x", x + kCell / 2},
                        {"y", y + 29},
                        {"font-size", 9},
                        {"text-anchor", "middle"},
                        {"fill", kCachedInk}},
                       fmt::format("lru {}", v.lru_position[b]));
            }
            continue;
        }
        if (owners.empty()) {
            o.element("rect", {{"x", x + 0.5},
                               {"y", y + 0.5},
                               {"width", kCell - 1},
                               {"height", kCell - 1},
                               {"rx", 3},
                               {"fill", "#fff"},
                               {"stroke", "#bbb"},
                               {"stroke-dasharray", "3 2"}});
            if (ids)
                o.text("text",
                       {{"x", x + kCell / 2},
                        {"y", y + kCell / 2 + 4},
                        {"font-size", 11},
                        {"text-anchor", "middle"},
                        {"fill", "#aaa"}},
                       fmt::format("{}", b));
            continue;
        }
        const PageOwner& first = owners.front();
        const Rgb c = owner_colour(first);
        // One horizontal band per colour of the rows referencing the page (at most four): the
        // pale band is the page, its solid part from the left the slots holding tokens.
        std::vector<Rgb> bands;
        for (const PageOwner& w : owners) {
            const Rgb oc = owner_colour(w);
            const bool seen = std::any_of(bands.begin(), bands.end(),
                                          [&](const Rgb& x2) { return x2.hex() == oc.hex(); });
            if (!seen && bands.size() < 4) bands.push_back(oc);
        }
        const double fill = std::min(1.0, double(v.slots_used[b]) / bs);
        o.open("clipPath", {{"id", fmt::format("p{}", b)}});
        o.element("rect", {{"x", x}, {"y", y}, {"width", kCell}, {"height", kCell}, {"rx", 3}});
        o.close();
        o.open("g", {{"clip-path", fmt::format("url(#p{})", b)}});
        for (size_t i = 0; i < bands.size(); ++i) {
            const double bh = double(kCell) / double(bands.size());
            const double by = y + bh * double(i);
            o.element("rect", {{"x", x},
                               {"y", fmt::format("{:.1f}", by)},
                               {"width", kCell},
                               {"height", fmt::format("{:.1f}", bh)},
                               {"fill", bands[i].tint(0.35).hex()}});
            if (fill > 0)
                o.element("rect", {{"x", x},
                                   {"y", fmt::format("{:.1f}", by)},
                                   {"width", fmt::format("{:.1f}", kCell * fill)},
                                   {"height", fmt::format("{:.1f}", bh)},
                                   {"fill", bands[i].hex()}});
        }
        if (v.cached(uint32_t(b)))  // held by rows and named by the prefix index
            o.element("polygon", {{"points", fmt::format("{},{} {},{} {},{}", x + kCell - kCorner,
                                                         y, x + kCell, y, x + kCell, y + kCorner)},
                                  {"fill", kCachedInk}});
        o.close();
        const bool shared = owners.size() > 1;
        if (shared) {
            o.element("rect", {{"x", x + 1.5},
                               {"y", y + 1.5},
                               {"width", kCell - 3},
                               {"height", kCell - 3},
                               {"rx", 3},
                               {"fill", "url(#hatch)"},
                               {"stroke", "#111"},
                               {"stroke-width", 3}});
        } else if (first.spare) {
            o.element("rect", {{"x", x + 0.5},
                               {"y", y + 0.5},
                               {"width", kCell - 1},
                               {"height", kCell - 1},
                               {"rx", 3},
                               {"fill", "none"},
                               {"stroke", "#666"},
                               {"stroke-dasharray", "2 2"}});
        }
        const char* ink = fill >= 0.5 ? c.text() : "#111";
        if (ids)
            o.text("text",
                   {{"x", x + kCell / 2},
                    {"y", y + (shared ? 16 : kCell / 2 + 4)},
                    {"font-size", 11},
                    {"text-anchor", "middle"},
                    {"fill", ink}},
                   fmt::format("{}", b));
        if (shared)
            o.text("text",
                   {{"x", x + kCell / 2},
                    {"y", y + 29},
                    {"font-size", 10},
                    {"font-weight", "bold"},
                    {"text-anchor", "middle"},
                    {"fill", ink}},
                   fmt::format("×{}", owners.size()));
    }

    // Legend: one line per selected row, then the marks.
    int ly = top + 12;
    auto swatch = [&](const tools::Attrs& fill_attrs, const std::string& label) {
        tools::Attrs attrs{
            {"x", legend_x}, {"y", ly - 12}, {"width", 16}, {"height", 16}, {"rx", 2}};
        attrs.insert(attrs.end(), fill_attrs.begin(), fill_attrs.end());
        o.element("rect", attrs);
        o.text("text", {{"x", legend_x + 24}, {"y", ly}, {"font-size", 12}}, label);
        ly += kLegendRow;
    };
    for (size_t i = 0; i < legend_rows.size() && i < kLegendRows; ++i) {
        const auto [c, r] = legend_rows[i];
        const SnapshotCache& k = d.caches[c];
        swatch({{"fill", colours.at({c, r}).hex()}},
               fmt::format("cache {} row {} ({}): {} page{}, {} tokens", c, r, to_string(k.kind),
                           k.rows[r].size(), k.rows[r].size() == 1 ? "" : "s", k.row_length(r)));
    }
    if (legend_rows.size() > kLegendRows)
        swatch({{"fill", "#fff"}}, fmt::format("+ {} more rows", legend_rows.size() - kLegendRows));
    if (any_other) swatch({{"fill", grey.hex()}}, "rows not selected");
    if (any_spare)
        swatch({{"fill", "#9a9a9a"}, {"stroke", "#666"}, {"stroke-dasharray", "2 2"}},
               "reserved by a static cache, no row in use");
    if (any_shared)
        swatch({{"fill", "url(#hatch)"}, {"stroke", "#111"}, {"stroke-width", 3}},
               "shared page: ×N rows reference it");
    if (any_held_cached) {
        const int at = ly - 12;
        swatch({{"fill", "#ddd"}}, "cached page held by rows (prefix index)");
        o.element("polygon", {{"points", fmt::format("{},{} {},{} {},{}", legend_x + 16 - 7, at,
                                                     legend_x + 16, at, legend_x + 16, at + 7)},
                              {"fill", kCachedInk}});
    }
    if (any_evictable)
        swatch({{"fill", kEvictableFill}, {"stroke", kCachedInk}},
               "cached page no row holds: evictable, lru 0 evicted first");
    swatch({{"fill", "#fff"}, {"stroke", "#bbb"}, {"stroke-dasharray", "3 2"}}, "free page");
    o.text("text", {{"x", legend_x}, {"y", ly + 4}, {"font-size", 11}, {"fill", "#555"}},
           "Solid part: slots holding tokens; pale part: empty slots.");
    o.text("text", {{"x", legend_x}, {"y", ly + 20}, {"font-size", 11}, {"fill", "#555"}},
           fmt::format("Pages in block-id order, {} a line.", cols));
    return o.finish();
}

}  // namespace pagedkv::dump
