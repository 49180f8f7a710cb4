// The snapshot format on the CPU: encode/decode round trips, the documented header, every
// truncation and bit flip rejected, hand-made inconsistent files (valid checksums) named by
// byte offset and field, allocator restore, and the computed statistics.
#include <catch2/catch.hpp>

#include <algorithm>

#include "cache/snapshot/crc32.hpp"
#include "cache/snapshot/detailed_stats.hpp"
#include "cache/snapshot/snapshot_check.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "pagedkv/error.hpp"
#include "snapshot_samples.hpp"

using namespace pagedkv;
using test::sample_snapshot;

namespace {

uint64_t get_le(const std::vector<uint8_t>& b, size_t at, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i)
        v |= uint64_t(b[at + size_t(i)]) << (8 * i);
    return v;
}

void put_le(std::vector<uint8_t>& b, size_t at, uint64_t v, int n) {
    for (int i = 0; i < n; ++i)
        b[at + size_t(i)] = uint8_t(v >> (8 * i));
}

// The decoder's message for these bytes, or "" when they decode.
std::string decode_error(std::span<const uint8_t> bytes) {
    try {
        decode_snapshot(bytes);
    } catch (const Error& e) {
        if (e.code() != ErrorCode::CorruptSnapshot)
            return std::string("wrong code ") + to_string(e.code()) + ": " + e.what();
        return e.what();
    }
    return "";
}

std::string encode_error(const SnapshotData& s) {
    return decode_error(encode_snapshot(s));
}

// Offsets in the sample without pages (README#format adds them up the same way).
constexpr size_t kRefcountsAt = 144;  // header 32 + POOL 12 + 88 + ALOC 12
constexpr size_t kFreeListAt = 200;   // + 12 refcounts x 4 + free_count 8
constexpr size_t kCache0At = 212;     // CACH #0 section header

}  // namespace

TEST_CASE("crc32 is the standard CRC-32 and can be continued", "[snapshot]") {
    const std::string text = "123456789";
    const std::span<const uint8_t> b(reinterpret_cast<const uint8_t*>(text.data()), text.size());
    CHECK(crc32(b) == 0xCBF43926u);  // the check value of CRC-32/ISO-HDLC
    CHECK(crc32(b.subspan(4), crc32(b.first(4))) == 0xCBF43926u);
    CHECK(crc32({}) == 0u);
}

TEST_CASE("a snapshot decodes to exactly what was encoded, with and without pages", "[snapshot]") {
    for (bool pages : {false, true}) {
        INFO("pages " << pages);
        const SnapshotData s = sample_snapshot(pages);
        REQUIRE(check_snapshot(s) == "");
        const auto bytes = encode_snapshot(s);
        CHECK(bytes.size() == (pages ? 512u + 12 + 8 + 9 * 4 + 9 * 64 : 512u));
        const SnapshotData back = decode_snapshot(bytes);
        CHECK(back == s);
        CHECK(encode_snapshot(back) == bytes);
    }
}

TEST_CASE("a snapshot records the page layout in POOL's former reserved field", "[snapshot]") {
    SnapshotData s = sample_snapshot(true);
    const auto head = encode_snapshot(s);
    constexpr size_t kLayoutAt = 32 + 12 + 84;  // header, POOL section header, the field
    CHECK(head[kLayoutAt] == 0);                // head-major files are those of 0.1, byte for byte
    s.layout.layout = PageLayout::TokenMajor;
    const auto token = encode_snapshot(s);
    CHECK(token[kLayoutAt] == 1);
    const SnapshotData back = decode_snapshot(token);
    CHECK(back.layout.layout == PageLayout::TokenMajor);
    CHECK(back == s);
    for (uint32_t bad : {2u, 7u}) {
        s.layout.layout = static_cast<PageLayout>(bad);
        CHECK(encode_error(s) == "byte " + std::to_string(kLayoutAt) +
                                     " (page_layout): unknown page layout " + std::to_string(bad) +
                                     " (0 head-major, 1 token-major)");
    }
}

TEST_CASE("the header holds magic, version, flags, payload size and both checksums", "[snapshot]") {
    const auto bytes = encode_snapshot(sample_snapshot(true));
    const std::string magic(bytes.begin(), bytes.begin() + 7);
    CHECK(magic == "PKVSNAP");
    CHECK(bytes[7] == 0x1A);
    CHECK(get_le(bytes, 8, 4) == 1);   // version: 1 holds a pool without cached pages
    CHECK(get_le(bytes, 12, 4) == 1);  // flags: page contents
    const auto cached = encode_snapshot(test::cached_snapshot(true));
    CHECK(get_le(cached, 8, 4) == 2);   // cached pages: version 2
    CHECK(get_le(cached, 12, 4) == 3);  // page contents and the prefix cache
    CHECK(get_le(bytes, 16, 8) == bytes.size() - 32);
    CHECK(get_le(bytes, 24, 4) == crc32(std::span(bytes).subspan(32)));
    CHECK(get_le(bytes, 28, 4) == crc32(std::span(bytes).first(28)));
    CHECK(std::string(bytes.begin() + 32, bytes.begin() + 36) == "POOL");
    CHECK(get_le(bytes, 36, 8) == 88);
    CHECK(get_le(bytes, 44, 4) == 2);            // num_layers
    CHECK(get_le(bytes, 44 + 24, 8) == 12);      // num_blocks
    CHECK(get_le(bytes, 44 + 40, 8) == 64);      // block_bytes
    CHECK(get_le(bytes, kRefcountsAt, 4) == 2);  // block 0 is shared by two rows
    CHECK(get_le(bytes, kFreeListAt - 8, 8) == 3);
    CHECK(get_le(bytes, kFreeListAt + 8, 4) == 8);  // the top of the stack: handed out next
    CHECK(std::string(bytes.begin() + kCache0At, bytes.begin() + kCache0At + 4) == "CACH");
}

TEST_CASE("every truncation of a snapshot is rejected with one line", "[snapshot]") {
    for (bool pages : {false, true}) {
        const auto bytes = encode_snapshot(sample_snapshot(pages));
        for (size_t n = 0; n < bytes.size(); ++n) {
            INFO("truncated to " << n << " of " << bytes.size() << " bytes");
            const std::string e = decode_error(std::span(bytes).first(n));
            REQUIRE_THAT(e, Catch::Contains("truncated"));
            REQUIRE(e.find('\n') == std::string::npos);
        }
    }
}

TEST_CASE("a flip of any bit of a snapshot is rejected with one line", "[snapshot]") {
    for (bool pages : {false, true}) {
        auto bytes = encode_snapshot(sample_snapshot(pages));
        for (size_t i = 0; i < bytes.size(); ++i)
            for (int bit = 0; bit < 8; ++bit) {
                INFO("byte " << i << " bit " << bit);
                bytes[i] ^= uint8_t(1u << bit);
                const std::string e = decode_error(bytes);
                bytes[i] ^= uint8_t(1u << bit);
                REQUIRE(e != "");
                REQUIRE(e.find('\n') == std::string::npos);
                REQUIRE_THAT(e, Catch::StartsWith("byte "));
            }
    }
}

TEST_CASE("a wrong magic, an unknown version and damaged checksums name the field", "[snapshot]") {
    auto bytes = encode_snapshot(sample_snapshot(false));
    auto edited = [&](size_t at, uint8_t v) {
        auto b = bytes;
        b[at] = v;
        return decode_error(b);
    };
    CHECK(edited(0, 'X') ==
          "byte 0 (magic): not a pagedkv snapshot: it starts with 'XKVSNAP\\x1a', a snapshot "
          "with 'PKVSNAP\\x1a'");
    CHECK(edited(8, 3) ==
          "byte 8 (version): unsupported snapshot version 3, this build reads "
          "versions 1 to 2");
    CHECK_THAT(edited(8, 0), Catch::StartsWith("byte 8 (version): unsupported snapshot version 0"));
    CHECK_THAT(edited(16, 0xFF), Catch::StartsWith("byte 28 (header_crc32): header checksum "
                                                   "mismatch"));
    CHECK_THAT(edited(300, bytes[300] ^ 1),
               Catch::StartsWith("byte 24 (payload_crc32): payload checksum mismatch"));
    const std::string text = "hello, this is not a snapshot at all";
    CHECK_THAT(decode_error(std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size())),
               Catch::StartsWith("byte 0 (magic): not a pagedkv snapshot"));
    auto longer = bytes;
    longer.push_back(0);
    CHECK(decode_error(longer) == "byte 512 (payload): 1 bytes after the end of the payload");
}

TEST_CASE("inconsistent snapshots with valid checksums name the byte and field", "[snapshot]") {
    const SnapshotData good = sample_snapshot(false);
    SECTION("a reference count that disagrees with the tables") {
        SnapshotData s = good;
        s.allocator.refcounts[5] = 2;
        CHECK(encode_error(s) ==
              "byte 164 (refcounts[5]): block 5 has refcount 2 but the block "
              "tables reference it 1 time");
    }
    SECTION("a block id out of range in a table") {
        SnapshotData s = good;
        s.caches[0].rows[1][2] = BlockId{99};
        CHECK(encode_error(s) ==
              "byte 276 (caches[0].rows[1][2]): block 99 out of range, the "
              "pool has 12 blocks");
    }
    SECTION("a duplicate on the free list") {
        SnapshotData s = good;
        s.allocator.free_list[2] = s.allocator.free_list[0];
        CHECK(encode_error(s) ==
              "byte 208 (free_list[2]): block 11 is on the free list twice "
              "(also at free_list[0])");
    }
    SECTION("a block on the free list that is referenced") {
        SnapshotData s = good;
        s.allocator.free_list[1] = BlockId{4};
        CHECK(encode_error(s) ==
              "byte 204 (free_list[1]): block 4 is on the free list but has refcount 1");
    }
    SECTION("an unreferenced block missing from the free list") {
        SnapshotData s = good;
        s.allocator.free_list.pop_back();
        CHECK(encode_error(s) ==
              "byte 176 (refcounts[8]): block 8 has refcount 0 but is not on "
              "the free list");
    }
    SECTION("counters that do not add up") {
        SnapshotData s = good;
        s.allocator.allocations += 1;
        CHECK(encode_error(s) ==
              "byte 100 (allocations): allocations 12 - releases 2 != 9 blocks in use");
        s = good;
        s.allocator.peak_used_blocks = 3;
        CHECK_THAT(encode_error(s), Catch::StartsWith("byte 92 (peak_used_blocks)"));
    }
    SECTION("tokens past the pages of their row") {
        SnapshotData s = good;
        s.caches[0].len[1][1] = 13;
        CHECK(encode_error(s) ==
              "byte 328 (caches[0].len[layer 1][row 1]): tokens [0, 13) do "
              "not fit the row's 3 pages (12 slots)");
        s = good;
        s.caches[2].start[0][0] = -1;
        CHECK_THAT(encode_error(s), Catch::StartsWith("byte 480 (caches[2].len[layer 0][row 0]): "
                                                      "length 3 / start -1 out of range"));
    }
    SECTION("cache parameters that contradict the kind") {
        SnapshotData s = good;
        s.caches[2].window = 0;
        CHECK(encode_error(s) ==
              "byte 460 (caches[2].window): a sliding-window cache needs a "
              "window of at least 1");
        s = good;
        s.caches[0].window = 4;
        CHECK(encode_error(s) ==
              "byte 236 (caches[0].window): window is 4, must be 0 for a dynamic cache");
        s = good;
        s.caches[1].batch_size = 0;
        CHECK_THAT(encode_error(s), Catch::StartsWith("byte 360 (caches[1].batch_size)"));
    }
    SECTION("a layout that cannot be a pool") {
        SnapshotData s = good;
        s.layout.block_size = 0;
        CHECK(encode_error(s) == "byte 60 (block_size): block_size must be at least 1");
    }
}

TEST_CASE("counts that disagree with section sizes are rejected, not read past", "[snapshot]") {
    const auto good = encode_snapshot(sample_snapshot(true));
    SECTION("a table count larger than its section") {
        auto b = good;
        put_le(b, 248, 1000000, 4);  // cache 0 row 0 claims a million blocks
        seal_snapshot(b);
        CHECK(decode_error(b) ==
              "byte 252 (caches[0].rows[0]): 1000000 x 4 bytes do not fit, "
              "the section CACH #0 ends at byte 344");
    }
    SECTION("a section longer than the payload") {
        auto b = good;
        put_le(b, 36, uint64_t(1) << 40, 8);
        seal_snapshot(b);
        CHECK_THAT(decode_error(b), Catch::StartsWith("byte 36 (section POOL length): "
                                                      "1099511627776 bytes run past the end"));
    }
    SECTION("a wrong section tag") {
        auto b = good;
        b[kCache0At] = 'K';
        seal_snapshot(b);
        CHECK(decode_error(b) == "byte 212 (section CACH #0 tag): expected 'CACH', found 'KACH'");
    }
    SECTION("more caches announced than present") {
        auto b = good;
        put_le(b, 44 + 80, 4, 4);
        seal_snapshot(b);
        CHECK(decode_error(b) == "byte 512 (section CACH #3 tag): expected 'CACH', found 'PAGE'");
    }
    SECTION("page contents without the flag") {
        auto b = good;
        put_le(b, 12, 0, 4);
        seal_snapshot(b);
        CHECK(decode_error(b) ==
              "byte 512 (section 'PAGE'): unexpected after the last section "
              "(flags say the file has no page contents)");
    }
    SECTION("a page id that is not in use") {
        auto b = good;
        put_le(b, 512 + 12 + 8 + 4 * 8, 10, 4);  // page_ids[8]: block 9 -> free block 10
        seal_snapshot(b);
        CHECK(decode_error(b) ==
              "byte 564 (page_ids[8]): block 10 is free, only blocks in use or "
              "evictable have contents");
    }
    SECTION("a block_bytes field that disagrees with the layout") {
        auto b = good;
        put_le(b, 44 + 40, 65, 8);
        seal_snapshot(b);
        CHECK(decode_error(b) == "byte 84 (block_bytes): 65 but the layout makes blocks of 64");
    }
}

TEST_CASE("a restored allocator hands out the same blocks in the same order", "[snapshot]") {
    BlockAllocator a(16);
    std::vector<BlockId> got;
    a.allocate(10, got);
    for (int i : {7, 2, 9, 0})
        a.release(got[size_t(i)]);
    a.retain(got[3]);
    const AllocatorState s = a.state();

    BlockAllocator b(16);
    b.restore(s);
    CHECK(b.state() == s);
    CHECK(b.counters().used_blocks == a.counters().used_blocks);
    CHECK(b.counters().shared_blocks == 1);
    CHECK(b.counters().peak_used_blocks == 10);
    std::vector<BlockId> from_a, from_b;
    a.allocate(8, from_a);
    b.allocate(8, from_b);
    CHECK(from_a == from_b);
    CHECK(from_b.front() == got[0]);  // released last: the top of the LIFO stack
}

TEST_CASE("BlockAllocator::restore refuses inconsistent state and changes nothing", "[snapshot]") {
    BlockAllocator a(4);
    std::vector<BlockId> got;
    a.allocate(1, got);
    AllocatorState s = a.state();
    BlockAllocator b(4);
    const AllocatorState before = b.state();
    auto rejected = [&](const AllocatorState& bad, const std::string& text) {
        try {
            b.restore(bad);
            FAIL("expected InvalidArgument");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::InvalidArgument);
            CHECK_THAT(e.what(), Catch::Contains(text));
        }
        CHECK(b.state() == before);
        CHECK(b.validate());
    };
    AllocatorState bad = s;
    bad.free_list.push_back(bad.free_list.front());
    rejected(bad, "is on the free list twice");
    bad = s;
    bad.refcounts[2] = 1;
    rejected(bad, "block 2 is on the free list but has refcount 1");
    bad = s;
    bad.allocations = 0;
    rejected(bad, "allocations 0 - releases 0 != 1 blocks in use");
    bad = s;
    bad.refcounts.pop_back();
    rejected(bad, "3 reference counts for a pool of 4 blocks");

    BlockTable t(b);  // a table holding blocks makes restoring meaningless
    std::vector<BlockId> one;
    b.allocate(1, one);
    t.adopt_back(one);
    CHECK_THROWS_WITH(b.restore(s), Catch::Contains("a registered block table holds 1 blocks"));
}

TEST_CASE("detailed stats count free runs, the refcount histogram and wasted slots", "[snapshot]") {
    const DetailedStats d = compute_detailed_stats(sample_snapshot(false));
    CHECK(d.num_blocks == 12);
    CHECK(d.used_blocks == 9);
    CHECK(d.free_blocks == 3);
    CHECK(d.shared_blocks == 2);
    CHECK(d.peak_used_blocks == 10);
    CHECK(d.references == 11);
    CHECK(d.free_runs == 2);  // {8} and {10, 11}
    CHECK(d.largest_free_run == 2);
    CHECK(d.refcount_histogram == std::vector<uint64_t>{3, 7, 2});
    CHECK(d.caches == 3);
    CHECK(d.rows == 4);
    CHECK(d.slots_held == 36);
    // Blocks 0 and 1 full (shared slots count once), 2: 2 slots, 3: 3, 4: 4, 5: 1, 6 and 7
    // (the spare row): 0, 9: slots 1 to 3.
    CHECK(d.tokens_stored == 21);
    CHECK(d.waste_slots == 15);
    CHECK(d.waste_fraction() == Approx(15.0 / 36.0));
}

namespace {

using test::cached_snapshot;

// Offsets in cached_snapshot(false): the PRFX section follows the one CACH section.
constexpr size_t kPrefixAt = 348;     // header 32 + POOL 100 + ALOC 12 + 76 + CACH 12 + 116
constexpr size_t kCachedAt = 368;     // + PRFX 12 + cached_count 8
constexpr size_t kEvictableAt = 396;  // + 5 cached x 4 + evictable_count 8
constexpr size_t kEntriesAt = 412;    // + 2 evictable x 4 + entry_count 8
constexpr size_t kEntryBytes = 40;    // block, parent, hash, salt, 4 token ids

std::vector<uint32_t> ids_of(const std::vector<BlockId>& blocks) {
    std::vector<uint32_t> out;
    for (BlockId b : blocks)
        out.push_back(index(b));
    return out;
}

// The entries by block id (a set: their order among siblings is not what these tests check).
std::vector<PrefixEntry> by_block(std::vector<PrefixEntry> e) {
    std::sort(e.begin(), e.end(),
              [](const PrefixEntry& a, const PrefixEntry& b) { return a.block < b.block; });
    return e;
}

}  // namespace

TEST_CASE("a snapshot keeps cached pages: cached and evictable blocks and the prefix entries",
          "[snapshot][prefix]") {
    for (bool pages : {false, true}) {
        INFO("pages " << pages);
        const SnapshotData s = cached_snapshot(pages);
        REQUIRE(check_snapshot(s) == "");
        CHECK(ids_of(s.allocator.cached) == std::vector<uint32_t>{0, 1, 2, 3, 5});
        CHECK(ids_of(s.allocator.evictable) == std::vector<uint32_t>{2, 1});
        REQUIRE(s.prefix.size() == 5);
        CHECK(s.prefix[0].parent == PrefixEntry::kNoParent);
        CHECK(s.prefix[1].salt == 7);
        // Evictable pages hold K/V a later hit reads: their bytes are saved with the rest.
        CHECK(s.page_blocks() == std::vector<uint32_t>{0, 1, 2, 3, 4, 5, 6});
        const auto bytes = encode_snapshot(s);
        CHECK(bytes.size() == (pages ? 612u + 12 + 8 + 7 * 4 + 7 * 64 : 612u));
        CHECK(get_le(bytes, 8, 4) == 2);                 // version
        CHECK(get_le(bytes, 12, 4) == (pages ? 3 : 2));  // flags: prefix cache (+ contents)
        CHECK(std::string(bytes.begin() + kPrefixAt, bytes.begin() + kPrefixAt + 4) == "PRFX");
        CHECK(get_le(bytes, kCachedAt - 8, 8) == 5);
        CHECK(get_le(bytes, kEvictableAt, 4) == 2);  // least recently released first
        CHECK(get_le(bytes, kEntriesAt - 8, 8) == 5);
        CHECK(get_le(bytes, kEntriesAt + 8, 8) == s.prefix[0].hash);
        CHECK(get_le(bytes, kEntriesAt + 24, 4) == 1);  // page 0's first token id
        if (pages) CHECK(std::string(bytes.begin() + 612, bytes.begin() + 616) == "PAGE");
        const SnapshotData back = decode_snapshot(bytes);
        CHECK(back == s);
        CHECK(encode_snapshot(back) == bytes);

        // The decoded state rebuilds an allocator and index that pass their own checks
        // (PrefixIndex::restore lists siblings in the reverse order; restore_snapshot
        // compensates, and its test compares the entries in order).
        BlockAllocator a(12);
        PrefixIndex index(a, 4);
        a.restore(back.allocator);
        index.restore(back.prefix);
        CHECK(a.state() == s.allocator);
        CHECK(by_block(index.entries()) == by_block(s.prefix));
        CHECK(index.check() == "");
        CHECK(a.counters().cached_blocks == 2);
        CHECK(a.counters().used_blocks == 5);
        CHECK(a.counters().free_blocks == 5);
    }
}

TEST_CASE("detailed stats tell cached pages from free ones", "[snapshot][prefix]") {
    const DetailedStats d = compute_detailed_stats(cached_snapshot(false));
    CHECK(d.used_blocks == 5);
    CHECK(d.free_blocks == 5);  // 7..11
    CHECK(d.cached_blocks == 2);
    CHECK(d.cached_held_blocks == 3);
    CHECK(d.prefix_entries == 5);
    CHECK(d.used_blocks + d.free_blocks + d.cached_blocks == d.num_blocks);
    CHECK(d.free_runs == 1);  // evictable 1 and 2 are not free
    CHECK(d.largest_free_run == 5);
    CHECK(d.refcount_histogram == std::vector<uint64_t>{7, 5});
    CHECK(d.tokens_stored == 15);
}

TEST_CASE("version-1 files still decode, without cached pages", "[snapshot][prefix]") {
    for (bool pages : {false, true}) {
        const SnapshotData s = sample_snapshot(pages);
        auto bytes = encode_snapshot(s);
        REQUIRE(get_le(bytes, 8, 4) == 1);  // no cached pages: written as version 1
        const SnapshotData back = decode_snapshot(bytes);
        CHECK(back == s);
        CHECK(back.allocator.cached.empty());
        CHECK(back.prefix.empty());
        CHECK(encode_snapshot(back) == bytes);
        // The same bytes as version 2 lack the flag version 2 always has.
        put_le(bytes, 8, 2, 4);
        seal_snapshot(bytes);
        CHECK(decode_error(bytes) ==
              "byte 12 (flags): a version-2 file without the prefix cache or layer groups flag "
              "(a pool without cached pages or layer windows is written as version 1)");
    }
    // Version 1 has no PRFX section: its flag is unknown there.
    auto bytes = encode_snapshot(cached_snapshot(false));
    put_le(bytes, 8, 1, 4);
    seal_snapshot(bytes);
    CHECK(decode_error(bytes) == "byte 12 (flags): unknown flag bits 0x2 in a version-1 file");
    // The snapshots of 0.1 checked in as fuzzer findings are version 1.
    const auto v1 = read_snapshot_file(std::string(PAGEDKV_FUZZ_FINDINGS) +
                                       "/../corpus/snapshot/mixed-f16.snap");
    REQUIRE(get_le(v1, 8, 4) == 1);
    const SnapshotData mixed = decode_snapshot(v1);
    CHECK(mixed.caches.size() == 3);
    CHECK(mixed.has_pages);
    CHECK(mixed.allocator.cached.empty());
}

TEST_CASE("truncations and bit flips of a snapshot with cached pages are rejected",
          "[snapshot][prefix]") {
    for (bool pages : {false, true}) {
        auto bytes = encode_snapshot(cached_snapshot(pages));
        for (size_t n = 0; n < bytes.size(); ++n) {
            INFO("truncated to " << n << " of " << bytes.size() << " bytes");
            REQUIRE_THAT(decode_error(std::span(bytes).first(n)), Catch::Contains("truncated"));
        }
        for (size_t i = 0; i < bytes.size(); ++i)
            for (int bit = 0; bit < 8; ++bit) {
                INFO("byte " << i << " bit " << bit);
                bytes[i] ^= uint8_t(1u << bit);
                const std::string e = decode_error(bytes);
                bytes[i] ^= uint8_t(1u << bit);
                REQUIRE_THAT(e, Catch::StartsWith("byte "));
                REQUIRE(e.find('\n') == std::string::npos);
            }
    }
}

TEST_CASE("inconsistent cached pages name the byte and field", "[snapshot][prefix]") {
    const SnapshotData good = cached_snapshot(false);
    auto entry_at = [](size_t i, size_t field) {
        return std::to_string(kEntriesAt + i * kEntryBytes + field);
    };
    SECTION("cached blocks out of order") {
        SnapshotData s = good;
        std::swap(s.allocator.cached[1], s.allocator.cached[2]);
        CHECK(encode_error(s) == "byte " + std::to_string(kCachedAt + 8) +
                                     " (cached[2]): block 1 is not above the one before it");
    }
    SECTION("a cached block out of range") {
        SnapshotData s = good;
        s.allocator.cached.back() = BlockId{40};
        CHECK(encode_error(s) == "byte " + std::to_string(kCachedAt + 16) +
                                     " (cached[4]): block 40 out of range, the pool has 12 "
                                     "blocks");
    }
    SECTION("an evictable block that is not cached") {
        SnapshotData s = good;
        s.allocator.cached.erase(s.allocator.cached.begin() + 2);  // block 2
        CHECK(encode_error(s) == "byte " + std::to_string(kEvictableAt - 4) +
                                     " (evictable[0]): block 2 is evictable but not cached");
    }
    SECTION("an evictable block that a row holds") {
        SnapshotData s = good;
        s.allocator.evictable.push_back(BlockId{3});
        CHECK(encode_error(s) == "byte " + std::to_string(kEvictableAt + 8) +
                                     " (evictable[2]): block 3 is evictable but has refcount 1");
    }
    SECTION("a cached block of no reference left off the evictable list") {
        SnapshotData s = good;
        s.allocator.evictable.pop_back();  // block 1
        CHECK(encode_error(s) == "byte " + std::to_string(kRefcountsAt + 4) +
                                     " (refcounts[1]): block 1 is cached with refcount 0 but not "
                                     "evictable");
    }
    SECTION("a hash that is not the hash of the page's tokens") {
        SnapshotData s = good;
        s.prefix[3].tokens[2] += 1;  // entry 3 is block 1
        CHECK_THAT(encode_error(s),
                   Catch::StartsWith("byte " + entry_at(3, 8) + " (prefix[3].hash): hash ") &&
                       Catch::Contains("of block 1, but its parent's hash, salt and tokens "
                                       "hash to"));
        s = good;
        s.prefix[1].salt = 8;
        CHECK_THAT(encode_error(s),
                   Catch::StartsWith("byte " + entry_at(1, 8) + " (prefix[1].hash)"));
    }
    SECTION("a page before its parent") {
        SnapshotData s = good;
        std::swap(s.prefix[3], s.prefix[4]);  // block 2 before its parent 1
        CHECK(encode_error(s) == "byte " + entry_at(3, 4) +
                                     " (prefix[3].parent): parent block 1 of block 2 is not an "
                                     "entry before it (each page comes after its parent)");
        s = good;
        s.prefix[0].parent = 0;  // its own parent
        CHECK_THAT(encode_error(s), Catch::StartsWith("byte " + entry_at(0, 4) +
                                                      " (prefix[0].parent): parent block 0"));
    }
    SECTION("a cached block without an entry, an entry for a block not cached") {
        SnapshotData s = good;
        s.prefix.pop_back();  // block 2's
        CHECK(encode_error(s) == "byte " + std::to_string(kCachedAt + 8) +
                                     " (cached[2]): block 2 is cached but has no prefix entry");
        s = good;
        s.prefix[1].block = BlockId{4};
        s.prefix[1].hash = PrefixIndex::hash_page(PrefixIndex::kRootHash, 7, s.prefix[1].tokens);
        CHECK(encode_error(s) == "byte " + entry_at(1, 0) +
                                     " (prefix[1].block): block 4 has an entry but is not "
                                     "cached");
    }
    SECTION("two entries for one block, or one hash twice") {
        SnapshotData s = good;
        s.prefix[1].block = BlockId{0};
        CHECK(encode_error(s) == "byte " + entry_at(1, 0) +
                                     " (prefix[1].block): block 0 has two entries (also "
                                     "prefix[0])");
        s = good;
        s.prefix[1].salt = 0;  // block 5 now names the same page as block 0
        s.prefix[1].hash = s.prefix[0].hash;
        CHECK_THAT(encode_error(s),
                   Catch::StartsWith("byte " + entry_at(1, 8) + " (prefix[1].hash): hash ") &&
                       Catch::EndsWith("of block 5 is also prefix[0]'s"));
    }
    SECTION("page contents of an evictable block missing") {
        SnapshotData s = cached_snapshot(true);
        auto b = encode_snapshot(s);
        const size_t ids = 612 + 12 + 8;
        put_le(b, ids + 4, 7, 4);  // page_ids[1]: evictable block 1 -> free block 7
        seal_snapshot(b);
        CHECK(decode_error(b) == "byte " + std::to_string(ids + 4) +
                                     " (page_ids[1]): block 7 is free, only blocks in use or "
                                     "evictable have contents");
    }
    SECTION("counts that do not fit the section") {
        auto b = encode_snapshot(good);
        put_le(b, kEntriesAt - 8, 6, 8);  // one entry more than there is
        seal_snapshot(b);
        CHECK(decode_error(b) == "byte " + std::to_string(kEntriesAt) +
                                     " (prefix): 6 x 40 bytes do not fit, the section PRFX ends "
                                     "at byte 612");
        b = encode_snapshot(good);
        put_le(b, kCachedAt - 8, 13, 8);
        seal_snapshot(b);
        CHECK(decode_error(b) == "byte " + std::to_string(kCachedAt - 8) +
                                     " (cached_count): 13 cached blocks in a pool of 12");
        put_le(b, kCachedAt - 8, 1000, 8);
        seal_snapshot(b);
        CHECK(decode_error(b) == "byte " + std::to_string(kCachedAt) +
                                     " (cached): 1000 x 4 bytes do not fit, the section PRFX "
                                     "ends at byte 612");
    }
}

// Layer groups (PoolConfig::layer_windows): the LAYR section and each row's group tables.
namespace {
// Offsets in hybrid_snapshot(false): header 32, POOL 12 + 88, LAYR 12 + 4 + 4 x 4, ALOC 12 +
// 12 x 4 + 8 + 5 x 4, CACH #0 12 + 24, row tables 2 x (4 + 3 x 4), len/start 4 x 2 x 16, group
// tables 2 x (4 + 2 x 4), dropped 4 x 2 x 8.
constexpr size_t kLayrAt = 132;
constexpr size_t kModelLayersAt = 144;
constexpr size_t kHybridCacheAt = 252;
constexpr size_t kHybridLengthsAt = 320;
constexpr size_t kGroupTablesAt = 448;
constexpr size_t kDroppedAt = 472;
constexpr size_t kHybridBytes = 536;
}  // namespace

TEST_CASE("a hybrid pool's snapshot keeps its layer windows, group tables and dropped counts",
          "[snapshot][hybrid]") {
    for (bool pages : {false, true}) {
        INFO("pages " << pages);
        const SnapshotData s = test::hybrid_snapshot(pages);
        REQUIRE(check_snapshot(s) == "");
        const auto bytes = encode_snapshot(s);
        CHECK(get_le(bytes, 8, 4) == 2);                   // layer groups: version 2
        CHECK(get_le(bytes, 12, 4) == (pages ? 5u : 4u));  // the layer groups flag
        CHECK(std::string(bytes.begin() + kLayrAt, bytes.begin() + kLayrAt + 4) == "LAYR");
        CHECK(get_le(bytes, kLayrAt + 4, 8) == 20);
        CHECK(get_le(bytes, kModelLayersAt, 4) == 4);
        CHECK(get_le(bytes, kModelLayersAt + 8, 4) == 4);  // layer 1's window
        CHECK(get_le(bytes, 44, 4) == 2);                  // POOL's num_layers: a page's
        CHECK(std::string(bytes.begin() + kHybridCacheAt, bytes.begin() + kHybridCacheAt + 4) ==
              "CACH");
        CHECK(get_le(bytes, kGroupTablesAt, 4) == 2);  // row 0's group 1 table: [3 4]
        CHECK(get_le(bytes, kGroupTablesAt + 4, 4) == 3);
        CHECK(get_le(bytes, kDroppedAt + 16, 8) == 6);  // layer 1, row 0
        if (!pages) CHECK(bytes.size() == kHybridBytes);
        const SnapshotData back = decode_snapshot(bytes);
        CHECK(back == s);
        CHECK(back.model_layers() == 4);
        CHECK(back.groups().num_groups() == 2);
        CHECK(encode_snapshot(back) == bytes);
        // Every truncation is refused with one line.
        for (size_t n = 0; n < bytes.size(); ++n) {
            INFO("truncated to " << n);
            const std::string e = decode_error(std::span(bytes).first(n));
            REQUIRE_THAT(e, Catch::Contains("truncated"));
            REQUIRE(e.find('\n') == std::string::npos);
        }
    }
    // Detailed stats find each layer's tokens in its group's table: the full layers' in
    // pages 0 1 (both rows) and 2 or 5 (2 and 3 tokens), the sliding layers' at slots 2..5 of
    // row 0's [3 4] and 3..6 of row 1's [3 6] (page 3: slots 2 and 3).
    const std::vector<uint32_t> used = slots_in_use(test::hybrid_snapshot(false));
    CHECK(used == std::vector<uint32_t>{4, 4, 2, 2, 2, 3, 3, 0, 0, 0, 0, 0});
}

TEST_CASE("a pool without layer windows writes the bytes it wrote before groups", "[snapshot]") {
    // No LAYR section, no flag, no group tables: the sizes of before.
    CHECK(encode_snapshot(sample_snapshot(false)).size() == 512);
    CHECK(get_le(encode_snapshot(sample_snapshot(true)), 12, 4) == 1);
    CHECK(get_le(encode_snapshot(test::cached_snapshot(false)), 12, 4) == 2);
}

TEST_CASE("a corrupt or inconsistent layer groups section names the byte and field",
          "[snapshot][hybrid]") {
    const SnapshotData good = test::hybrid_snapshot(false);
    const auto bytes = encode_snapshot(good);
    auto edited = [&](size_t at, uint64_t v, int n) {
        auto b = bytes;
        put_le(b, at, v, n);
        seal_snapshot(b);
        return decode_error(b);
    };
    SECTION("a model layer count larger than the section") {
        CHECK(edited(kModelLayersAt, 1000000, 4) ==
              "byte 148 (layer_windows): 1000000 x 4 bytes do not fit, the section LAYR ends at "
              "byte 164");
    }
    SECTION("fewer model layers than the section holds") {
        CHECK(edited(kModelLayersAt, 3, 4) ==
              "byte 160 (section LAYR): 4 bytes left over after its last field");
    }
    SECTION("no model layers") {
        CHECK(edited(kModelLayersAt, 0, 4) ==
              "byte 144 (model_layers): 0 layers, a model has at least 1");
    }
    SECTION("windows that make pages of another size") {
        // {0, 4, 5, 0}: three kinds, one layer each of the sliding ones: pages of 1 layer.
        CHECK(edited(kModelLayersAt + 12, 5, 4) ==
              "byte 44 (num_layers): a page holds 2 layers, but 4 layers with these windows "
              "make pages of 1");
    }
    SECTION("a window out of range") {
        CHECK_THAT(edited(kModelLayersAt + 8, 0x80000000u, 4),
                   Catch::StartsWith("byte 148 (layer_windows): layer_windows[1] is 2147483648"));
    }
    SECTION("the flag without the section") {
        auto b = encode_snapshot(sample_snapshot(false));
        put_le(b, 8, 2, 4);
        put_le(b, 12, 4, 4);
        seal_snapshot(b);
        CHECK(decode_error(b) == "byte 132 (section LAYR tag): expected 'LAYR', found 'ALOC'");
    }
    SECTION("version 1 does not know the flag") {
        CHECK(edited(8, 1, 4) == "byte 12 (flags): unknown flag bits 0x4 in a version-1 file");
    }
    SECTION("a group table count larger than its section") {
        CHECK(edited(kGroupTablesAt, 1000000, 4) ==
              "byte 452 (caches[0].rows[0].group[1]): 1000000 x 4 bytes do not fit, the section "
              "CACH #0 ends at byte 536");
    }
    SECTION("a group table one block shorter misreads what follows, not past the section") {
        CHECK(edited(kGroupTablesAt, 1, 4) ==
              "byte 476 (caches[0].dropped): 8 x 8 bytes do not fit, the section CACH #0 ends at "
              "byte 536");
    }
    SECTION("a block of a group table that the refcounts do not count") {
        CHECK(edited(kGroupTablesAt + 8, 7, 4) ==
              "byte 192 (refcounts[4]): block 4 has refcount 1 but the block tables reference "
              "it 0 times");
    }
    SECTION("a group table block out of range") {
        CHECK(edited(kGroupTablesAt + 4, 99, 4) ==
              "byte 452 (caches[0].rows[0].group[1][0]): block 99 out of range, the pool has 12 "
              "blocks");
    }
    SECTION("a sliding layer's tokens past its group's pages") {
        // Layer 1, row 0: start 2 + 7 tokens > the 8 slots of [3 4].
        CHECK(edited(kHybridLengthsAt + 32, 7, 8) ==
              "byte 352 (caches[0].len[layer 1][row 0]): tokens [2, 9) do not fit the row's "
              "group 1 table's 2 pages (8 slots)");
    }
    SECTION("a negative dropped count") {
        CHECK(edited(kDroppedAt + 16, uint64_t(-1), 8) ==
              "byte 488 (caches[0].dropped[layer 1][row 0]): -1 tokens let go, with 4 held out "
              "of range [0, 2147483647]");
    }
    SECTION("assembled data: shapes and kinds") {
        SnapshotData s = good;
        s.caches[0].more.pop_back();
        CHECK(check_snapshot(s) == "caches[0].more: group tables for 1 rows, the cache has 2");
        s = good;
        s.caches[0].more[1].clear();
        CHECK(check_snapshot(s) ==
              "caches[0].rows[1]: 0 tables of groups 1.., the pool has 2 groups");
        s = good;
        s.caches[0].dropped.pop_back();
        CHECK(check_snapshot(s) ==
              "caches[0].dropped: dropped counts for 3 layers, the pool has 4");
        s = sample_snapshot(false);
        s.caches[0].dropped = {{0, 0}, {0, 0}};
        CHECK(check_snapshot(s) ==
              "caches[0].more: group tables or dropped counts without layer_windows");
        s = good;
        s.caches[0].kind = SnapshotCacheKind::Static;
        s.caches[0].batch_size = 2;
        s.caches[0].max_cache_len = 12;
        CHECK_THAT(check_snapshot(s), Catch::Contains("static caches refuse layer groups"));
        s = good;
        s.layer_windows = {0, 4, 4};
        CHECK(check_snapshot(s) ==
              "num_layers: a page holds 2 layers, but 3 layers with these windows make pages "
              "of 1");
    }
}
