// pagedkv-dump: shows what a snapshot file holds: the pool's pages, who references them, and
// every cache's block tables, as text (default), JSON (--json) or an SVG picture (--svg OUT).
// Exit status: 0 done, 1 a file could not be read or written, 2 a damaged snapshot or a wrong
// command line; every failure is one line on stderr.
#include <fmt/format.h>

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
    "usage: pagedkv-dump [--json] [--svg OUT] [--cache N] [--row N] FILE";

struct Options {
    std::string file;
    bool json = false;
    std::optional<std::string> svg;
    dump::Selection selection;
};

// One line on stderr, then the status.
int fail(int status, const std::string& message) {
    fmt::print(stderr, "pagedkv-dump: {}\n", message);
    return status;
}

std::optional<uint32_t> parse_index(const char* s) {
    uint32_t v = 0;
    const char* end = s + std::strlen(s);
    auto [p, ec] = std::from_chars(s, end, v);
    if (ec != std::errc() || p != end || p == s) return std::nullopt;
    return v;
}

// Fills o from argv; returns an error message, or "" when the command line is good.
std::string parse(int argc, char** argv, Options& o) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        if (a == "--json") {
            o.json = true;
        } else if (a == "--svg") {
            const char* v = value();
            if (!v) return "--svg needs an output file";
            o.svg = v;
        } else if (a == "--cache" || a == "--row") {
            const char* v = value();
            const auto n = v ? parse_index(v) : std::nullopt;
            if (!n) return fmt::format("{} needs a non-negative number, got '{}'", a, v ? v : "");
            (a == "--cache" ? o.selection.cache : o.selection.row) = *n;
        } else if (a.size() > 1 && a[0] == '-') {
            return fmt::format("unknown option '{}'", a);
        } else if (!o.file.empty()) {
            return fmt::format("one snapshot file at a time, got '{}' and '{}'", o.file, a);
        } else {
            o.file = a;
        }
    }
    if (o.file.empty()) return "no snapshot file given";
    return "";
}

bool write_text(const std::string& path, const std::string& text) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
        fmt::print("{}\n", kUsage);
        return 0;
    }
    Options o;
    if (std::string e = parse(argc, argv, o); !e.empty())
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
        if (o.svg && !write_text(*o.svg, dump::svg_picture(v)))
            return fail(1, fmt::format("cannot write '{}': {}", *o.svg, std::strerror(errno)));
        fmt::print("{}", o.json ? dump::json_report(v) : dump::text_report(v));
        return 0;
    } catch (const std::exception& e) {
        return fail(1, e.what());
    }
}
