// pagedkv-dump as a user runs it (the binary named by $PAGEDKV_DUMP, set by ctest): its text,
// filters and picture, and for every damaged file (each truncation, a bit flip in each byte,
// hand-made inconsistent files with valid checksums) exit status 2 with one line on stderr.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cache/snapshot/snapshot_codec.hpp"
#include "snapshot_samples.hpp"

using namespace pagedkv;
namespace fs = std::filesystem;

namespace {

struct Run {
    int status = -1;
    std::string out, err;
    size_t err_lines() const { return size_t(std::count(err.begin(), err.end(), '\n')); }
};

std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// A scratch directory of this process, removed at exit.
struct Scratch {
    fs::path dir = fs::temp_directory_path() / ("pagedkv-dump-test-" + std::to_string(::getpid()));
    Scratch() { fs::create_directories(dir); }
    ~Scratch() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    fs::path write(const std::string& name, std::span<const uint8_t> bytes) const {
        const fs::path p = dir / name;
        std::ofstream(p, std::ios::binary)
            .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
        return p;
    }
};

const Scratch& scratch() {
    static Scratch s;
    return s;
}

std::string quoted(const std::string& s) {
    std::string o = "'";
    for (char c : s)
        o += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return o + "'";
}

// Runs pagedkv-dump with these arguments (in directory cwd when given), capturing stdout,
// stderr and the exit status.
Run dump(const std::vector<std::string>& args, const fs::path& cwd = {}) {
    const char* exe = std::getenv("PAGEDKV_DUMP");
    REQUIRE(exe != nullptr);  // set by ctest; run the binary by hand with it set
    std::string cmd = quoted(fs::absolute(exe).string());
    if (!cwd.empty()) cmd = "cd " + quoted(cwd.string()) + " && " + cmd;
    for (const auto& a : args)
        cmd += " " + quoted(a);
    const fs::path out = scratch().dir / "stdout", err = scratch().dir / "stderr";
    cmd += " >" + quoted(out.string()) + " 2>" + quoted(err.string());
    const int status = std::system(cmd.c_str());
    Run r;
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (status & 0x7f);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
}

// The run a damaged file must give: status 2 and exactly one line on stderr, nothing on stdout.
void require_rejected(const Run& r, const std::string& text = "corrupt snapshot") {
    INFO("stderr: " << r.err);
    REQUIRE(r.status == 2);
    REQUIRE(r.err_lines() == 1);
    REQUIRE_THAT(r.err, Catch::StartsWith("pagedkv-dump: ") && Catch::Contains(text));
    REQUIRE(r.out.empty());
}

}  // namespace

TEST_CASE("pagedkv-dump prints the pool summary and every row's block table", "[dump]") {
    const auto path = scratch().write("sample.snap", encode_snapshot(test::sample_snapshot(false)));
    const Run r = dump({path.string()});
    INFO(r.err);
    REQUIRE(r.status == 0);
    CHECK(r.err.empty());
    CHECK_THAT(r.out, Catch::Contains("(format 1, 512 B, no page contents)\n"));
    CHECK_THAT(r.out,
               Catch::Contains("pages      12 total, 9 used, 3 free, 0 cached, 2 shared, peak "
                               "10, 5 copied on write\n"));
    CHECK_THAT(r.out, Catch::Contains("waste      15 of 36 token slots in used pages hold no "
                                      "token (41.7%)\n"));
    CHECK_THAT(r.out, Catch::Contains("free runs  largest 2 pages, 2 in all\n"));
    CHECK_THAT(r.out, Catch::Contains("refcounts  free: 3, 1 ref: 7, 2 refs: 2"));
    CHECK_THAT(r.out, Catch::Contains("free list  8 10 11  (next handed out first)\n"));
    CHECK_THAT(r.out, Catch::Contains("cache 0  dynamic  2 rows, 4 pages\n"
                                      "  row 0  len 10  [0* 1* 2]  (layer lengths 10 9)\n"
                                      "  row 1  len 11  [0* 1* 3]\n"));
    CHECK_THAT(r.out, Catch::Contains("cache 1  static (batch_size 2, max_cache_len 6)  1 row + 1 "
                                      "spare, 4 pages\n  row 0  len 5  [4 5]\n  spare 0  [6 7]\n"));
    CHECK_THAT(r.out, Catch::Contains("cache 2  sliding (window 6)  1 row, 1 page\n"
                                      "  row 0  len 3  [9]  (first token at slot 1)\n"));
    CHECK_THAT(r.out, !Catch::Contains("prefix cache"));  // a pool without prefix caching
}

TEST_CASE("pagedkv-dump shows a quantized pool's codes and scales", "[dump]") {
    for (DType t : {DType::Int8, DType::FP8E4M3}) {
        const auto path = scratch().write(std::string("quantized-") + to_string(t) + ".snap",
                                          encode_snapshot(test::quantized_snapshot(t, true)));
        const Run r = dump({path.string()});
        INFO(r.err);
        REQUIRE(r.status == 0);
        CHECK_THAT(r.out, Catch::Contains(std::string("head_dim 4, v_head_dim 4, ") + to_string(t) +
                                          ", 4 tokens a page, 128 B a page"));
        CHECK_THAT(r.out, Catch::Contains(std::string("quantized  ") + to_string(t) +
                                          " codes, one f32 scale per token per kv head after "
                                          "each page's codes (64 B of a block's 128 B are "
                                          "scales)\n"));
        const Run j = dump({path.string(), "--json"});
        REQUIRE(j.status == 0);
        CHECK_THAT(j.out, Catch::Contains(std::string("\"dtype\": \"") + to_string(t) + "\""));
        CHECK_THAT(j.out, Catch::Contains("\"scale_bytes\": 4"));
    }
    // An unquantized pool has no such line.
    const auto plain = scratch().write("plain.snap", encode_snapshot(test::sample_snapshot(false)));
    const Run r = dump({plain.string()});
    CHECK_THAT(r.out, !Catch::Contains("quantized"));
}

namespace {

std::string hex(uint64_t h) {
    char b[17];
    std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
    return b;
}

}  // namespace

TEST_CASE("pagedkv-dump shows cached pages: hashes, parents, salts, held or evictable", "[dump]") {
    const SnapshotData s = test::cached_snapshot(false);
    const auto path = scratch().write("cached.snap", encode_snapshot(s));
    auto hash_of = [&](uint32_t block) {
        for (const PrefixEntry& e : s.prefix)
            if (index(e.block) == block) return hex(e.hash);
        FAIL("block " << block << " has no entry");
        return std::string();
    };
    // The hash is the chained hash of the page's tokens: page 1 after page 0, salt 0.
    REQUIRE(hash_of(1) ==
            hex(PrefixIndex::hash_page(
                PrefixIndex::hash_page(PrefixIndex::kRootHash, 0, std::vector<int32_t>{1, 2, 3, 4}),
                0, std::vector<int32_t>{5, 6, 7, 8})));
    Run r = dump({path.string()});
    INFO(r.err);
    REQUIRE(r.status == 0);
    CHECK_THAT(r.out, Catch::Contains("(format 2, 612 B, no page contents)\n"));
    CHECK_THAT(r.out,
               Catch::Contains("pages      12 total, 5 used, 5 free, 2 cached, 0 shared, peak "
                               "8, 0 copied on write\n"));
    CHECK_THAT(r.out, Catch::Contains("refcounts  free: 5, evictable: 2, 1 ref: 5  (pages per"));
    CHECK_THAT(r.out, Catch::Contains("free runs  largest 5 pages, 1 in all\n"));
    CHECK_THAT(r.out,
               Catch::Contains("\nprefix cache  5 cached pages: 3 held by rows, 2 evictable  "
                               "(evicted in the order 2 1)\n"
                               "  block   hash              parent  salt  state\n"
                               "  0       " +
                               hash_of(0) +
                               "  -       0     held, 1 ref\n"
                               "  5       " +
                               hash_of(5) +
                               "  -       7     held, 1 ref\n"
                               "  3       " +
                               hash_of(3) +
                               "  0       0     held, 1 ref\n"
                               "  1       " +
                               hash_of(1) +
                               "  0       0     evictable, LRU 1\n"
                               "  2       " +
                               hash_of(2) +
                               "  1       0     evictable, LRU 0 "
                               "(evicted next)\n"));

    r = dump({"--json", path.string()});
    REQUIRE(r.status == 0);
    CHECK_THAT(r.out, Catch::Contains("\"format_version\": 2,"));
    CHECK_THAT(r.out, Catch::Contains("\"cached_blocks\": 2,\n    \"cached_held_blocks\": 3,"));
    CHECK_THAT(r.out, Catch::Contains("\"cached\": [0, 1, 2, 3, 5],\n    \"evictable\": [2, 1],"));
    CHECK_THAT(r.out, Catch::Contains("\"block\": 2,\n        \"hash\": \"" + hash_of(2) +
                                      "\",\n        \"parent\": 1,\n        \"salt\": 0,\n"
                                      "        \"tokens\": [9, 10, 11, 12],\n        "
                                      "\"refcount\": 0,\n        \"evictable\": true,\n"
                                      "        \"lru_position\": 0\n"));

    const auto svg = scratch().dir / "cached.svg";
    r = dump({"--svg", svg.string(), "--view", "blocks", path.string()});
    REQUIRE(r.status == 0);
    const std::string pic = slurp(svg);
    auto count = [&](const std::string& needle) {
        size_t n = 0;
        for (size_t at = pic.find(needle); at != std::string::npos; at = pic.find(needle, at + 1))
            ++n;
        return n;
    };
    // Evictable pages 1 and 2 in their own colour (and the legend's swatch), with their place
    // in the eviction order; held cached pages 0, 3 and 5 (and the legend) with a corner mark.
    CHECK(count("fill=\"#e3d7f4\" stroke=\"#5b2a86\"") == 3);
    CHECK(count(">lru 0</text>") == 1);
    CHECK(count(">lru 1</text>") == 1);
    CHECK(count("<polygon ") == 4);
    CHECK(count("<clipPath id=\"p") == 5);            // the pages in use
    CHECK(count("stroke-dasharray=\"3 2\"/>") == 6);  // 5 free pages and the legend's swatch
    CHECK_THAT(pic, Catch::Contains(">cached page no row holds: evictable, lru 0 evicted first<"));
    CHECK_THAT(pic, Catch::Contains(">cached page held by rows (prefix index)<"));
    CHECK_THAT(pic, Catch::Contains("5 free, 2 cached, 0 shared"));
}

TEST_CASE("pagedkv-dump --cache and --row show only the selected rows", "[dump]") {
    const auto path = scratch().write("sample.snap", encode_snapshot(test::sample_snapshot(false)));
    Run r = dump({"--cache", "0", "--row", "1", path.string()});
    REQUIRE(r.status == 0);
    CHECK_THAT(r.out, Catch::Contains("  row 1  len 11  [0* 1* 3]\n"));
    CHECK_THAT(r.out, !Catch::Contains("row 0  len 10"));
    CHECK_THAT(r.out, !Catch::Contains("cache 1"));
    r = dump({"--row", "0", path.string()});
    REQUIRE(r.status == 0);
    CHECK_THAT(r.out, Catch::Contains("cache 2  sliding"));
    CHECK_THAT(r.out, !Catch::Contains("row 1  len 11"));
    CHECK_THAT(r.out, !Catch::Contains("spare 0"));
    r = dump({"--json", "--cache", "2", path.string()});
    REQUIRE(r.status == 0);
    CHECK_THAT(r.out, Catch::Contains("\"selection\": {\n    \"cache\": 2,\n    \"row\": null\n"));
    CHECK_THAT(r.out, Catch::Contains("\"window\": 6"));
    CHECK_THAT(r.out, !Catch::Contains("\"kind\": \"static\""));
}

TEST_CASE("pagedkv-dump refuses a wrong command line with one line and status 2", "[dump]") {
    const auto path = scratch().write("sample.snap", encode_snapshot(test::sample_snapshot(false)));
    require_rejected(dump({"--cache", "3", path.string()}), "--cache 3: the snapshot has 3 caches");
    require_rejected(dump({"--cache", "1", "--row", "1", path.string()}),
                     "--row 1: cache 1 has 1 rows");
    require_rejected(dump({"--row", "-1", path.string()}),
                     "--row: needs a non-negative number, got '-1'");
    require_rejected(dump({"--frobnicate", path.string()}), "unknown option '--frobnicate'");
    require_rejected(dump({}), "no snapshot file given");
    require_rejected(dump({path.string(), path.string()}), "one snapshot file at a time");
    require_rejected(dump({"--svg"}), "--svg");
    require_rejected(dump({"--view", "lanes", path.string()}), "--view needs --svg");
    require_rejected(dump({"--svg", "x.svg", "--view", "tree", path.string()}), "--view");
    require_rejected(dump({"--svg", "-", "--json", path.string()}),
                     "--svg - and --json both write to stdout");
    const Run missing = dump({(scratch().dir / "no-such.snap").string()});
    CHECK(missing.status == 1);
    CHECK(missing.err_lines() == 1);
    CHECK_THAT(missing.err, Catch::Contains("cannot open"));
}

TEST_CASE("pagedkv-dump exits 2 with one line for every truncation of a snapshot", "[dump]") {
    const auto bytes = encode_snapshot(test::sample_snapshot(false));
    const auto path = scratch().dir / "truncated.snap";
    for (size_t n = 0; n < bytes.size(); ++n) {
        INFO("truncated to " << n << " bytes");
        scratch().write("truncated.snap", std::span(bytes).first(n));
        require_rejected(dump({path.string()}), "truncated");
    }
}

TEST_CASE("pagedkv-dump exits 2 with one line for a bit flip in any byte", "[dump]") {
    // The in-process decoder test flips every bit of a file with pages too; here each run is
    // a process, so the smaller file.
    auto bytes = encode_snapshot(test::sample_snapshot(false));
    const auto path = scratch().dir / "flipped.snap";
    for (size_t i = 0; i < bytes.size(); ++i) {
        const uint8_t bit = uint8_t(1u << (i % 8));  // a different bit of each byte
        INFO("byte " << i << " bit mask " << int(bit));
        bytes[i] ^= bit;
        scratch().write("flipped.snap", bytes);
        bytes[i] ^= bit;
        require_rejected(dump({path.string()}), "byte ");
    }
}

TEST_CASE("pagedkv-dump names the byte and field of a hand-made inconsistent snapshot", "[dump]") {
    struct Case {
        const char* what;
        void (*edit)(SnapshotData&);
        const char* message;
    };
    const Case cases[] = {
        {"refcount", [](SnapshotData& s) { s.allocator.refcounts[5] = 2; },
         "byte 164 (refcounts[5]): block 5 has refcount 2 but the block tables reference it 1 "
         "time"},
        {"block id", [](SnapshotData& s) { s.caches[0].rows[1][2] = BlockId{99}; },
         "byte 276 (caches[0].rows[1][2]): block 99 out of range, the pool has 12 blocks"},
        {"free list", [](SnapshotData& s) { s.allocator.free_list[2] = s.allocator.free_list[0]; },
         "byte 208 (free_list[2]): block 11 is on the free list twice"},
        {"length", [](SnapshotData& s) { s.caches[0].len[1][1] = 13; },
         "byte 328 (caches[0].len[layer 1][row 1]): tokens [0, 13) do not fit"},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        SnapshotData s = test::sample_snapshot(false);
        c.edit(s);
        const auto path = scratch().write("inconsistent.snap", encode_snapshot(s));
        require_rejected(dump({path.string()}), c.message);
    }
    auto bytes = encode_snapshot(test::sample_snapshot(false));
    bytes[8] = 7;  // version 7, header checksum resealed
    seal_snapshot(bytes);
    auto path = scratch().write("version.snap", bytes);
    require_rejected(
        dump({path.string()}),
        "byte 8 (version): unsupported snapshot version 7, this build reads versions 1 to 2");
    // A damaged prefix index: an entry whose hash is not its tokens' (checksums resealed).
    SnapshotData cached = test::cached_snapshot(false);
    cached.prefix[3].tokens[0] = 99;
    path = scratch().write("cached-bad.snap", encode_snapshot(cached));
    require_rejected(dump({path.string()}), "(prefix[3].hash): hash ");
    const std::string text = "not a snapshot\n";
    path = scratch().write("text.snap",
                           std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
    require_rejected(dump({path.string()}), "byte 0 (magic): not a pagedkv snapshot");
}

TEST_CASE("pagedkv-dump --svg draws every page, marks shared ones and names every row", "[dump]") {
    const auto path = scratch().write("sample.snap", encode_snapshot(test::sample_snapshot(false)));
    const auto svg = scratch().dir / "sample.svg";
    const Run r = dump({"--svg", svg.string(), "--view", "blocks", path.string()});
    REQUIRE(r.status == 0);
    const std::string s = slurp(svg);
    CHECK_THAT(s, Catch::StartsWith("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    CHECK_THAT(s, Catch::EndsWith("</svg>\n"));
    auto count = [&](const std::string& needle) {
        size_t n = 0;
        for (size_t at = s.find(needle); at != std::string::npos; at = s.find(needle, at + 1))
            ++n;
        return n;
    };
    CHECK(count("<clipPath id=\"p") == 9);            // the pages in use
    CHECK(count("stroke-dasharray=\"3 2\"/>") == 4);  // 3 free pages and the legend's swatch
    CHECK(count(">×2</text>") == 2);                  // blocks 0 and 1, shared by two rows
    CHECK_THAT(s, Catch::Contains(">cache 0 row 1 (dynamic): 3 pages, 11 tokens</text>"));
    CHECK_THAT(s, Catch::Contains(">cache 2 row 0 (sliding): 1 page, 3 tokens</text>"));
    CHECK_THAT(s, Catch::Contains(">spare table of a static cache (no row uses it)</text>"));
    CHECK_THAT(s, Catch::Contains(">reserved, no token yet (static cache): hatched</text>"));
    CHECK_THAT(s, Catch::Contains("41.7% waste"));
    const Run bad = dump({"--svg", (scratch().dir / "no-dir" / "x.svg").string(), path.string()});
    CHECK(bad.status == 1);
    CHECK(bad.err_lines() == 1);
}

TEST_CASE("pagedkv-dump --help lists every option, and numbers are read as decimal", "[dump]") {
    const Run help = dump({"--help"});
    REQUIRE(help.status == 0);
    for (const char* option : {"--json", "--svg OUT", "--view VIEW", "--compact", "--no-compact",
                               "--cache N", "--row N", "FILE"})
        CHECK_THAT(help.out, Catch::Contains(option));
    const auto path = scratch().write("sample.snap", encode_snapshot(test::sample_snapshot(false)));
    // 010 is ten, not octal eight: refused, the sample having 3 caches.
    require_rejected(dump({"--cache", "010", path.string()}), "--cache 10: the snapshot has 3");
    const Run last = dump({"--json", "--cache", "0", "--cache", "2", path.string()});
    REQUIRE(last.status == 0);
    CHECK_THAT(last.out, Catch::Contains("\"cache\": 2,"));
}

TEST_CASE("pagedkv-dump escapes a file name in its JSON and SVG", "[dump]") {
    const auto path =
        scratch().write("we\"ird<&>\\name.snap", encode_snapshot(test::sample_snapshot(false)));
    const auto svg = scratch().dir / "weird.svg";
    const Run r = dump({"--json", "--svg", svg.string(), path.string()});
    REQUIRE(r.status == 0);
    CHECK_THAT(r.out, Catch::Contains("we\\\"ird<&>\\\\name.snap\",\n"));
    const std::string s = slurp(svg);
    CHECK_THAT(s, Catch::Contains("we&quot;ird&lt;&amp;&gt;\\name.snap</text>"));
}

namespace {

size_t count_in(const std::string& s, const std::string& needle) {
    size_t n = 0;
    for (size_t at = s.find(needle); at != std::string::npos; at = s.find(needle, at + 1))
        ++n;
    return n;
}

// The showcase pool (tests/support/snapshot_samples.hpp): forked rows, a cropped and a sliding
// row, a static cache with reserved pages and a spare table, free pages.
fs::path showcase() {
    return scratch().write("showcase.snap", encode_snapshot(test::showcase_snapshot()));
}

}  // namespace

TEST_CASE("pagedkv-dump draws a cropped or sliding row's tokens at the slots they occupy",
          "[dump]") {
    const auto path = showcase();
    const Run lanes = dump({"--svg", "-", "--view", "lanes", path.string()});
    REQUIRE(lanes.status == 0);
    const std::string& s = lanes.out;
    // Lanes: the label column ends at x 270, a page is 36 px for 4 slots. Cache 1 row 0 (the
    // fourth lane, y 258) holds its first token at slot 3: the solid part of page 8 is its
    // last quarter, not its first.
    CHECK_THAT(s, Catch::Contains("<rect x=\"297.0\" y=\"258.0\" width=\"9.0\" height=\"36.0\" "
                                  "fill=\"#76b7b2\"/>"));
    CHECK_THAT(s, !Catch::Contains("<rect x=\"270.0\" y=\"258.0\" width=\"9.0\""));
    CHECK_THAT(s, Catch::Contains(">dynamic, 9 tokens from slot 3</text>"));
    CHECK_THAT(s, Catch::Contains("cache 1 row 0, entry 0: tokens 0..0 at slots 3..3</title>"));
    // The sliding row (cache 2, y 308), first token at slot 2: page 11's right half.
    CHECK_THAT(s, Catch::Contains("<rect x=\"288.0\" y=\"308.0\" width=\"18.0\" height=\"36.0\" "
                                  "fill=\"#59a14f\"/>"));
    CHECK_THAT(s, Catch::Contains("cache 2 row 0, entry 2: tokens 6..7 at slots 0..1"));
    // The blocks view: page 8 (x 340, second line of none: y 108) the same way.
    const Run blocks = dump({"--svg", "-", "--view", "blocks", path.string()});
    REQUIRE(blocks.status == 0);
    CHECK_THAT(blocks.out, Catch::Contains("<rect x=\"367.0\" y=\"108.0\" width=\"9.0\" "
                                           "height=\"36.0\" fill=\"#76b7b2\"/>"));
    // The JSON gives each row's slot span.
    const Run j = dump({"--json", "--cache", "1", path.string()});
    REQUIRE(j.status == 0);
    CHECK_THAT(j.out, Catch::Contains("\"starts\": [3, 3],\n          \"first_slot\": 3,\n"
                                      "          \"end_slot\": 12,\n"));
    const Run j2 = dump({"--json", "--cache", "2", path.string()});
    CHECK_THAT(j2.out, Catch::Contains("\"first_slot\": 2,\n          \"end_slot\": 10,\n"));
}

TEST_CASE("pagedkv-dump marks a static cache's reserved pages holding no token", "[dump]") {
    const auto path = showcase();
    const Run r = dump({"--svg", "-", "--view", "blocks", path.string()});
    REQUIRE(r.status == 0);
    // Pages 16 (row 0's third), 17 18 19 (row 1, empty) and the spare table's 20 21 22, and
    // the legend's swatch; page 15 holds tokens and is drawn as any other.
    CHECK(count_in(r.out, "fill=\"url(#reserved)\"") == 8);
    CHECK_THAT(r.out, Catch::Contains(">reserved, no token yet (static cache): hatched</text>"));
    CHECK_THAT(r.out, Catch::Contains("<title>page 17: 1 ref, 0 of 4 slots hold tokens\n"
                                      "cache 3 row 1, entry 0: no token yet (reserved)</title>"));
    CHECK_THAT(r.out, Catch::Contains("<title>page 15: 1 ref, 2 of 4 slots hold tokens\n"
                                      "cache 3 row 0, entry 1: tokens 4..5 at slots 0..1</title>"));
    CHECK_THAT(r.out, Catch::Contains("cache 3 spare 0, entry 2: reserved, no batch row uses it"));
}

TEST_CASE("pagedkv-dump --view lanes draws each row in table order, shared pages linked",
          "[dump]") {
    const auto path = showcase();
    const Run r = dump({"--svg", "-", "--view", "lanes", path.string()});
    REQUIRE(r.status == 0);
    const std::string& s = r.out;
    // The three forked rows each draw pages 0 1 2, page 4 twice: every cell has its tooltip.
    const std::string page0 =
        "<title>page 0: 3 refs, 4 of 4 slots hold tokens\n"
        "cache 0 row 0, entry 0: tokens 0..3 at slots 0..3\n"
        "cache 0 row 1, entry 0: tokens 0..3 at slots 0..3\n"
        "cache 0 row 2, entry 0: tokens 0..3 at slots 0..3</title>";
    CHECK(count_in(s, page0) == 3);
    CHECK(count_in(s, "<title>page 4: 2 refs") == 2);
    CHECK(count_in(s, "<title>page 3: 1 ref") == 1);
    // Links: page 0 from lane 0 (y 108) to lane 1 (y 158) and on to lane 2 (y 208); 7 in all
    // (pages 0 1 2 twice, page 4 once) and the legend's.
    CHECK_THAT(s, Catch::Contains("<path d=\"M288 144C288 151 288 151 288 158\" fill=\"none\" "
                                  "stroke=\"#4e79a7\""));
    CHECK_THAT(s, Catch::Contains("<path d=\"M288 194C288 201 288 201 288 208\""));
    CHECK_THAT(s, Catch::Contains("<path d=\"M408 194C408 201 408 201 408 208\" fill=\"none\" "
                                  "stroke=\"#f28e2b\""));  // page 4: row 1's colour
    CHECK(count_in(s, "<path ") == 8);
    CHECK_THAT(s, Catch::Contains(">shares with cache 0 row 0, cache 0 row 2</text>"));
    // In table order: row 2's lane holds 0 1 2 4 5 left to right.
    const size_t lane2 = s.find(">cache 0 row 2</text>");
    REQUIRE(lane2 != std::string::npos);
    size_t at = lane2;
    for (const char* id : {">0</text>", ">1</text>", ">2</text>", ">4</text>", ">5</text>"}) {
        INFO(id);
        const size_t next = s.find(id, at);
        REQUIRE(next != std::string::npos);
        at = next;
    }
    CHECK(at < s.find(">cache 1 row 0</text>"));
    // Then the free list, top first, and the spare table.
    CHECK_THAT(s, Catch::Contains(">11 pages, next handed out first</text>"));
    CHECK_THAT(s, Catch::Contains("<title>page 7: free, handed out next</title>"));
    CHECK_THAT(s, Catch::Contains("<title>page 6: free, handed out after 1 other</title>"));
    CHECK(s.find("<title>page 7: free") < s.find("<title>page 6: free"));
    CHECK_THAT(s, Catch::Contains(">cache 3 spare 0</text>"));
}

TEST_CASE("pagedkv-dump --svg gives every page a tooltip in both views", "[dump]") {
    const auto path = showcase();
    const Run blocks = dump({"--svg", "-", "--view", "blocks", path.string()});
    REQUIRE(blocks.status == 0);
    for (uint32_t b = 0; b < 32; ++b) {
        INFO("page " << b);
        CHECK(count_in(blocks.out, "<title>page " + std::to_string(b) + ": ") == 1);
    }
    const Run both = dump({"--svg", "-", path.string()});  // the default: both views
    REQUIRE(both.status == 0);
    // Pages 0 1 2 in four places (the grid and three lanes), 4 in three, free ones in two.
    CHECK(count_in(both.out, "<title>page 1: ") == 4);
    CHECK(count_in(both.out, "<title>page 4: ") == 3);
    CHECK(count_in(both.out, "<title>page 30: ") == 2);
    CHECK_THAT(both.out, Catch::Contains(">Pages by block id, 16 a line</text>"));
    CHECK_THAT(both.out, Catch::Contains(">Lanes: each row's pages in block-table order"));
}

TEST_CASE("pagedkv-dump --svg stays small at 4096 pages: compact cells, a legend that sums up",
          "[dump]") {
    const auto path =
        scratch().write("large.snap", encode_snapshot(test::large_snapshot(4096, 64)));
    const Run r = dump({"--svg", "-", path.string()});
    REQUIRE(r.status == 0);
    const std::string& s = r.out;
    INFO("compact picture: " << s.size() << " bytes");
    CHECK(s.size() < 120 * 1024);  // 40 KB when written; the full picture is over 4 MB
    CHECK_THAT(s, Catch::Contains(">Compact (4096 pages): solid, a page holding tokens;</text>"));
    CHECK_THAT(s, !Catch::Contains("<clipPath"));  // no per-slot detail
    // The size in pixels: the first width and height, the <svg> element's.
    const size_t w = s.find("width=\""), h = s.find("height=\"");
    REQUIRE(w != std::string::npos);
    CHECK(std::stoi(s.substr(w + 7)) <= 1600);
    CHECK(std::stoi(s.substr(h + 8)) <= 2000);
    // The legend sums the rows up instead of stopping after a few, and says colours repeat.
    CHECK_THAT(s, Catch::Contains(">64 rows in 1 cache: a colour each, named by its lane</text>"));
    CHECK_THAT(s, Catch::Contains("alike: the lane labels and every page's tooltip name its "
                                  "rows.</text>"));
    CHECK(count_in(s, ">c0 r") == 64);  // every lane named
    CHECK_THAT(s, !Catch::Contains("more rows"));
    // A run's tooltip names its pages, row and tokens; row 1 shares row 0's pages.
    CHECK_THAT(s, Catch::Contains("<title>cache 0 row 0, entries 0..47: pages 0..47, tokens "
                                  "0..764; each shared by 2 rows (page 0: cache 0 row 1)</title>"));
    // Full detail on request, and forced compact on a small pool.
    const Run full = dump({"--svg", "-", "--no-compact", "--view", "blocks", path.string()});
    REQUIRE(full.status == 0);
    CHECK(full.out.size() > 10 * s.size());
    const Run small = dump({"--svg", "-", "--compact", showcase().string()});
    REQUIRE(small.status == 0);
    CHECK_THAT(small.out, Catch::Contains(">Compact (32 pages)"));
    // Reserved pages stay marked, runs of them outlined in their row's colour.
    CHECK_THAT(small.out, Catch::Contains("fill=\"url(#reserved)\" stroke=\"#b07aa1\" "
                                          "stroke-width=\"1\"><title>cache 3 row 1, entries "
                                          "0..2: pages 17..19, no token yet (reserved)</title>"));
    CHECK_THAT(small.out, Catch::Contains("<title>pages 17..19: cache 3 row 1, no token yet "
                                          "(reserved)</title>"));
}

TEST_CASE("pagedkv-dump --svg - writes the picture to stdout, not to a file named '-'", "[dump]") {
    const auto path = showcase();
    const fs::path dir = scratch().dir / "cwd";
    fs::create_directories(dir);
    const Run r = dump({"--svg", "-", path.string()}, dir);
    REQUIRE(r.status == 0);
    CHECK(r.err.empty());
    CHECK_THAT(r.out, Catch::StartsWith("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    CHECK_THAT(r.out, Catch::EndsWith("</svg>\n"));
    CHECK_THAT(r.out, !Catch::Contains("free list  "));  // the picture alone
    CHECK(fs::is_empty(dir));
    // A file named '-' is still reachable as ./-
    const Run f = dump({"--svg", "./-", path.string()}, dir);
    REQUIRE(f.status == 0);
    CHECK(fs::exists(dir / "-"));
    CHECK_THAT(f.out, Catch::StartsWith("snapshot   "));
}

TEST_CASE("pagedkv-dump lists the free list top first in its text and its JSON", "[dump]") {
    for (const auto& [name, snapshot] : {std::pair{"sample", test::sample_snapshot(false)},
                                         std::pair{"showcase", test::showcase_snapshot()}}) {
        INFO(name);
        const auto path = scratch().write(std::string(name) + ".snap", encode_snapshot(snapshot));
        const Run text = dump({path.string()});
        const Run json = dump({"--json", path.string()});
        REQUIRE(text.status == 0);
        REQUIRE(json.status == 0);
        // The allocator's list is bottom first: the top is its last entry.
        std::string top_first;
        const auto& fl = snapshot.allocator.free_list;
        for (size_t i = fl.size(); i-- > 0;)
            top_first += std::to_string(index(fl[i])) + (i ? " " : "");
        CHECK_THAT(text.out,
                   Catch::Contains("free list  " + top_first + "  (next handed out first)\n"));
        std::string commas = top_first;
        for (size_t at = commas.find(' '); at != std::string::npos; at = commas.find(' ', at + 2))
            commas.replace(at, 1, ", ");
        CHECK_THAT(json.out, Catch::Contains("\"free_list\": [" + commas + "]\n"));
    }
    // Made by hand: the sample's free list is 8 10 11 from the top.
    const auto path = scratch().write("sample.snap", encode_snapshot(test::sample_snapshot(false)));
    CHECK_THAT(dump({"--json", path.string()}).out, Catch::Contains("\"free_list\": [8, 10, 11]"));
}

TEST_CASE("pagedkv-dump shows a hybrid pool's layer groups: a table and a lane per group",
          "[dump][hybrid]") {
    const auto path = scratch().write("hybrid.snap", encode_snapshot(test::hybrid_snapshot(false)));
    const Run text = dump({path.string()});
    INFO(text.err);
    REQUIRE(text.status == 0);
    CHECK_THAT(text.out, Catch::Contains("(format 2, 536 B, no page contents)\n"));
    CHECK_THAT(text.out,
               Catch::Contains("groups     4 model layers, windows 0 4 4 0 (0: full attention); a "
                               "page holds one group's 2 layers: g0 w0, g1 w4\n"));
    CHECK_THAT(text.out, Catch::Contains("cache 0  dynamic  2 rows, 7 pages\n"));
    CHECK_THAT(text.out, Catch::Contains("  row 0  len 10\n"
                                         "    g0 w0  layers 0 3  held 10  [0* 1* 2]\n"
                                         "    g1 w4  layers 1 2  held 4 (6 let go)  [3* 4]  "
                                         "(first token at slot 2)\n"));
    CHECK_THAT(text.out, Catch::Contains("    g1 w4  layers 1 2  held 4 (7 let go)  [3* 6]  "
                                         "(first token at slot 3)\n"));

    const Run json = dump({"--json", path.string()});
    REQUIRE(json.status == 0);
    CHECK_THAT(json.out, Catch::Contains("\"layer_windows\": [0, 4, 4, 0]") ||
                             Catch::Contains("\"layer_windows\": [\n"));
    CHECK_THAT(json.out, Catch::Contains("\"model_layers\": 4"));
    CHECK_THAT(json.out, Catch::Contains("\"window\": 4"));

    // One lane per (row, group), labelled with the group and its window; the tooltip of a
    // sliding group's page names its table.
    const Run svg = dump({"--svg", "-", "--view", "lanes", path.string()});
    REQUIRE(svg.status == 0);
    const std::string& s = svg.out;
    for (const char* lane : {">cache 0 row 0 g0 w0</text>", ">cache 0 row 0 g1 w4</text>",
                             ">cache 0 row 1 g0 w0</text>", ">cache 0 row 1 g1 w4</text>"}) {
        INFO(lane);
        CHECK(count_in(s, lane) == 1);
    }
    CHECK(s.find(">cache 0 row 0 g1 w4</text>") < s.find(">cache 0 row 1 g0 w0</text>"));
    CHECK_THAT(s, Catch::Contains(">dynamic, 4 tokens from slot 2, 6 let go</text>"));
    CHECK_THAT(s, Catch::Contains("<title>page 3: 2 refs, 2 of 4 slots hold tokens\n"
                                  "cache 0 row 0 g1 w4, entry 0: tokens 0..1 at slots 2..3\n"
                                  "cache 0 row 1 g1 w4, entry 0: tokens 0..0 at slots 3..3"));
    const Run compact = dump({"--svg", "-", "--compact", "--view", "lanes", path.string()});
    REQUIRE(compact.status == 0);
    CHECK_THAT(compact.out, Catch::Contains(">c0 r1 g1 w4</text>"));
    // The blocks view names a page's group too.
    const Run blocks = dump({"--svg", "-", "--view", "blocks", path.string()});
    REQUIRE(blocks.status == 0);
    CHECK_THAT(blocks.out, Catch::Contains("cache 0 row 1 g1 w4, entry 1: tokens 1..3 at slots "
                                           "0..2"));
}
