// Sample snapshots made on the CPU with the real allocator (no GPU), for the format, decoder
// and pagedkv-dump tests: every cache kind, shared pages, a spare row, a fragmented free list.
#pragma once

#include <random>

#include "allocator/block_table.hpp"
#include "cache/snapshot/snapshot_data.hpp"

namespace pagedkv::test {

// 12 blocks of 4 tokens, 2 layers, 64 bytes a block. Worked out by hand (see the detailed
// stats test): blocks 0 and 1 are shared by the dynamic cache's two rows, 8, 10 and 11 free.
//   cache 0 dynamic: row 0 [0 1 2] len 10/9, row 1 [0 1 3] len 11/11
//   cache 1 static (batch_size 2, max_cache_len 6): row 0 [4 5] len 5/5, spare [6 7]
//   cache 2 sliding (window 6): row 0 [9] len 3/3 from slot 1
inline SnapshotData sample_snapshot(bool with_pages) {
    SnapshotData s;
    s.layout.num_layers = 2;
    s.layout.num_kv_heads = 1;
    s.layout.head_dim = 2;
    s.layout.v_head_dim = 2;
    s.layout.block_size = 4;
    s.layout.dtype = DType::F16;
    s.layout.num_blocks = 12;
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
    if (with_pages) {
        s.has_pages = true;
        s.pages.resize(s.used_blocks() * s.layout.block_bytes());
        std::mt19937 rng(7);
        for (uint8_t& b : s.pages)
            b = uint8_t(rng());
    }
    return s;
}

}  // namespace pagedkv::test
