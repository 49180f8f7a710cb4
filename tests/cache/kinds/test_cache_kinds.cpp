// StaticKVCache, SlidingWindowKVCache and EncoderDecoderCache against the reference.
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

TEST_CASE("a static cache reserves every page up front and never allocates again",
          "[static][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        StaticKVCache cache(pool, 3, 10);  // 3 rows x ceil(10 / 4) pages
        CHECK(pool.stats().used_blocks == 9);
        CHECK(cache.batch_size() == 3);
        CHECK(cache.seq_lengths() == std::vector<int64_t>{0, 0, 0});
        CHECK_FALSE(cache.get(0).has_value());
        CacheHarness h(g.ctx, pool, cache, 1);
        h.ref.set_batch(3);
        for (uint32_t l = 0; l < 2; ++l)
            h.append(3, 6, l);
        for (int step = 0; step < 4; ++step)
            for (uint32_t l = 0; l < 2; ++l)
                h.append(3, 1, l);
        h.check();
        const int rows[] = {2, 2, 0};  // a repeat: copied into the reservation, not shared
        cache.reorder_cache(rows);
        h.ref.select({2, 2, 0});
        h.check();
        CHECK(pool.stats().shared_blocks == 0);
        cache.crop(7);  // tokens move to the front of their pages: capacity stays 10
        h.ref.crop(7);
        h.check();
        for (uint32_t l = 0; l < 2; ++l)
            h.append(3, 3, l);
        h.check();
        CHECK(pool.stats().used_blocks == 9);
        CHECK(pool.stats().peak_used_blocks == 9);
        cache.reset();
        h.ref.clear_rows();
        h.check();
        CHECK(pool.stats().used_blocks == 9);
    }
}

TEST_CASE("a static cache refuses to overflow and changes nothing", "[static][errors][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F32, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 1, 2, 8, 4, 16));
        StaticKVCache cache(pool, 2, 8);
        CacheHarness h(g.ctx, pool, cache, 2);
        h.ref.set_batch(2);
        h.append(2, 6, 0);
        auto kv3 = h.make_kv(2, 3);
        require_rejected(cache, ErrorCode::CapacityExceeded,
                         "StaticKVCache: a row would hold 9 tokens, max_cache_len is 8",
                         [&] { cache.update(kv3.tk, kv3.tv, 0); });
        auto big = h.make_kv(3, 1);
        require_rejected(cache, ErrorCode::CapacityExceeded,
                         "StaticKVCache: batch of 3 rows exceeds batch_size 2",
                         [&] { cache.update(big.tk, big.tv, 0); });
        require_rejected(cache, ErrorCode::CapacityExceeded,
                         "StaticKVCache: batch of 4 rows exceeds batch_size 2",
                         [&] { cache.batch_repeat_interleave(2); });
        require_rejected(cache, ErrorCode::InvalidArgument, "StaticKVCache: cannot keep zero rows",
                         [&] { cache.batch_select_indices({}); });
        CHECK_THROWS_MATCHES(StaticKVCache(pool, 4, 16), Error,
                             Catch::Message("out of blocks: need 16 pages, 12 of 16 free"));
        CHECK(pool.stats().used_blocks == 4);
        CHECK(pool.validate());
    }
}

TEST_CASE("a sliding window keeps the last tokens in a bounded number of pages", "[sliding][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        const uint32_t window = 10;
        SlidingWindowKVCache cache(pool, window);
        CacheHarness h(g.ctx, pool, cache, 3);
        h.after_update = [&](uint32_t l) { h.ref.keep_last(l, window); };
        for (uint32_t l = 0; l < 2; ++l)
            h.append(2, 7, l);
        for (int step = 0; step < 40; ++step) {
            for (uint32_t l = 0; l < 2; ++l)
                h.append(2, 1 + step % 3, l);
            // The window starts anywhere in its first page: at most ceil((window + 3) / 4) pages.
            for (uint32_t r = 0; r < 2; ++r)
                CHECK(cache.block_table(r).size() <= (window + 3 + 3) / 4);
        }
        h.check();
        CHECK(cache.get_seq_length() == window);
        for (uint32_t l = 0; l < 2; ++l)
            h.append(2, 25, l);  // a chunk longer than the window
        h.check();
        CHECK(pool.stats().used_blocks <= 2 * (window / 4 + 1));
    }
}

TEST_CASE("an encoder-decoder cache routes self and cross attention", "[encdec][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::BF16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        EncoderDecoderCache cache(pool);
        auto& self = dynamic_cast<PagedKVCache&>(cache.self_attention_cache());
        auto& cross = dynamic_cast<PagedKVCache&>(cache.cross_attention_cache());
        CacheHarness hs(g.ctx, pool, self, 4), hc(g.ctx, pool, cross, 5);
        // The encoder's K/V go into the cross cache once per layer.
        for (uint32_t l = 0; l < 2; ++l) {
            auto kv = hc.make_kv(2, 9);
            auto [k, v] = cache.update(kv.tk, kv.tv, l, {}, true);
            hc.ref.update(kv.k, kv.v, 2, 9, l,
                          std::vector<std::vector<int64_t>>(2, {0, 1, 2, 3, 4, 5, 6, 7, 8}));
            hc.compare(k, v, l, "cross update");
            CHECK(cache.is_updated()[l]);
        }
        for (int step = 0; step < 3; ++step)
            for (uint32_t l = 0; l < 2; ++l) {
                auto kv = hs.make_kv(2, 1);
                auto [k, v] = cache.update(kv.tk, kv.tv, l);
                hs.ref.update(kv.k, kv.v, 2, 1, l, {{int64_t(step)}, {int64_t(step)}});
                hs.compare(k, v, l, "self update");
            }
        CHECK(cache.get_seq_length(0) == 3);
        CHECK(cache.get_seq_length(0, true) == 9);
        const int beams[] = {1, 1};
        cache.reorder_cache(beams);
        hs.ref.select({1, 1});
        hc.ref.select({1, 1});
        cache.crop(2);  // self only
        hs.ref.crop(2);
        cache.batch_repeat_interleave(2);
        hs.ref.repeat_interleave(2);
        hc.ref.repeat_interleave(2);
        hs.check();
        hc.check();
        const int bad[] = {0, 5, 1, 2};
        const auto before_self = CacheSnapshot::of(self);
        const auto before_cross = CacheSnapshot::of(cross);
        CHECK_THROWS_WITH(
            cache.batch_select_indices(bad),
            "batch_select_indices: index 5 at position 1 out of range for a batch of 4 "
            "(valid: -4 to 3)");
        CHECK(CacheSnapshot::of(self) == before_self);
        CHECK(CacheSnapshot::of(cross) == before_cross);
        cache.reset();
        CHECK(cache.is_updated().empty());
        CHECK(pool.stats().used_blocks == 0);
    }
}

// The bound a window of `window` tokens spans when it may start anywhere in its first page:
// ceil((window - 1) / block_size) + 1 pages.
static size_t window_pages(int64_t window, uint32_t block) {
    return size_t((window - 1 + block - 1) / block) + 1;
}

TEST_CASE("a sliding window written one layer after the other holds only its window's pages",
          "[sliding][gpu]") {
    // Window 24, block 16, a 200-token prompt into layer 0 then layer 1: each layer's window
    // must sit in the same pages, not layer 0's at the front and layer 1's at the back.
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 16, 64));
        const int64_t window = 24;
        SlidingWindowKVCache cache(pool, uint32_t(window));
        CacheHarness h(g.ctx, pool, cache, 11);
        h.after_update = [&](uint32_t l) { h.ref.keep_last(l, window); };
        for (uint32_t l = 0; l < 2; ++l) {
            h.append(1, 200, l);
            CHECK(cache.block_table(0).size() <= window_pages(window, 16));
        }
        CHECK(pool.stats().peak_used_blocks <= window_pages(window, 16));
        h.check();
        for (int step = 0; step < 100; ++step) {
            for (uint32_t l = 0; l < 2; ++l) {
                h.append(1, 1, l);
                // Half-way through a step one layer is a token ahead: one page more at most.
                CHECK(cache.block_table(0).size() <= window_pages(window + 1, 16));
            }
            CHECK(cache.block_table(0).size() <= window_pages(window, 16));
        }
        h.check();
        CHECK(pool.stats().used_blocks == cache.pages_held());
    }
}

TEST_CASE("a sliding window decodes forever in a pool of exactly its footprint", "[sliding][gpu]") {
    // Window 5, block 4: a window spans at most 2 pages, and 2 pages are all the pool has. The
    // page that leaves the window must go back before the next one is taken.
    ValidatedContext g;
    for (DType dtype : {DType::F32, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 1, 2, 8, 4, 2));
        SlidingWindowKVCache cache(pool, 5);
        CacheHarness h(g.ctx, pool, cache, 12);
        h.after_update = [&](uint32_t l) { h.ref.keep_last(l, 5); };
        for (int t = 0; t < 64; ++t) {
            h.append(1, 1, 0);
            CHECK(cache.block_table(0).size() <= 2);
        }
        h.check();
        // A chunk of several tokens at once, and a prompt far longer than the pool, fit too.
        h.append(1, 3, 0);
        h.append(1, 40, 0);
        h.check();
        CHECK(pool.stats().used_blocks <= 2);
    }
}

TEST_CASE("a sliding window keeps only its window of a row inserted from another cache",
          "[sliding][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        DynamicKVCache prompt(pool);
        CacheHarness hp(g.ctx, pool, prompt, 13);
        for (uint32_t l = 0; l < 2; ++l)
            hp.append(1, 30, l);
        SlidingWindowKVCache cache(pool, 6);
        cache.insert(prompt, 0, 0);
        CHECK(cache.seq_lengths(0) == std::vector<int64_t>{6});
        CHECK(cache.block_table(0).size() <= window_pages(6, 4));
        for (uint32_t l = 0; l < 2; ++l) {
            const auto want = prompt.get(l);
            const auto got = cache.get(l);
            REQUIRE(got);
            // The last 6 tokens of each head: compare K row by row.
            const auto wk = want->first.to_host(), gk = got->first.to_host();
            for (uint32_t hd = 0; hd < 2; ++hd)
                for (int64_t t = 0; t < 6; ++t)
                    for (uint32_t d = 0; d < 8; ++d)
                        CHECK(gk[size_t((hd * 6 + t) * 8 + d)] ==
                              wk[size_t((hd * 30 + 24 + t) * 8 + d)]);
        }
        CHECK(pool.validate());
    }
}

TEST_CASE("an encoder-decoder batch operation checks both caches before changing either",
          "[encdec][errors][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 1, 2, 8, 4, 64));
        EncoderDecoderCache cache(pool, std::make_unique<DynamicKVCache>(pool),
                                  std::make_unique<StaticKVCache>(pool, 2, 8));
        auto& self = dynamic_cast<PagedKVCache&>(cache.self_attention_cache());
        auto& cross = dynamic_cast<PagedKVCache&>(cache.cross_attention_cache());
        CacheHarness hs(g.ctx, pool, self, 14), hc(g.ctx, pool, cross, 15);
        hs.append(2, 3, 0);
        hc.append(2, 5, 0);
        const auto before_self = CacheSnapshot::of(self);
        const auto before_cross = CacheSnapshot::of(cross);
        auto unchanged = [&] {
            CHECK(CacheSnapshot::of(self) == before_self);
            CHECK(CacheSnapshot::of(cross) == before_cross);
            CHECK(pool.validate());
        };
        // The dynamic self cache would empty itself; the static cross cache refuses zero rows.
        CHECK_THROWS_WITH(
            cache.batch_select_indices({}),
            "StaticKVCache: cannot keep zero rows (reset() empties the rows instead)");
        unchanged();
        CHECK_THROWS_WITH(cache.batch_repeat_interleave(2),
                          "StaticKVCache: batch of 4 rows exceeds batch_size 2");
        unchanged();
        const int too_many[] = {0, 1, 1};
        CHECK_THROWS_WITH(cache.batch_select_indices(too_many),
                          "StaticKVCache: batch of 3 rows exceeds batch_size 2");
        unchanged();
        const int short_beams[] = {1};
        CHECK_THROWS_WITH(cache.reorder_cache(short_beams),
                          "reorder_cache: 1 indices for a batch of 2");
        unchanged();
        const int swap[] = {-1, 0};  // Python semantics: -1 is the last row
        cache.reorder_cache(swap);
        hs.ref.select({1, 0});
        hc.ref.select({1, 0});
        hs.check();
        hc.check();
    }
}

TEST_CASE("an encoder-decoder cache over a cross cache that holds layers marks them updated",
          "[encdec][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 3, 2, 8, 4, 64));
        auto cross = std::make_unique<DynamicKVCache>(pool);
        CacheHarness hc(g.ctx, pool, *cross, 16);
        hc.append(1, 5, 0);
        hc.append(1, 2, 2);
        EncoderDecoderCache cache(pool, nullptr, std::move(cross));
        CHECK(cache.is_updated() == std::map<uint32_t, bool>{{0, true}, {2, true}});
        EncoderDecoderCache empty(pool);
        CHECK(empty.is_updated().empty());
    }
}

TEST_CASE("negative row indices count from the end, as in Python", "[sharing][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F32, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 17);
        for (uint32_t l = 0; l < 2; ++l)
            h.append(3, 5, l);
        const int select[] = {-1, 0, -3, -2};
        cache.batch_select_indices(select);
        h.ref.select({2, 0, 0, 1});
        h.check();
        const int beams[] = {-4, -4, 3, -1};
        cache.reorder_cache(beams);
        h.ref.select({0, 0, 3, 3});
        h.check();
        const int bad[] = {0, -5};
        require_rejected(
            cache, ErrorCode::InvalidArgument,
            "batch_select_indices: index -5 at position 1 out of range for a batch of 4 "
            "(valid: -4 to 3)",
            [&] { cache.batch_select_indices(bad); });
    }
}
