// Page storage larger than one Vulkan buffer may hold: pages spread over several slabs.
#include "cache_harness.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

TEST_CASE("a pool over many small slabs matches the reference", "[slabs][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        PoolConfig c;
        c.num_layers = 2;
        c.num_kv_heads = 2;
        c.head_dim = 16;
        c.block_size = 4;
        c.dtype = dtype;
        c.num_blocks = 100;
        // Three blocks fit: slabs of two. A block: 2 layers x (K + V) x 2 heads x 4 slots of rows
        // (16 elements and, quantized, a scale).
        c.max_slab_bytes = 3 * 2 * 2 * (2 * 4 * (16 * dtype_size(dtype) + dtype_scale_size(dtype)));
        BlockPool pool(g.ctx, c);
        CHECK(pool.stats().num_slabs == 50);
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 21);
        for (uint32_t l = 0; l < 2; ++l)
            h.append(5, 37, l);
        for (int step = 0; step < 3; ++step)
            for (uint32_t l = 0; l < 2; ++l)
                h.append(5, 1, l);
        h.check();
        CHECK(pool.stats().used_blocks == 50);
    }
}

TEST_CASE("a pool larger than maxStorageBufferRange works", "[slabs][gpu]") {
    ValidatedContext g;
    // 4 layers x (K + V) x 8 heads x 16 tokens x 128 dims x 4 bytes = 512 KiB per block;
    // 300 blocks = 150 MiB, more than lavapipe's 128 MiB binding limit.
    PoolConfig c;
    c.num_layers = 4;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.block_size = 16;
    c.dtype = DType::F32;
    c.num_blocks = 300;
    c.max_slab_bytes = 128ull << 20;  // lavapipe's limit, pinned so every device has 2 slabs
    BlockPool pool(g.ctx, c);
    const PoolStats s = pool.stats();
    CHECK(s.total_bytes == 300ull * 512 * 1024);
    CHECK(s.num_slabs >= 2);
    DynamicKVCache cache(pool);
    CacheHarness h(g.ctx, pool, cache, 31);
    h.append(2, 2400, 0);  // every page of the pool
    h.append(2, 2400, 3);
    CHECK(pool.stats().free_blocks == 0);
    auto kv = cache.get(3);
    REQUIRE(kv);
    h.compare(kv->first, kv->second, 3, "get");
    CHECK(pool.validate());
}
