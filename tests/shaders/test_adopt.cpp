// Context::adopt: a host runtime's own instance, device and queue, made here by hand with a
// validation layer and debug messenger of the host's, so the host sees every message.
#include <vulkan/vulkan_core.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cache_harness.hpp"
#include "host_vulkan.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

// Stands in for the entry point of a loader other than the one pagedkv is linked with.
VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL foreign_loader_entry(VkInstance, const char*) {
    return nullptr;
}

// Runs a two-layer dynamic cache through prefill, decode and a crop on ctx, checked against
// the CPU reference; head_dim 5 in f16 needs the 16-bit path where the host enabled it.
void run_dynamic_cache(Context& ctx, bool storage16) {
    BlockPool pool(ctx, small_config(DType::F16, 2, 2, storage16 ? 5 : 8, 4, 32));
    DynamicKVCache cache(pool);
    CacheHarness h(ctx, pool, cache, 7);
    for (uint32_t layer = 0; layer < 2; ++layer)
        h.append(3, 6, layer);
    for (int step = 0; step < 4; ++step)
        for (uint32_t layer = 0; layer < 2; ++layer)
            h.append(3, 1, layer);
    h.check();
    REQUIRE(cache.get_seq_length() == 10);
    REQUIRE(pool.stats().used_blocks == 3 * 3);  // 10 tokens in pages of 4, for each of 3 rows
    REQUIRE(ctx.counters().dispatches > 0);
}

}  // namespace

TEST_CASE("an adopted device runs a dynamic cache and is left for its host to destroy") {
    HostVulkan host;
    require_no_messages(host);
    {
        Context ctx = Context::adopt(host.external());
        REQUIRE(ctx.device_name().size() > 0);
        run_dynamic_cache(ctx, host.storage16);
        // Messages go to the host's messenger; the library installs none of its own.
        REQUIRE(ctx.validation_messages().empty());
    }
    // Every pagedkv object is gone: the device and queue are still the host's to use.
    REQUIRE(vkDeviceWaitIdle(host.device) == VK_SUCCESS);
    REQUIRE(vkQueueWaitIdle(host.queue) == VK_SUCCESS);
    require_no_messages(host);
    host.destroy();
    require_no_messages(host);
}

TEST_CASE("an adopted device outlives a context whose tensors and pool are dropped later") {
    HostVulkan host;
    {
        std::vector<float> data(2 * 3 * 4, 1.5f);
        Tensor kept;
        {
            Context ctx = Context::adopt(host.external());
            kept = Tensor::from_host(ctx, data, {2, 3, 4});
        }
        // The tensor keeps the adopted device wrapper alive after its Context is gone.
        REQUIRE(kept.to_host() == data);
    }
    require_no_messages(host);
    host.destroy();
    require_no_messages(host);
}

TEST_CASE("two contexts may adopt the same device one after the other") {
    HostVulkan host;
    for (int round = 0; round < 2; ++round) {
        Context ctx = Context::adopt(host.external());
        run_dynamic_cache(ctx, host.storage16);
    }
    require_no_messages(host);
    host.destroy();
    require_no_messages(host);
}

TEST_CASE("adopt rejects missing handles, a bad queue family and a foreign loader") {
    HostVulkan host;
    auto code_of = [](const ExternalVulkan& e) {
        try {
            Context::adopt(e);
        } catch (const Error& err) {
            UNSCOPED_INFO(err.what());
            return err.code();
        }
        FAIL("adopt accepted invalid handles");
        return ErrorCode::NotImplemented;
    };
    ExternalVulkan no_queue = host.external();
    no_queue.queue = VK_NULL_HANDLE;
    CHECK(code_of(no_queue) == ErrorCode::InvalidArgument);
    ExternalVulkan no_device = host.external();
    no_device.device = VK_NULL_HANDLE;
    CHECK(code_of(no_device) == ErrorCode::InvalidArgument);

    ExternalVulkan bad_family = host.external();
    bad_family.queue_family = 99;
    CHECK(code_of(bad_family) == ErrorCode::InvalidArgument);
    try {
        Context::adopt(bad_family);
    } catch (const Error& e) {
        CHECK(std::string(e.what()).find("queue_family 99") != std::string::npos);
    }

    ExternalVulkan foreign = host.external();
    foreign.get_instance_proc_addr = &foreign_loader_entry;
    CHECK(code_of(foreign) == ErrorCode::Unsupported);

    // The failed adoptions touched nothing: the host tears down without a message.
    require_no_messages(host);
    host.destroy();
    require_no_messages(host);
}

TEST_CASE("an adopted device without 16-bit storage enabled refuses odd f16 rows cleanly") {
    // The physical device supports storageBuffer16BitAccess but the host did not enable it:
    // the library must go by what was enabled, or its 16-bit shader trips the validation layer.
    HostVulkan host(/*enable_storage16=*/false);
    REQUIRE_FALSE(host.storage16);
    {
        Context ctx = Context::adopt(host.external());
        try {
            BlockPool pool(ctx, small_config(DType::F16, 1, 2, 5, 4, 8));
            FAIL("a pool of 10-byte rows was accepted without 16-bit storage");
        } catch (const Error& e) {
            INFO(e.what());
            CHECK(e.code() == ErrorCode::Unsupported);
            CHECK(std::string(e.what()).find("storageBuffer16BitAccess") != std::string::npos);
        }
        // f32 pages gathered into f16 (compute_dtype) convert odd rows: refused the same way.
        PoolConfig c = small_config(DType::F32, 1, 2, 5, 4, 8);
        c.compute_dtype = DType::F16;
        try {
            BlockPool pool(ctx, c);
            FAIL("an f32 pool of odd rows computing in f16 was accepted without 16-bit storage");
        } catch (const Error& e) {
            INFO(e.what());
            CHECK(e.code() == ErrorCode::Unsupported);
            CHECK(std::string(e.what()).find("compute dtype f16") != std::string::npos);
        }
        // Even head dims use 32-bit words and need nothing more.
        run_dynamic_cache(ctx, false);
    }
    require_no_messages(host);
    host.destroy();
    require_no_messages(host);
}
