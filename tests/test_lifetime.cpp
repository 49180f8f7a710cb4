// Ownership: destroying the last handle destroys the device; tensors keep it alive until then.
#include "cache_harness.hpp"
#include "shaders/device.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

TEST_CASE("the device goes away with the last context, pool, cache and tensor", "[lifetime][gpu]") {
    const int before = detail::Device::live_count();
    Tensor survivor;
    {
        ValidatedContext g;
        BlockPool pool(g.ctx, small_config(DType::F16));
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
