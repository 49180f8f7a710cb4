// Sample snapshots made on the CPU with the real allocator (no GPU), for the format, decoder
// and pagedkv-dump tests: every cache kind, shared pages, a spare row, a fragmented free list;
// a pool with prefix caching (held and evictable cached pages, a salted page); and a hybrid
// model's pool (layer groups).
#pragma once

#include <random>

#include "allocator/block_table.hpp"
#include "allocator/prefix_index.hpp"
#include "cache/snapshot/snapshot_data.hpp"

namespace pagedkv::test {

// Random bytes for the page contents of s (SnapshotData::page_blocks()).
inline void fill_pages(SnapshotData& s, uint32_t seed) {
    s.has_pages = true;
    s.pages.resize(s.page_blocks().size() * s.layout.block_bytes());
    std::mt19937 rng(seed);
    for (uint8_t& b : s.pages)
        b = uint8_t(rng());
}

// The samples' pool: 12 blocks of 4 tokens, 2 layers, one kv head of 2, f16.
inline SnapshotLayout sample_layout() {
    SnapshotLayout l;
    l.num_layers = 2;
    l.num_kv_heads = 1;
    l.head_dim = 2;
    l.v_head_dim = 2;
    l.block_size = 4;
    l.dtype = DType::F16;
    l.num_blocks = 12;
    return l;
}

// 12 blocks of 4 tokens, 2 layers, 64 bytes a block. Worked out by hand (see the detailed
// stats test): blocks 0 and 1 are shared by the dynamic cache's two rows, 8, 10 and 11 free.
//   cache 0 dynamic: row 0 [0 1 2] len 10/9, row 1 [0 1 3] len 11/11
//   cache 1 static (batch_size 2, max_cache_len 6): row 0 [4 5] len 5/5, spare [6 7]
//   cache 2 sliding (window 6): row 0 [9] len 3/3 from slot 1
inline SnapshotData sample_snapshot(bool with_pages) {
    SnapshotData s;
    s.layout = sample_layout();
    BlockAllocator a(12);
    std::vector<BlockId> got;
    auto take = [&](uint64_t n) {
        got.clear();
        a.allocate(n, got);
        return got;
    };
    BlockTable r0(a);
    r0.adopt_back(take(3));  // 0 1 2
    BlockTable r1 = r0.fork();
    r1.release_back(1);
    r1.adopt_back(take(1));  // 0 1 3
    BlockTable st0(a), spare(a);
    auto four = take(4);  // 4 5 6 7
    st0.adopt_back(std::span(four).first(2));
    spare.adopt_back(std::span(four).subspan(2));
    auto temp = take(2);  // 8 9, returned so the free list is no longer in id order
    a.release(temp[0]);
    a.release(temp[1]);
    BlockTable sw(a);
    sw.adopt_back(take(1));  // 9
    s.allocator = a.state();
    s.pages_copied = 5;

    auto ids = [](const BlockTable& t) { return t.blocks(); };
    SnapshotCache dyn;
    dyn.rows = {ids(r0), ids(r1)};
    dyn.len = {{10, 11}, {9, 11}};
    dyn.start = {{0, 0}, {0, 0}};
    SnapshotCache stat;
    stat.kind = SnapshotCacheKind::Static;
    stat.batch_size = 2;
    stat.max_cache_len = 6;
    stat.rows = {ids(st0)};
    stat.spare = {ids(spare)};
    stat.len = {{5}, {5}};
    stat.start = {{0}, {0}};
    SnapshotCache slide;
    slide.kind = SnapshotCacheKind::SlidingWindow;
    slide.window = 6;
    slide.rows = {ids(sw)};
    slide.len = {{3}, {3}};
    slide.start = {{1}, {1}};
    s.caches = {dyn, stat, slide};
    if (with_pages) fill_pages(s, 7);
    return s;
}

// 12 blocks of 4 tokens, 2 layers, prefix caching on (the real allocator and PrefixIndex).
// A sequence of pages 0 1 2 (tokens 1..12) ended; a second one shares page 0 and went on in
// pages 3 (cached, a sibling of 1) and 4 (partial); a third, under salt 7, holds 5 (cached,
// the same tokens as 0) and 6 (partial). 7 was taken and given back.
//   cached 0 1 2 3 5; evictable 2 1 (the ended sequence released its tail first);
//   entries 0, 5, then 0's children 3 and 1 (newest first), then 2.
//   cache 0 dynamic: row 0 [0 3 4] len 10, row 1 [5 6] len 5
inline SnapshotData cached_snapshot(bool with_pages) {
    SnapshotData s;
    s.layout = sample_layout();
    BlockAllocator a(12);
    PrefixIndex index(a, 4);  // destroyed before a
    std::vector<BlockId> got;
    auto take = [&](uint64_t n) {
        got.clear();
        a.allocate(n, got);
        return got;
    };
    auto page = [](int32_t first) {
        return std::vector<int32_t>{first, first + 1, first + 2, first + 3};
    };
    constexpr uint32_t kRoot = PrefixEntry::kNoParent;
    BlockTable ended(a);
    ended.adopt_back(take(3));  // 0 1 2
    index.insert(BlockId{0}, kRoot, 0, page(1));
    index.insert(BlockId{1}, 0, 0, page(5));
    index.insert(BlockId{2}, 1, 0, page(9));
    BlockTable shares = ended.fork();
    shares.release_back(2);
    shares.adopt_back(take(1));  // 3
    index.insert(BlockId{3}, 0, 0, page(13));
    shares.adopt_back(take(1));  // 4, partial
    BlockTable salted(a);
    salted.adopt_back(take(2));  // 5 6
    index.insert(BlockId{5}, kRoot, 7, page(1));
    a.release(take(1)[0]);  // 7
    ended.release_all();    // 2, then 1, become evictable; 0 stays with `shares`
    s.allocator = a.state();
    s.prefix = index.entries();
    s.pages_copied = 0;
    SnapshotCache dyn;
    dyn.rows = {shares.blocks(), salted.blocks()};
    dyn.len = {{10, 5}, {10, 5}};
    dyn.start = {{0, 0}, {0, 0}};
    s.caches = {dyn};
    if (with_pages) fill_pages(s, 13);
    return s;
}

// The pool of the README's picture (pagedkv-dump --svg): 32 blocks of 4 tokens, 2 layers, every
// kind of page a dump shows. One allocation after the other:
//   cache 0 dynamic, three forked sequences (parallel sampling): row 0 [0 1 2 3] len 13; row 1
//     forked from it, its partial last page copied on write: [0 1 2 4] len 14; row 2 forked
//     from row 1: [0 1 2 4 5] len 18. Pages 0 1 2 are shared three ways, 4 two ways.
//   6 and 7 taken and given back: the free list is 7 6 31 30 ... 23, top first.
//   cache 1 dynamic, cropped from the front: row 0 [8 9 10], tokens from slot 3, len 9.
//   cache 2 sliding (window 8): row 0 [11 12 13], tokens from slot 2, len 8.
//   cache 3 static (batch_size 3, max_cache_len 12): row 0 [14 15 16] len 6 (16 reserved, no
//     token), row 1 [17 18 19] len 0 (all reserved), spare [20 21 22].
inline SnapshotData showcase_snapshot() {
    SnapshotData s;
    s.layout = sample_layout();
    s.layout.num_blocks = 32;
    BlockAllocator a(32);
    std::vector<BlockId> got;
    auto take = [&](uint64_t n) {
        got.clear();
        a.allocate(n, got);
        return got;
    };
    BlockTable b0(a);
    b0.adopt_back(take(4));  // 0 1 2 3
    BlockTable b1 = b0.fork();
    b1.release_back(1);
    b1.adopt_back(take(1));  // 0 1 2 4
    BlockTable b2 = b1.fork();
    b2.adopt_back(take(1));     // 0 1 2 4 5
    const auto temp = take(2);  // 6 7
    BlockTable cropped(a);
    cropped.adopt_back(take(3));  // 8 9 10
    BlockTable sliding(a);
    sliding.adopt_back(take(3));  // 11 12 13
    BlockTable st0(a), st1(a), spare(a);
    const auto nine = take(9);  // 14 .. 22
    st0.adopt_back(std::span(nine).first(3));
    st1.adopt_back(std::span(nine).subspan(3, 3));
    spare.adopt_back(std::span(nine).subspan(6));
    a.release(temp[0]);
    a.release(temp[1]);
    s.allocator = a.state();
    s.pages_copied = 1;

    SnapshotCache beams;
    beams.rows = {b0.blocks(), b1.blocks(), b2.blocks()};
    beams.len = {{13, 14, 18}, {13, 14, 18}};
    beams.start = {{0, 0, 0}, {0, 0, 0}};
    SnapshotCache crop;
    crop.rows = {cropped.blocks()};
    crop.len = {{9}, {9}};
    crop.start = {{3}, {3}};
    SnapshotCache slide;
    slide.kind = SnapshotCacheKind::SlidingWindow;
    slide.window = 8;
    slide.rows = {sliding.blocks()};
    slide.len = {{8}, {8}};
    slide.start = {{2}, {2}};
    SnapshotCache stat;
    stat.kind = SnapshotCacheKind::Static;
    stat.batch_size = 3;
    stat.max_cache_len = 12;
    stat.rows = {st0.blocks(), st1.blocks()};
    stat.spare = {spare.blocks()};
    stat.len = {{6, 0}, {6, 0}};
    stat.start = {{0, 0}, {0, 0}};
    s.caches = {beams, crop, slide, stat};
    return s;
}

// A large pool for the compact picture: `blocks` pages of 16 tokens, one dynamic cache of
// `rows` rows holding three quarters of them. Every fourth row, from the second on, is forked
// from the row before it (sharing all its pages) and grown by half as many; every fourth, from
// the fourth on, starts at slot 7 (slid); the rest of the pool is free.
inline SnapshotData large_snapshot(uint32_t blocks, uint32_t rows) {
    SnapshotData s;
    s.layout = sample_layout();
    s.layout.block_size = 16;
    s.layout.num_blocks = blocks;
    BlockAllocator a(blocks);
    std::vector<BlockId> got;
    auto take = [&](uint64_t n) {
        got.clear();
        a.allocate(n, got);
        return got;
    };
    const uint32_t per = blocks * 3 / 4 / rows;
    std::vector<BlockTable> tables;
    tables.reserve(rows);
    SnapshotCache dyn;
    dyn.len.resize(2);
    dyn.start.resize(2);
    for (uint32_t r = 0; r < rows; ++r) {
        if (r % 4 == 1) {
            tables.push_back(tables.back().fork());
            tables.back().adopt_back(take(per / 2));
        } else {
            tables.emplace_back(a);
            tables.back().adopt_back(take(per));
        }
        const int64_t start = r % 4 == 3 ? 7 : 0;
        const int64_t len = int64_t(tables.back().size()) * 16 - start - 3;
        for (int l = 0; l < 2; ++l) {
            dyn.len[size_t(l)].push_back(len);
            dyn.start[size_t(l)].push_back(start);
        }
        dyn.rows.push_back(tables.back().blocks());
    }
    s.allocator = a.state();
    s.caches = {dyn};
    return s;
}

// A hybrid model's pool (layer_windows {0, 4, 4, 0}): layers 0 and 3 full attention (group 0),
// 1 and 2 a sliding window of 4 (group 1); a page holds one group's 2 layers, so the layout is
// sample_layout's. 12 blocks of 4 tokens. One dynamic cache (as a KVManager is recorded):
//   row 0: group 0 [0 1 2], full layers 10 tokens; group 1 [3 4], sliding layers the last 4
//          (6 let go) from slot 2
//   row 1: forked from row 0, group 0 [0 1 5] 11 tokens; group 1 [3 6], the last 4 (7 let go)
//          from slot 3
// 7..11 free.
inline SnapshotData hybrid_snapshot(bool with_pages) {
    SnapshotData s;
    s.layout = sample_layout();
    s.layer_windows = {0, 4, 4, 0};
    BlockAllocator a(12);
    std::vector<BlockId> got;
    auto take = [&](uint64_t n) {
        got.clear();
        a.allocate(n, got);
        return got;
    };
    BlockTable t0(a), u0(a);
    t0.adopt_back(take(3));  // 0 1 2
    u0.adopt_back(take(2));  // 3 4
    BlockTable t1 = t0.fork(), u1 = u0.fork();
    t1.release_back(1);
    t1.adopt_back(take(1));  // 0 1 5
    u1.release_back(1);
    u1.adopt_back(take(1));  // 3 6
    s.allocator = a.state();
    SnapshotCache dyn;
    dyn.rows = {t0.blocks(), t1.blocks()};
    dyn.more = {{u0.blocks()}, {u1.blocks()}};
    dyn.len = {{10, 11}, {4, 4}, {4, 4}, {10, 11}};
    dyn.start = {{0, 0}, {2, 3}, {2, 3}, {0, 0}};
    dyn.dropped = {{0, 0}, {6, 7}, {6, 7}, {0, 0}};
    s.caches = {dyn};
    if (with_pages) fill_pages(s, 17);
    return s;
}

// sample_snapshot's pool and caches over quantized pages (dtype Int8 or FP8E4M3, head dims of
// 4: a block of 2 layers x K and V x 4 slots x (4 codes + a 4-byte scale) = 128 bytes).
inline SnapshotData quantized_snapshot(DType dtype, bool with_pages) {
    SnapshotData s = sample_snapshot(false);
    s.layout.dtype = dtype;
    s.layout.head_dim = 4;
    s.layout.v_head_dim = 4;
    if (with_pages) fill_pages(s, 21);
    return s;
}

}  // namespace pagedkv::test
