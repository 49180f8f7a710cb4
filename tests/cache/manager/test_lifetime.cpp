// Ownership: destroying the last handle destroys the device; tensors keep it alive until then.
#include "cache_harness.hpp"
#include "shaders/vulkan/device.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

TEST_CASE("the device goes away with the last context, pool, cache and tensor", "[lifetime][gpu]") {
    const DType dtype = GENERATE(DType::F16, DType::Int8);
    const int before = detail::Device::live_count();
    Tensor survivor;
    {
        ValidatedContext g;
        TestPool pool(g.ctx, small_config(dtype));
        DynamicKVCache cache(pool);
        CacheHarness h(g.ctx, pool, cache, 1);
        h.append(2, 9, 0);
        h.check();
        survivor = cache.get(0)->first;
        CHECK(detail::Device::live_count() == before + 1);
    }
    CHECK(detail::Device::live_count() == before + 1);  // the tensor holds the device
    CHECK(survivor.to_host().size() == 2 * 2 * 9 * 8);
    survivor = Tensor{};
    CHECK(detail::Device::live_count() == before);
}

TEST_CASE("a cache outliving its pool gets errors, not a crash, and still returns its pages",
          "[lifetime][errors][gpu]") {
    ValidatedContext g;
    for (DType dtype : {DType::F16, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        auto pool = std::make_unique<TestPool>(g.ctx, small_config(dtype));
        auto cache = std::make_unique<DynamicKVCache>(*pool);
        auto stat = std::make_unique<StaticKVCache>(*pool, 2, 8);
        CacheHarness h(g.ctx, *pool, *cache, 2);
        h.append(2, 9, 0);
        auto kv = h.make_kv(2, 1);
        pool.reset();  // a misuse: the pool must outlive its caches
        const std::string gone =
            "DynamicKVCache: the BlockPool it was made over has been destroyed (a pool must "
            "outlive "
            "the caches made over it)";
        CHECK_THROWS_WITH(cache->update(kv.tk, kv.tv, 0), gone);
        CHECK_THROWS_WITH(cache->get(0), gone);
        CHECK_THROWS_WITH(cache->seq_lengths(0), gone);
        CHECK_THROWS_WITH(cache->pool(), gone);
        CHECK_THROWS_WITH(cache->paged_view(0), gone);
        const int rows[] = {1, 0};
        CHECK_THROWS_WITH(cache->reorder_cache(rows), gone);
        CHECK_THROWS_WITH(stat->crop(1), Catch::Contains("StaticKVCache: the BlockPool"));
        cache.reset();  // destructors still give the pages back, without a crash
        stat.reset();
    }
}
