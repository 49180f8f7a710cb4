// StaticKVCache, SlidingWindowKVCache and EncoderDecoderCache against the reference.
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

TEST_CASE("a static cache reserves every page up front and never allocates again",
          "[static][gpu]") {
    ValidatedContext g;
    BlockPool pool(g.ctx, small_config(DType::F16, 2, 2, 8, 4, 64));
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

TEST_CASE("a static cache refuses to overflow and changes nothing", "[static][errors][gpu]") {
    ValidatedContext g;
    BlockPool pool(g.ctx, small_config(DType::F32, 1, 2, 8, 4, 16));
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

TEST_CASE("a sliding window keeps the last tokens in a bounded number of pages", "[sliding][gpu]") {
    ValidatedContext g;
    BlockPool pool(g.ctx, small_config(DType::F16, 2, 2, 8, 4, 64));
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

TEST_CASE("an encoder-decoder cache routes self and cross attention", "[encdec][gpu]") {
    ValidatedContext g;
    BlockPool pool(g.ctx, small_config(DType::BF16, 2, 2, 8, 4, 64));
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
    CHECK_THROWS_WITH(cache.batch_select_indices(bad),
                      "batch_select_indices: index 5 at position 1 out of range, self cache has "
                      "batch 4");
    CHECK(CacheSnapshot::of(self) == before_self);
    CHECK(CacheSnapshot::of(cross) == before_cross);
    cache.reset();
    CHECK(cache.is_updated().empty());
    CHECK(pool.stats().used_blocks == 0);
}
