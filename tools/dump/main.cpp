// pagedkv-dump: shows what a snapshot file holds: the pool's pages, who references them, and
// every cache's block tables, as text (default) or JSON (--json), and an SVG picture (--svg OUT,
// "-" for stdout: then the picture alone goes there).
// Exit status: 0 done, 1 a file could not be read or written, 2 a damaged snapshot or a wrong
// command line; every failure is one line on stderr.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <charconv>
#include <cstring>
#include <optional>
#include <string>

#include "cache/snapshot/snapshot_codec.hpp"
#include "json_report.hpp"
#include "pagedkv/error.hpp"
#include "snapshot_view.hpp"
#include "svg_picture.hpp"
#include "text_report.hpp"

using namespace pagedkv;

namespace {

constexpr const char* kUsage =
    "usage: pagedkv-dump [--json] [--svg OUT [--view both|lanes|blocks] [--compact|--no-compact]] "
    "[--cache N] [--row N] FILE";

struct Options {
    std::string file;
    bool json = false;
    std::optional<std::string> svg;  // "-": stdout
    dump::SvgOptions picture;
    dump::Selection selection;
};

// One line on stderr, then the status.
int fail(int status, const std::string& message) {
    fmt::print(stderr, "pagedkv-dump: {}\n", message);
    return status;
}

// --cache and --row take a decimal number that fits in 32 bits. The value is rewritten
// without leading zeros: CLI11's own conversion would read "010" as octal.
std::string check_index(std::string& s) {
    uint32_t v = 0;
    const char* end = s.data() + s.size();
    auto [p, ec] = std::from_chars(s.data(), end, v);
    if (ec != std::errc() || p != end || s.empty())
        return fmt::format("needs a non-negative number, got '{}'", s);
    s = std::to_string(v);
    return "";
}

// What CLI11 fills in before check() moves it into Options.
struct Raw {
    std::string svg;
    std::string view = "both";
    bool compact = false;
    uint32_t cache = 0, row = 0;
};

void define(CLI::App& app, Options& o, Raw& raw) {
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    // Unknown options and a second file are reported by check(), in this tool's words.
    app.allow_extras();
    app.add_flag("--json", o.json, "print the report as JSON (tools/pagedkv-dump.schema.json)");
    app.add_option("--svg", raw.svg,
                   "also draw the pool as an SVG picture into OUT; '-': to stdout, instead of "
                   "the text report")
        ->type_name("OUT");
    app.add_option("--view", raw.view,
                   "what --svg draws: 'lanes' (one lane per row, its pages in block-table order, "
                   "shared pages linked; then the free list), 'blocks' (every page by block id), "
                   "or 'both' (the default: blocks above lanes)")
        ->type_name("VIEW")
        ->check(CLI::IsMember({"both", "lanes", "blocks"}).description(""));
    app.add_flag("--compact,!--no-compact", raw.compact,
                 fmt::format("--svg: small cells without text (default: above {} pages)",
                             dump::kCompactAbove));
    const CLI::Validator number(check_index, "", "index");
    app.add_option("--cache", raw.cache, "show only cache N (counted in the order saved, from 0)")
        ->type_name("N")
        ->transform(number);
    app.add_option("--row", raw.row, "show only row N of the caches shown")
        ->type_name("N")
        ->transform(number);
    app.add_option("FILE", o.file, "the snapshot file (required)")->type_name("");
}

// What CLI11 lets through: an error message, or "" when the command line is good.
std::string check(const CLI::App& app, const Raw& raw, Options& o) {
    for (const std::string& a : app.remaining()) {
        if (a.size() > 1 && a[0] == '-') return fmt::format("unknown option '{}'", a);
        return fmt::format("one snapshot file at a time, got '{}' and '{}'", o.file, a);
    }
    if (o.file.empty()) return "no snapshot file given";
    if (app.count("--svg")) o.svg = raw.svg;
    for (const char* svg_only : {"--view", "--compact", "--no-compact"})
        if (app.count(svg_only) && !o.svg) return fmt::format("{} needs --svg", svg_only);
    o.picture.view = raw.view == "lanes"    ? dump::SvgView::Lanes
                     : raw.view == "blocks" ? dump::SvgView::Blocks
                                            : dump::SvgView::Both;
    if (app.count("--compact") || app.count("--no-compact")) o.picture.compact = raw.compact;
    if (o.svg == "-" && o.json) return "--svg - and --json both write to stdout";
    if (app.count("--cache")) o.selection.cache = raw.cache;
    if (app.count("--row")) o.selection.row = raw.row;
    return "";
}

// Writes text to the file at path, or to stdout when path is "-".
bool write_text(const std::string& path, const std::string& text) {
    if (path == "-") return std::fwrite(text.data(), 1, text.size(), stdout) == text.size();
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    Raw raw;
    CLI::App app{
        "pagedkv-dump: shows what a pagedkv snapshot file holds: the pool's pages, who "
        "references them, and every cache's block tables. Exit status: 0 done, 1 a file could "
        "not be read or written, 2 a damaged snapshot or a wrong command line.",
        "pagedkv-dump"};
    define(app, o, raw);
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return fail(2, fmt::format("{} ({})", e.what(), kUsage));
    }
    if (std::string e = check(app, raw, o); !e.empty())
        return fail(2, fmt::format("{} ({})", e, kUsage));
    try {
        std::vector<uint8_t> bytes;
        try {
            bytes = read_snapshot_file(o.file);
        } catch (const Error& e) {
            return fail(1, e.what());
        }
        dump::SnapshotView v;
        try {
            v = dump::make_view(o.file, bytes, o.selection);
        } catch (const Error& e) {
            if (e.code() == ErrorCode::CorruptSnapshot)
                return fail(2, fmt::format("{}: corrupt snapshot: {}", o.file, e.what()));
            return fail(2, e.what());
        }
        if (o.svg && !write_text(*o.svg, dump::svg_picture(v, o.picture)))
            return fail(1, fmt::format("cannot write '{}': {}", *o.svg == "-" ? "stdout" : *o.svg,
                                       std::strerror(errno)));
        if (o.svg != "-") fmt::print("{}", o.json ? dump::json_report(v) : dump::text_report(v));
        return std::fflush(stdout) == 0 ? 0 : fail(1, "cannot write to stdout");
    } catch (const std::exception& e) {
        return fail(1, e.what());
    }
}
