// Every error path of the cache API: a clear pagedkv::Error, and nothing changed.
#include "cache/manager/access.hpp"
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

struct Fixture {
    ValidatedContext g;
    BlockPool pool;
    DynamicKVCache cache;
    CacheHarness h;
    explicit Fixture(uint64_t blocks = 32, DType dtype = DType::F16)
        : pool(g.ctx,
               [&] {
                   PoolConfig c;
                   c.num_layers = 2;
                   c.num_kv_heads = 4;
                   c.head_dim = 8;
                   c.block_size = 4;
                   c.dtype = dtype;  // quantized: compute dtype F16, K/V in F16 as well
                   c.num_blocks = blocks;
                   return c;
               }()),
          cache(pool),
          h(g.ctx, pool, cache, 99) {
        h.append(2, 5, 0);  // some state to preserve
        h.append(2, 3, 1);
    }
    Tensor tensor(std::vector<int64_t> shape, DType t = DType::F16) {
        int64_t n = 1;
        for (int64_t d : shape)
            n *= d;
        std::vector<float> data(size_t(n), 1.0f);
        return Tensor::from_host(g.ctx, data, std::move(shape), t);
    }
};

// While alive, making buffers of `kind` fails once `after` more have been made (the device's
// out-of-memory injection); memory comes back when it goes.
struct InjectedOutOfMemory {
    detail::Device& dev;
    detail::MemoryKind kind;
    InjectedOutOfMemory(Context& ctx, detail::MemoryKind k, int64_t after)
        : dev(detail::Access::device(ctx)), kind(k) {
        dev.fail_allocations(kind, after);
    }
    ~InjectedOutOfMemory() { dev.fail_allocations(kind, -1); }
    InjectedOutOfMemory(const InjectedOutOfMemory&) = delete;
    InjectedOutOfMemory& operator=(const InjectedOutOfMemory&) = delete;
};

}  // namespace

TEST_CASE("update rejects a key with the wrong number of heads", "[errors][gpu]") {
    const DType dtype = GENERATE(DType::F16, DType::Int8, DType::FP8E4M3);
    Fixture f(32, dtype);
    Tensor k = f.tensor({2, 2, 1, 8}), v = f.tensor({2, 4, 1, 8});
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: key has 2 heads, pool layout has 4 kv heads",
                     [&] { f.cache.update(k, v, 0); });
}

TEST_CASE("update rejects a value with the wrong head_dim", "[errors][gpu]") {
    const DType dtype = GENERATE(DType::F16, DType::FP8E4M3);
    Fixture f(32, dtype);
    Tensor k = f.tensor({2, 4, 1, 8}), v = f.tensor({2, 4, 1, 6});
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: value has head_dim 6, pool layout has 8",
                     [&] { f.cache.update(k, v, 1); });
}

TEST_CASE("update rejects a batch other than the cache's", "[errors][gpu]") {
    const DType dtype = GENERATE(DType::F16, DType::Int8);
    Fixture f(32, dtype);
    Tensor k = f.tensor({3, 4, 1, 8}), v = f.tensor({3, 4, 1, 8});
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: key has batch 3, cache holds 2 rows",
                     [&] { f.cache.update(k, v, 0); });
}

TEST_CASE("update rejects a layer out of range", "[errors][gpu]") {
    const DType dtype = DType::F16;  // (not about the dtype)
    Fixture f(32, dtype);
    Tensor k = f.tensor({2, 4, 1, 8}), v = f.tensor({2, 4, 1, 8});
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: layer_idx 2 out of range, pool has 2 layers",
                     [&] { f.cache.update(k, v, 2); });
    require_rejected(f.cache, ErrorCode::InvalidArgument, "get: layer_idx 7 out of range",
                     [&] { (void)f.cache.get(7); });
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "get_seq_length: layer_idx 3 out of range",
                     [&] { (void)f.cache.get_seq_length(3); });
}

TEST_CASE("update rejects tensors that are not 4-D or disagree", "[errors][gpu]") {
    const DType dtype = GENERATE(DType::F16, DType::Int8);
    Fixture f(32, dtype);
    Tensor k3 = f.tensor({2, 4, 8}), k = f.tensor({2, 4, 2, 8}), v1 = f.tensor({2, 4, 1, 8});
    require_rejected(
        f.cache, ErrorCode::InvalidArgument,
        "update: key must be (batch, kv_heads, seq_len, head_dim), got shape [2, 4, 8]",
        [&] { f.cache.update(k3, v1, 0); });
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: key is [2, 4, 2, 8] but value is [2, 4, 1, 8]",
                     [&] { f.cache.update(k, v1, 0); });
    require_rejected(f.cache, ErrorCode::InvalidArgument, "update: key is undefined",
                     [&] { f.cache.update(Tensor{}, v1, 0); });
}

TEST_CASE("update rejects tensors from another context", "[errors][gpu]") {
    Fixture f;
    ValidatedContext other;
    std::vector<float> data(2 * 4 * 8, 0.5f);
    Tensor k = Tensor::from_host(other.ctx, data, {2, 4, 1, 8}, DType::F16);
    Tensor v = f.tensor({2, 4, 1, 8});
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: key lives on another Context than the pool",
                     [&] { f.cache.update(k, v, 0); });
}

TEST_CASE("a pool exhausted mid-update throws OutOfBlocks and changes nothing", "[errors][gpu]") {
    // 2 rows x 2 pages are in use; 5 pages remain. Growing both rows by 12 tokens needs 6.
    const DType dtype = GENERATE(DType::F16, DType::Int8);
    Fixture f(9, dtype);
    REQUIRE(f.pool.stats().free_blocks == 5);
    Tensor k = f.tensor({2, 4, 12, 8}), v = f.tensor({2, 4, 12, 8});
    require_rejected(f.cache, ErrorCode::OutOfBlocks, "out of blocks: need 6 pages, 5 of 9 free",
                     [&] { f.cache.update(k, v, 0); });
    // The same update fits once another cache gives pages back.
    Tensor k1 = f.tensor({2, 4, 8, 8}), v1 = f.tensor({2, 4, 8, 8});
    f.cache.update(k1, v1, 0);
    CHECK(f.pool.stats().free_blocks == 1);
    CHECK(f.pool.validate());
}

TEST_CASE("pool and tensor construction reject bad arguments", "[errors][gpu]") {
    ValidatedContext g;
    PoolConfig c;
    c.num_layers = 1;
    c.num_kv_heads = 0;
    c.head_dim = 8;
    c.num_blocks = 4;
    CHECK_THROWS_WITH(BlockPool(g.ctx, c), "BlockPool: num_kv_heads must be at least 1");
    c.num_kv_heads = 1;
    c.num_blocks = 0;
    CHECK_THROWS_WITH(BlockPool(g.ctx, c), "BlockPool: num_blocks must be at least 1");
    std::vector<float> data(5);
    try {
        Tensor::from_host(g.ctx, data, {2, 3});
        FAIL("expected an error");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::InvalidArgument);
        CHECK(std::string(e.what()) == "from_host: shape [2, 3] holds 6 elements, data has 5");
    }
    // A shape whose element count overflows is refused before anything is allocated.
    const int64_t big = int64_t(1) << 30;
    CHECK_THROWS_WITH(Tensor::empty(g.ctx, {big, big, big}, DType::F32),
                      "tensor shape [1073741824, 1073741824, 1073741824] has more than 2^48 "
                      "elements");
}

TEST_CASE("write names write in its errors, update names update", "[errors][gpu]") {
    Fixture f;
    Tensor k = f.tensor({2, 3, 1, 8}), v = f.tensor({2, 4, 1, 8});
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "write: key has 3 heads, pool layout has 4 kv heads",
                     [&] { f.cache.write(k, v, 0); });
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: key has 3 heads, pool layout has 4 kv heads",
                     [&] { f.cache.update(k, v, 0); });
    Tensor k1 = f.tensor({2, 4, 1, 8});
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "write: cache_position has 2 entries, seq_len is 1", [&] {
                         f.cache.write(k1, v, 0, std::vector<int64_t>{0, 1});
                     });
    require_rejected(f.cache, ErrorCode::InvalidArgument, "write: layer_idx 2 out of range",
                     [&] { f.cache.write(k1, v, 2); });
    Tensor big_k = f.tensor({2, 4, 200, 8}), big_v = f.tensor({2, 4, 200, 8});
    require_rejected(f.cache, ErrorCode::OutOfBlocks, "write: out of blocks",
                     [&] { f.cache.write(big_k, big_v, 0); });
}

TEST_CASE("a scalar cache_position near INT64_MAX is refused before positions are formed",
          "[errors][gpu]") {
    Fixture f;
    Tensor k = f.tensor({2, 4, 3, 8}), v = f.tensor({2, 4, 3, 8});
    // scalar + 1 and scalar + 2 would overflow int64 (UBSan flags it) before the range check.
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: cache_position 9223372036854775807 with seq_len 3 is out of range",
                     [&] { f.cache.update(k, v, 0, INT64_MAX); });
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: cache_position -1 with seq_len 3 is out of range",
                     [&] { f.cache.update(k, v, 0, int64_t(-1)); });
    require_rejected(f.cache, ErrorCode::InvalidArgument,
                     "update: cache_position 2147483645 with seq_len 3 is out of range",
                     [&] { f.cache.update(k, v, 0, int64_t(INT32_MAX) - 2); });
}

TEST_CASE("batch_repeat_interleave past the row limit is an Error, not bad_alloc",
          "[errors][gpu]") {
    Fixture f;
    require_rejected(f.cache, ErrorCode::CapacityExceeded,
                     "batch_repeat_interleave: 2 rows x 50000000 repeats = 100000000 rows, more "
                     "than the 16777216 a cache holds",
                     [&] { f.cache.batch_repeat_interleave(50'000'000); });
}

TEST_CASE("update allocates what it returns before it changes the cache", "[errors][gpu]") {
    // The returned K/V are allocated first: when device memory for them runs out, the token
    // is not appended (a caller that retries must not append it twice).
    Fixture f;
    Tensor k = f.tensor({2, 4, 1, 8}), v = f.tensor({2, 4, 1, 8});
    // The update with device memory for tensors running out after `after` more of them.
    auto failing_update = [&](int64_t after) {
        return [&, after] {
            InjectedOutOfMemory oom(f.g.ctx, detail::MemoryKind::Tensor, after);
            f.cache.update(k, v, 0);
        };
    };
    require_rejected(f.cache, ErrorCode::Vulkan, "out of memory (injected)", failing_update(0));
    // K allocated, V fails.
    require_rejected(f.cache, ErrorCode::Vulkan, "out of memory (injected)", failing_update(1));
    f.h.append(2, 1, 0);  // the same update, now that memory is back, appends once
    f.h.check();
}

TEST_CASE("BlockPool refuses a layout the snapshot decoder refuses", "[errors][gpu]") {
    ValidatedContext g;
    auto refused = [&](PoolConfig c, ErrorCode code, const std::string& text) {
        try {
            TestPool pool(g.ctx, c);
            FAIL("expected pagedkv::Error containing \"" << text << "\"");
        } catch (const Error& e) {
            INFO("message: " << e.what());
            CHECK(e.code() == code);
            CHECK_THAT(e.what(), Catch::Contains(text));
        }
    };
    // 16,385 layers x head_dim 2^19 x block_size 268,419,073 x F32: a block's bytes overflow
    // 64 bits (the constructor used to take it and allocate a 4 MiB slab).
    PoolConfig c = small_config(DType::F32, 16385, 1, 1u << 19, 268419073, 1);
    refused(c, ErrorCode::InvalidArgument, "BlockPool: a block of this layout exceeds 2^64 bytes");
    c = small_config(DType::F16);
    c.dtype = static_cast<DType>(7);
    refused(c, ErrorCode::InvalidArgument, "BlockPool: unknown dtype 7");
    c = small_config(DType::F16);
    c.max_slab_bytes = 16;
    refused(c, ErrorCode::InvalidArgument,
            "BlockPool: max_slab_bytes 16 is smaller than one block (512 bytes)");
    c = small_config(DType::F16, 2, 2, 8, 1u << 20, 4096);
    refused(c, ErrorCode::InvalidArgument, "exceeds 2^32 page slots");
    // 2^24 blocks of 2 MiB: 32 TiB, more than any heap here; refused at construction.
    c = small_config(DType::F16, 32, 8, 128, 16, uint64_t(1) << 24);
    refused(c, ErrorCode::OutOfMemory,
            "BlockPool: 16777216 blocks of 2097152 bytes need 35184372088832 bytes (32768.0 GiB), "
            "more than the device's memory heap of");
    std::vector<float> data(4);
    CHECK_THROWS_WITH(Tensor::from_host(g.ctx, data, {4}, static_cast<DType>(7)),
                      "Tensor: unknown dtype 7");
}

TEST_CASE("pool-only dtypes and quantized pools of bad shapes are refused, naming the values",
          "[errors][gpu]") {
    ValidatedContext g;
    std::vector<float> data(8, 1.0f);
    for (DType q : kQuantDTypes) {
        INFO(to_string(q));
        const std::string pool_only =
            std::string(to_string(q)) + " is a pool dtype only; tensors hold f32, f16 or bf16";
        require_error(
            [&] {
                (void)Tensor::from_host(g.ctx, data, {2, 4}, q);
            },
            ErrorCode::InvalidArgument, "Tensor: " + pool_only);
        require_error(
            [&] {
                (void)Tensor::empty(g.ctx, {2, 4}, q);
            },
            ErrorCode::InvalidArgument, "Tensor: " + pool_only);
        // (Tensor::wrap: test_wrap.cpp.)
        PoolConfig c = small_config(q, 1, 2, 6, 4, 8);
        require_error([&] { TestPool pool(g.ctx, c); }, ErrorCode::InvalidArgument,
                      "BlockPool: head_dim 6 of a " + std::string(to_string(q)) +
                          " pool must be a multiple of 4");
        c = small_config(q, 1, 2, 8, 4, 8);
        c.v_head_dim = 2;
        require_error([&] { TestPool pool(g.ctx, c); }, ErrorCode::InvalidArgument,
                      "BlockPool: v_head_dim 2 of a " + std::string(to_string(q)) +
                          " pool must be a multiple of 4");
        // compute_dtype must be a float dtype, for quantized and float pools alike.
        for (DType pool_dtype : {q, DType::F16}) {
            c = small_config(pool_dtype, 1, 2, 8, 4, 8);
            c.compute_dtype = q;
            require_error([&] { TestPool pool(g.ctx, c); }, ErrorCode::InvalidArgument,
                          "BlockPool: compute_dtype " + std::string(to_string(q)) +
                              " is not f32, f16 or bf16");
        }
    }
    // A float pool takes any head_dim; a quantized one with multiples of 4 is made.
    BlockPool odd(g.ctx, small_config(DType::F32, 1, 2, 6, 4, 8));
    PoolConfig c = small_config(DType::Int8, 1, 2, 12, 4, 8);
    c.v_head_dim = 4;
    BlockPool ok(g.ctx, c);
    CHECK(ok.config().compute_dtype == DType::F16);
    CHECK(ok.stats().used_blocks == 0);
}

TEST_CASE("crop and insert that move tokens allocate their scratch before changing anything",
          "[errors][static][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 2, 2, 8, 4, 64));
        StaticKVCache cache(pool, 2, 12);
        CacheHarness h(g.ctx, pool, cache, 21);
        for (uint32_t l = 0; l < 2; ++l)
            h.append(2, 9, l);
        DynamicKVCache other(pool);
        CacheHarness ho(g.ctx, pool, other, 22);
        ho.append(1, 6, 0);
        auto failing = [&](auto call) {
            return [&, call] {
                InjectedOutOfMemory oom(g.ctx, detail::MemoryKind::Tensor, 0);
                call();
            };
        };
        require_rejected(cache, ErrorCode::Vulkan, "out of memory (injected)",
                         failing([&] { cache.crop(5); }));
        require_rejected(cache, ErrorCode::Vulkan, "out of memory (injected)",
                         failing([&] { cache.insert(other, 0, 1); }));
        cache.crop(5);  // with memory back, both work
        h.ref.crop(5);
        h.check();
    }
}

TEST_CASE("update is all or nothing whichever of its allocations runs out", "[errors][gpu]") {
    // Every buffer an update makes (the tensors it returns, the upload space of the entries
    // the shader path reads) is made before the cache changes. Fail the n-th of a kind in
    // turn: each failure leaves the cache as it was, until n passes what the update needs.
    // For upload space the update is made larger than an upload chunk (1 MiB), so that it
    // needs a new one whatever earlier batches left to reuse.
    const DType dtype = GENERATE(DType::F16, DType::Int8);  // Int8: the quantizing scatter
    for (const PathMode& mode : kPathModes)
        for (auto kind : {detail::MemoryKind::Tensor, detail::MemoryKind::Upload}) {
            if (kind == detail::MemoryKind::Upload && mode.path != BytePath::Shader) continue;
            const uint32_t seq = kind == detail::MemoryKind::Upload ? 70000 : 3;
            INFO(mode.name << ", memory kind " << int(kind));
            Fixture f(40000, dtype);
            use_path(f.g.ctx, mode);
            auto kv = f.h.make_kv(2, seq);
            int64_t failures = 0;
            bool done = false;
            for (int64_t after = 0; after < 8 && !done; ++after) {
                const CacheSnapshot before = CacheSnapshot::of(f.cache);
                std::string error;
                {
                    InjectedOutOfMemory oom(f.g.ctx, kind, after);
                    try {
                        f.cache.update(kv.tk, kv.tv, 0);
                        done = true;
                    } catch (const Error& e) {
                        error = e.what();
                    }
                }
                if (done) break;
                ++failures;
                CHECK_THAT(error, Catch::Contains("out of memory (injected)"));
                CHECK(CacheSnapshot::of(f.cache) == before);
            }
            REQUIRE(done);
            CHECK(failures > 0);  // the injection reached the update
            const auto lens = f.h.ref.lengths(0);
            std::vector<std::vector<int64_t>> pos(2);
            for (uint32_t b = 0; b < 2; ++b)
                for (uint32_t t = 0; t < seq; ++t)
                    pos[b].push_back(lens[b] + t);
            f.h.ref.update(kv.k, kv.v, 2, seq, 0, pos);
            f.h.check();
        }
}

TEST_CASE("selections past the row limit or on an empty cache are refused and change nothing",
          "[errors][gpu]") {
    Fixture f;
    const std::vector<int32_t> huge((size_t(1) << 24) + 1, 0);
    require_rejected(f.cache, ErrorCode::CapacityExceeded,
                     "batch_select_indices: 16777217 rows, more than the 16777216 a cache holds",
                     [&] { f.cache.batch_select_indices(huge); });
    DynamicKVCache empty(f.pool);
    const int32_t one[] = {0};
    require_rejected(empty, ErrorCode::InvalidArgument,
                     "batch_select_indices: index 0 at position 0, but the cache has no rows",
                     [&] { empty.batch_select_indices(one); });
}
