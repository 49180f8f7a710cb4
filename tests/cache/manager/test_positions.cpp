// cache_position in all four modes, against the reference.
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

using Pos = std::vector<std::vector<int64_t>>;

TEST_CASE("a 0-D position overwrites existing tokens and grows past the end", "[positions][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 1);
        h.append(2, 6, 0);
        h.write(2, 3, 0, int64_t(2), Pos{{2, 3, 4}, {2, 3, 4}});  // overwrite the middle
        h.write(2, 2, 0, int64_t(5), Pos{{5, 6}, {5, 6}});        // straddles the end
        h.check();
        CHECK(cache.get_seq_length() == 7);
    }
}

TEST_CASE("a 1-D position list writes the same slots in every row", "[positions][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::BF16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 2);
        h.append(3, 5, 1);
        h.write(3, 3, 1, std::vector<int64_t>{4, 0, 2}, Pos(3, {4, 0, 2}));
        h.check();
    }
}

TEST_CASE("a 2-D position matrix gives rows different lengths", "[positions][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F32, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 3);
        const Pos pos{{0, 1, 2}, {0, 1, 9}, {5, 6, 7}};
        h.write(3, 3, 0, pos, pos);
        h.check();
        CHECK(cache.seq_lengths() == std::vector<int64_t>{3, 10, 8});
        h.append(3, 2, 0);  // append continues each row after its own end
        h.check();
    }
}

TEST_CASE("writing far past the end zero-fills the skipped positions", "[positions][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 4);
        // Pages are recycled: fill some with data first so stale bytes would show.
        h.append(1, 20, 0);
        cache.reset();
        h.ref.reset();
        h.write(1, 1, 0, int64_t(17), Pos{{17}});
        h.check();
    }
}

TEST_CASE("a repeated position in one update keeps the last write", "[positions][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F32, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 5);
        h.write(1, 4, 0, std::vector<int64_t>{1, 3, 1, 1}, Pos{{1, 3, 1, 1}});
        h.check();
    }
}

TEST_CASE("bad positions are rejected and change nothing", "[positions][errors][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 6);
        h.append(2, 5, 0);
        auto kv = h.make_kv(2, 3);
        require_rejected(cache, ErrorCode::InvalidArgument,
                         "update: cache_position has 2 entries, seq_len is 3", [&] {
                             cache.update(kv.tk, kv.tv, 0, std::vector<int64_t>{0, 1});
                         });
        require_rejected(cache, ErrorCode::InvalidArgument,
                         "update: cache_position -1 (row 0) is out of range", [&] {
                             cache.update(kv.tk, kv.tv, 0, std::vector<int64_t>{0, -1, 2});
                         });
        require_rejected(cache, ErrorCode::InvalidArgument,
                         "update: cache_position -4 with seq_len 3 is out of range",
                         [&] { cache.update(kv.tk, kv.tv, 0, int64_t(-4)); });
        require_rejected(cache, ErrorCode::InvalidArgument,
                         "update: cache_position has 1 rows, batch is 2", [&] {
                             cache.update(kv.tk, kv.tv, 0, Pos{{0, 1, 2}});
                         });
        require_rejected(cache, ErrorCode::InvalidArgument,
                         "update: cache_position row 1 has 2 entries, seq_len is 3", [&] {
                             cache.update(kv.tk, kv.tv, 0, Pos{{0, 1, 2}, {0, 1}});
                         });
    }
}
