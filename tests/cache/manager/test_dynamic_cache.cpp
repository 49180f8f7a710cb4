// DynamicKVCache on a real Vulkan device, differentially against the CPU reference.
#include "cache_harness.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

TEST_CASE("prefill then decode matches the reference in every dtype", "[cache][gpu]") {
    for (DType dtype : kPoolDTypes) {
        DYNAMIC_SECTION("dtype " << to_string(dtype)) {
            ValidatedContext g;
            TestPool pool(g.ctx, small_config(dtype));
            DynamicKVCache cache(pool);
            CacheHarness h(g.ctx, pool, cache, 7);
            for (uint32_t l = 0; l < 2; ++l)
                h.append(3, 9, l);
            for (int step = 0; step < 6; ++step)
                for (uint32_t l = 0; l < 2; ++l)
                    h.append(3, 1, l);
            h.check();
            CHECK(cache.get_seq_length() == 15);
            CHECK(pool.stats().used_blocks == 3 * 4);  // 15 tokens in pages of 4, three rows
        }
    }
}

TEST_CASE("random shapes and step sequences match the reference bit for bit", "[cache][gpu]") {
    for (const PathMode& mode : kPathModes)
        DYNAMIC_SECTION("byte path: " << mode.name) {
            ValidatedContext g;
            BlockPool warmup(g.ctx,
                             small_config(DType::F32));  // resolves Auto; then force the mode
            use_path(g.ctx, mode);
            for (uint32_t seed = 1; seed <= 16; ++seed) {
                std::mt19937 pick(seed);
                // Seeds past 12: quantized pools (head dims multiples of 4, any compute dtype).
                const bool quant = seed > 12;
                const DType dtype =
                    quant ? kQuantDTypes[pick() % 2]
                          : std::array{DType::F32, DType::F16, DType::BF16}[pick() % 3];
                // Odd head dims exercise the 16-bit shader, multiples of 8 halves the 128-bit one.
                const uint32_t float_dims[] = {1, 3, 4, 7, 8, 16, 64};
                const uint32_t quant_dims[] = {4, 12, 8, 4, 8, 16, 64};
                const uint32_t* dims = quant ? quant_dims : float_dims;
                PoolConfig c = small_config(dtype, 1 + pick() % 3, 1 + pick() % 4, dims[pick() % 7],
                                            1 + pick() % 8, 256);
                c.v_head_dim = pick() % 2 ? c.head_dim : dims[pick() % 7];
                if (quant)
                    c.compute_dtype = std::array{DType::F32, DType::F16, DType::BF16}[pick() % 3];
                INFO("seed " << seed << " dtype " << to_string(dtype) << " compute "
                             << to_string(c.compute_dtype.value_or(dtype)) << " layers "
                             << c.num_layers << " heads " << c.num_kv_heads << " head_dim "
                             << c.head_dim << " v_head_dim " << c.v_head_dim << " block_size "
                             << c.block_size);
                TestPool pool(g.ctx, c);
                DynamicKVCache cache(pool);
                CacheHarness h(g.ctx, pool, cache, seed);
                const uint32_t batch = 1 + pick() % 4;
                for (int step = 0; step < 8; ++step) {
                    const uint32_t seq = step == 0 ? 1 + pick() % 20 : 1 + pick() % 3;
                    for (uint32_t l = 0; l < c.num_layers; ++l)
                        h.append(batch, seq, l);
                }
                h.check();
                cache.reset();
                h.ref.reset();
                h.check();
                CHECK(pool.stats().used_blocks == 0);
            }
        }
}

TEST_CASE("layers fill independently and share one block table per row", "[cache][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype, 3));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 3);
        h.append(2, 6, 0);
        h.check();  // layers 1 and 2 are still empty
        CHECK_FALSE(cache.get(1).has_value());
        CHECK(pool.stats().used_blocks == 4);
        h.append(2, 6, 1);
        CHECK(pool.stats().used_blocks == 4);  // layer 1 writes into the same pages
        h.append(2, 3, 2);
        h.check();
    }
}

TEST_CASE("pages return to the pool on reset and on destruction", "[cache][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F32, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        {
            DynamicKVCache cache(pool);
            CacheHarness h(g.ctx, pool, cache, 5);
            h.append(4, 10, 0);
            CHECK(pool.stats().used_blocks == 12);
            cache.reset();
            CHECK(pool.stats().used_blocks == 0);
            CHECK(cache.get_seq_length() == 0);
            h.ref.reset();
            h.append(2, 5, 1);  // a new batch size after reset
            h.check();
            CHECK(pool.stats().used_blocks == 4);
        }
        CHECK(pool.stats().used_blocks == 0);
        CHECK(pool.stats().peak_used_blocks == 12);
        CHECK(pool.validate());
    }
}

TEST_CASE("two caches over one pool keep separate pages", "[cache][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::BF16, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache a(pool), b(pool);
        CacheHarness ha(g.ctx, pool, a, 11), hb(g.ctx, pool, b, 12);
        for (int i = 0; i < 4; ++i) {
            ha.append(2, 3, 0);
            hb.append(1, 5, 0);
        }
        ha.check();
        hb.check();
        for (uint32_t r = 0; r < 2; ++r)
            for (uint32_t p : a.block_table(r))
                for (uint32_t q : b.block_table(0))
                    CHECK(p != q);
    }
}

TEST_CASE("tensors round-trip through device-local memory and staging copies", "[tensor][gpu]") {
    for (bool staging : {false, true}) {
        DYNAMIC_SECTION("force_staging " << staging) {
            ContextOptions o;
            o.force_staging = staging;
            ValidatedContext g(o);
            std::mt19937 rng(9);
            for (DType t : {DType::F32, DType::F16, DType::BF16}) {
                auto data = random_values(1000, rng, t);
                Tensor x = Tensor::from_host(g.ctx, data, {10, 100}, t);
                CHECK(x.shape() == std::vector<int64_t>{10, 100});
                CHECK(x.dtype() == t);
                CHECK(bit_equal(x.to_host(), data));
            }
            for (DType dtype : {DType::F16, DType::Int8}) {
                TestPool pool(g.ctx, small_config(dtype));
                DynamicKVCache cache(pool);
                CacheHarness h(g.ctx, pool, cache, 2);
                h.append(2, 7, 0);
                h.append(2, 1, 0);
                h.check();
            }
        }
    }
}

TEST_CASE("a decode step over every layer is one submit on every byte path",
          "[cache][gpu][submits]") {
    const DType dtype = GENERATE(DType::F16, DType::Int8);
    for (const PathMode& mode : kPathModes) {
        for (uint32_t batch : {1u, 6u}) {
            if (is_quantized(dtype) && batch == 1) continue;
            INFO("path " << mode.name << " batch " << batch << " dtype " << to_string(dtype));
            ValidatedContext g;
            TestPool pool(g.ctx, small_config(dtype, 4));
            use_path(g.ctx, mode);
            DynamicKVCache cache(pool);
            CacheHarness h(g.ctx, pool, cache, 4);
            for (uint32_t l = 0; l < 4; ++l)
                h.append(batch, 5, l);
            std::vector<CacheHarness::KV> inputs;
            for (uint32_t l = 0; l < 4; ++l)
                inputs.push_back(h.make_kv(batch, 1));
            g.ctx.synchronize();
            const DeviceCounters before = g.ctx.counters();
            std::vector<std::pair<Tensor, Tensor>> outs;
            for (uint32_t l = 0; l < 4; ++l)
                outs.push_back(cache.update(inputs[l].tk, inputs[l].tv, l));
            outs.back().first.to_host();  // reading one result submits the step
            const DeviceCounters after = g.ctx.counters();
            CHECK(after.submits - before.submits == 1);
            // On the shader path, whatever the batch: per layer one scatter and one gather, each
            // moving K and V together (their rows are the same size here).
            // (Quantized pages: the quantizing scatter and dequantizing gather, on every path.)
            if (mode.path == BytePath::Shader || is_quantized(dtype))
                CHECK(after.dispatches - before.dispatches == 4 * 2);
        }
    }
}

TEST_CASE("MQA with different K and V head dims matches the reference", "[cache][gpu]") {
    for (DType dtype : {DType::BF16, DType::FP8E4M3})
        DYNAMIC_SECTION("dtype " << to_string(dtype)) {
            ValidatedContext g;
            PoolConfig c = small_config(dtype, 2, 1, 128, 16, 32);
            c.v_head_dim = 64;  // K and V of different widths (MLA-style caches)
            TestPool pool(g.ctx, c);
            DynamicKVCache cache(pool);
            CacheHarness h(g.ctx, pool, cache, 77);
            for (uint32_t l = 0; l < 2; ++l)
                h.append(2, 37, l);
            for (int step = 0; step < 3; ++step)
                for (uint32_t l = 0; l < 2; ++l)
                    h.append(2, 1, l);
            h.check();
        }
}

TEST_CASE("a quantized row of thousands of tokens and many heads gathers in one copy",
          "[cache][gpu]") {
    // quant_rows once refused any copy with entries x heads x seq x head_dim past 2^32 (here
    // 2,100 x 8 x 2,100 x 128), though its largest index is the tensor's element count.
    ValidatedContext g;
    TestPool pool(g.ctx, small_config(DType::Int8, 1, 8, 128, 16, 140));
    DynamicKVCache cache(pool);
    CacheHarness h(g.ctx, pool, cache, 5);
    h.append(1, 2100, 0);
    h.append(1, 1, 0);
    h.check();
}
