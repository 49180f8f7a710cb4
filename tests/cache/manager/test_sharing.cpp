// Batch operations copy no K/V: rows share pages and a page is copied only when one of its
// sharers writes into it. Plus crop, truncate and insert.
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

TEST_CASE(
    "forking a 2,000-token row copies nothing and the first step copies only the partial page",
    "[sharing][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 16, 16, 1024));
        for (uint32_t prompt : {2000u, 2008u}) {
            DYNAMIC_SECTION(to_string(dtype) << ", prompt " << prompt) {
                DynamicKVCache cache(pool);
                CacheHarness h(g.ctx, pool, cache, 7);
                for (uint32_t l = 0; l < 2; ++l)
                    h.append(1, prompt, l);
                const uint64_t prompt_pages = (prompt + 15) / 16;
                REQUIRE(pool.stats().used_blocks == prompt_pages);
                cache.batch_repeat_interleave(4);
                h.ref.repeat_interleave(4);
                CHECK(pool.stats().used_blocks == prompt_pages);
                CHECK(pool.stats().pages_copied == 0);
                CHECK(pool.stats().shared_blocks == prompt_pages);
                for (uint32_t l = 0; l < 2; ++l)
                    h.append(4, 1, l);
                const bool partial = prompt % 16 != 0;
                // Three of four sharers copy the partial last page; the fourth writes in place.
                CHECK(pool.stats().pages_copied == (partial ? 3 : 0));
                CHECK(pool.stats().used_blocks == prompt_pages + (partial ? 3 : 4));
                const int beams[] = {2, 2, 0, 1};
                cache.reorder_cache(beams);
                h.ref.select({2, 2, 0, 1});
                for (uint32_t l = 0; l < 2; ++l)
                    h.append(4, 1, l);
                h.check();
            }
        }
    }
}

TEST_CASE("beam search over a 2,000-token prompt shares the prompt's pages", "[sharing][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 1, 1, 8, 16, 1024));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 8);
        h.append(1, 2000, 0);
        cache.batch_repeat_interleave(4);
        h.ref.repeat_interleave(4);
        std::mt19937 rng(8);
        uint64_t peak = 0;
        for (int step = 0; step < 64; ++step) {
            h.append(4, 1, 0);
            std::vector<int32_t> beams(4);
            for (auto& b : beams)
                b = int32_t(rng() % 4);
            cache.reorder_cache(beams);
            h.ref.select(beams);
            peak = std::max(peak, pool.stats().used_blocks);
        }
        h.check();
        const uint64_t copied_design = 4 * ((2000 + 64 + 15) / 16);  // every beam its own pages
        WARN("4-beam search, 2,000-token prompt, 64 steps: peak "
             << peak << " pages shared vs " << copied_design << " copied ("
             << 100 - 100 * peak / copied_design << "% saved), " << pool.stats().pages_copied
             << " page copies");
        CHECK(peak < copied_design / 2);
    }
}

TEST_CASE("crop keeps the most recent tokens and releases whole leading pages", "[crop][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F32, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 9);
        const std::vector<std::vector<int64_t>> pos{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
                                                    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 20}};
        for (uint32_t l = 0; l < 2; ++l)
            h.write(2, 13, l, pos, pos);
        const auto before = cache.block_table(0);
        cache.crop(6);
        h.ref.crop(6);
        h.check();
        // Row 0 held 13 tokens in 4 pages; its last 6 start at slot 7: page 0 goes back.
        CHECK(cache.block_table(0) == std::vector<uint32_t>(before.begin() + 1, before.end()));
        for (uint32_t l = 0; l < 2; ++l)
            h.append(2, 3, l);
        h.check();
        cache.crop(100);  // longer than every row: nothing changes
        h.check();
    }
}

TEST_CASE("truncate keeps the first tokens and a negative length rolls back", "[truncate][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::BF16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 10);
        for (uint32_t l = 0; l < 2; ++l)
            h.append(3, 11, l);
        cache.truncate(-3);  // speculative decoding rejected three drafted tokens
        h.ref.truncate(-3);
        h.check();
        CHECK(pool.stats().used_blocks == 3 * 2);
        cache.truncate(5);
        h.ref.truncate(5);
        h.check();
        for (uint32_t l = 0; l < 2; ++l)
            h.append(3, 2, l);
        h.check();
        cache.truncate(-100);
        h.ref.truncate(-100);
        h.check();
        CHECK(pool.stats().used_blocks == 0);
    }
}

TEST_CASE("insert shares a prefilled row with a running batch", "[insert][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        DynamicKVCache batch(pool), single(pool);
        CacheHarness hb(g.ctx, pool, batch, 11), hs(g.ctx, pool, single, 12);
        for (uint32_t l = 0; l < 2; ++l) {
            hb.append(2, 5, l);
            hs.append(1, 7, l);
        }
        const uint64_t used = pool.stats().used_blocks;
        batch.insert(single, 0, 2);  // append as row 2
        hb.ref.insert(hs.ref, 0, 2);
        CHECK(pool.stats().used_blocks == used);
        CHECK(batch.block_table(2) == single.block_table(0));
        single.reset();  // the batch keeps the pages alive
        hs.ref.reset();
        for (uint32_t l = 0; l < 2; ++l)
            hb.append(3, 2, l);
        hb.check();
        // Replace row 0 with a new request.
        for (uint32_t l = 0; l < 2; ++l)
            hs.append(1, 3, l);
        batch.insert(single, 0, 0);
        hb.ref.insert(hs.ref, 0, 0);
        hb.check();
        require_rejected(batch, ErrorCode::InvalidArgument,
                         "insert: slot 5 out of range, batch is 3 (use 3 to append)",
                         [&] { batch.insert(single, 0, 5); });
        require_rejected(batch, ErrorCode::InvalidArgument,
                         "insert: other_row 1 out of range, the other cache has 1 rows",
                         [&] { batch.insert(single, 1, 0); });
        require_rejected(batch, ErrorCode::InvalidArgument,
                         "insert: a cache cannot insert its own row",
                         [&] { batch.insert(batch, 0, 1); });
        BlockPool other_pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 8));
        DynamicKVCache foreign(other_pool);
        require_rejected(batch, ErrorCode::InvalidArgument,
                         "insert: the other cache must be a paged cache over the same pool",
                         [&] { batch.insert(foreign, 0, 0); });
    }
}

TEST_CASE("insert into or from a static cache copies the tokens", "[insert][static][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F32, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        StaticKVCache fixed(pool, 2, 12);
        DynamicKVCache dyn(pool);
        CacheHarness hf(g.ctx, pool, fixed, 13), hd(g.ctx, pool, dyn, 14);
        hf.ref.set_batch(2);
        for (uint32_t l = 0; l < 2; ++l) {
            hf.append(2, 4, l);
            hd.append(1, 9, l);
        }
        dyn.crop(6);  // the dynamic row now starts mid-page
        hd.ref.crop(6);
        fixed.insert(dyn, 0, 1);
        hf.ref.insert(hd.ref, 0, 1);
        hf.check();
        CHECK(pool.stats().shared_blocks == 0);
        for (uint32_t l = 0; l < 2; ++l)
            hf.append(2, 6, l);  // row 1 reaches 12: still fits
        hf.check();
        DynamicKVCache other(pool);
        CacheHarness ho(g.ctx, pool, other, 15);
        other.insert(fixed, 1, 0);
        ho.ref.insert(hf.ref, 1, 0);
        ho.check();
        CHECK(pool.stats().shared_blocks == 0);
        auto kv = hd.make_kv(1, 20);
        dyn.update(kv.tk, kv.tv, 0);
        require_rejected(fixed, ErrorCode::CapacityExceeded,
                         "StaticKVCache: a row would hold 26 tokens, max_cache_len is 12",
                         [&] { fixed.insert(dyn, 0, 0); });
        require_rejected(fixed, ErrorCode::CapacityExceeded,
                         "insert: slot 2 is past this cache's batch_size 2",
                         [&] { fixed.insert(dyn, 0, 2); });
    }
}

TEST_CASE("batch operations reject bad indices and change nothing", "[sharing][errors][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 16);
        for (uint32_t l = 0; l < 2; ++l)
            h.append(3, 5, l);
        const int short_list[] = {0, 1};
        require_rejected(cache, ErrorCode::InvalidArgument,
                         "reorder_cache: 2 indices for a batch of 3",
                         [&] { cache.reorder_cache(short_list); });
        const int out_of_range[] = {0, 3, 1};
        require_rejected(
            cache, ErrorCode::InvalidArgument,
            "reorder_cache: index 3 at position 1 out of range for a batch of 3 (valid: "
            "-3 to 2)",
            [&] { cache.reorder_cache(out_of_range); });
        const int negative[] = {-4};  // -1 is the last row (Python semantics), -4 is out of range
        require_rejected(
            cache, ErrorCode::InvalidArgument,
            "batch_select_indices: index -4 at position 0 out of range for a batch of 3",
            [&] { cache.batch_select_indices(negative); });
        require_rejected(cache, ErrorCode::InvalidArgument,
                         "batch_repeat_interleave: repeats must be at least 1",
                         [&] { cache.batch_repeat_interleave(0); });
        require_rejected(cache, ErrorCode::InvalidArgument, "crop: max_length must be >= 0, got -2",
                         [&] { cache.crop(-2); });
    }
}

TEST_CASE("a pool exhausted by copy-on-write throws and changes nothing",
          "[sharing][errors][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 1, 2, 8, 4, 4));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 17);
        h.append(1, 10, 0);  // 3 pages, the last one partial
        cache.batch_repeat_interleave(3);
        h.ref.repeat_interleave(3);
        auto kv = h.make_kv(3, 1);
        // Two rows must copy the shared partial page; only one page is free.
        require_rejected(cache, ErrorCode::OutOfBlocks, "out of blocks: need 2 pages, 1 of 4 free",
                         [&] { cache.update(kv.tk, kv.tv, 0); });
    }
}

TEST_CASE("batch operations on a cache that holds nothing yet do nothing", "[sharing][gpu]") {
    // Found by fuzz_cache: reorder_cache({}) before the first update read per-layer lengths
    // that did not exist yet.
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache cache(pool);
        cache.reorder_cache({});
        cache.batch_select_indices({});
        cache.batch_repeat_interleave(3);
        cache.crop(2);
        cache.truncate(-1);
        CHECK(cache.batch_size() == 0);
        CHECK(cache.get_seq_length() == 0);
        CacheHarness h(g.ctx, pool, cache, 18);
        h.append(2, 3, 0);
        h.check();
        CHECK(pool.validate());
    }
}
