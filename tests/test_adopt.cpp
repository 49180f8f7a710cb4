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
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

// Every message the validation layer sends to the host's messenger.
struct MessageLog {
    std::mutex mutex;
    std::vector<std::string> messages;
};

VKAPI_ATTR VkBool32 VKAPI_CALL record_message(VkDebugUtilsMessageSeverityFlagBitsEXT,
                                              VkDebugUtilsMessageTypeFlagsEXT,
                                              const VkDebugUtilsMessengerCallbackDataEXT* data,
                                              void* user) {
    auto* log = static_cast<MessageLog*>(user);
    std::lock_guard lock(log->mutex);
    log->messages.emplace_back(data && data->pMessage ? data->pMessage : "(no text)");
    return VK_FALSE;
}

// What a host runtime would own: everything is created here and destroyed by destroy(),
// never by the library.
struct HostVulkan {
    MessageLog log;
    VkInstance instance = VK_NULL_HANDLE;
    VkDebugUtilsMessengerEXT messenger = VK_NULL_HANDLE;
    VkPhysicalDevice physical = VK_NULL_HANDLE;
    VkDevice device = VK_NULL_HANDLE;
    VkQueue queue = VK_NULL_HANDLE;
    uint32_t family = 0;
    bool storage16 = false;

    // enable_storage16: enable storageBuffer16BitAccess and shaderInt16 where supported.
    explicit HostVulkan(bool enable_storage16 = true) {
        VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
        app.pApplicationName = "pagedkv adopt test host";
        app.apiVersion = VK_API_VERSION_1_2;
        const char* layer = "VK_LAYER_KHRONOS_validation";
        const char* extension = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
        VkDebugUtilsMessengerCreateInfoEXT dbg{
            VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
        dbg.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                              VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
        dbg.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                          VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
        dbg.pfnUserCallback = record_message;
        dbg.pUserData = &log;
        VkInstanceCreateInfo ici{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
        ici.pNext = &dbg;
        ici.pApplicationInfo = &app;
        ici.enabledLayerCount = 1;
        ici.ppEnabledLayerNames = &layer;
        ici.enabledExtensionCount = 1;
        ici.ppEnabledExtensionNames = &extension;
        REQUIRE(vkCreateInstance(&ici, nullptr, &instance) == VK_SUCCESS);
        auto create_messenger = reinterpret_cast<PFN_vkCreateDebugUtilsMessengerEXT>(
            vkGetInstanceProcAddr(instance, "vkCreateDebugUtilsMessengerEXT"));
        REQUIRE(create_messenger);
        REQUIRE(create_messenger(instance, &dbg, nullptr, &messenger) == VK_SUCCESS);

        uint32_t n = 0;
        vkEnumeratePhysicalDevices(instance, &n, nullptr);
        std::vector<VkPhysicalDevice> devices(n);
        vkEnumeratePhysicalDevices(instance, &n, devices.data());
        VkPhysicalDeviceVulkan11Features v11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
        VkPhysicalDeviceVulkan12Features v12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
        VkPhysicalDeviceFeatures2 core{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
        for (VkPhysicalDevice pd : devices) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(pd, &p);
            core.pNext = &v11;
            v11.pNext = &v12;
            v12.pNext = nullptr;
            vkGetPhysicalDeviceFeatures2(pd, &core);
            if (p.apiVersion >= VK_API_VERSION_1_2 && v12.bufferDeviceAddress &&
                core.features.shaderInt64) {
                physical = pd;
                break;
            }
        }
        REQUIRE(physical != VK_NULL_HANDLE);
        storage16 = enable_storage16 && v11.storageBuffer16BitAccess == VK_TRUE &&
                    core.features.shaderInt16 == VK_TRUE;

        uint32_t nq = 0;
        vkGetPhysicalDeviceQueueFamilyProperties(physical, &nq, nullptr);
        std::vector<VkQueueFamilyProperties> families(nq);
        vkGetPhysicalDeviceQueueFamilyProperties(physical, &nq, families.data());
        const auto compute = std::find_if(families.begin(), families.end(), [](const auto& f) {
            return (f.queueFlags & VK_QUEUE_COMPUTE_BIT) != 0;
        });
        REQUIRE(compute != families.end());
        family = uint32_t(compute - families.begin());

        // Exactly the features pagedkv documents, nothing it merely might like.
        VkPhysicalDeviceVulkan11Features e11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
        VkPhysicalDeviceVulkan12Features e12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
        VkPhysicalDeviceFeatures2 enable{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
        enable.pNext = &e11;
        e11.pNext = &e12;
        enable.features.shaderInt64 = VK_TRUE;
        enable.features.shaderInt16 = storage16 ? VK_TRUE : VK_FALSE;
        e11.storageBuffer16BitAccess = storage16 ? VK_TRUE : VK_FALSE;
        e12.bufferDeviceAddress = VK_TRUE;
        const float priority = 1.0f;
        VkDeviceQueueCreateInfo qci{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
        qci.queueFamilyIndex = family;
        qci.queueCount = 1;
        qci.pQueuePriorities = &priority;
        VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
        dci.pNext = &enable;
        dci.queueCreateInfoCount = 1;
        dci.pQueueCreateInfos = &qci;
        REQUIRE(vkCreateDevice(physical, &dci, nullptr, &device) == VK_SUCCESS);
        vkGetDeviceQueue(device, family, 0, &queue);
    }

    ExternalVulkan external() const {
        ExternalVulkan e;
        e.instance = instance;
        e.physical_device = physical;
        e.device = device;
        e.queue = queue;
        e.queue_family = family;
        e.int16_storage = storage16;
        e.get_instance_proc_addr = &vkGetInstanceProcAddr;
        return e;
    }

    // The host's teardown. The layer reports a double destroy and every child object the
    // library left alive on the device, so the log proves the library freed what it made and
    // destroyed nothing it did not.
    void destroy() {
        if (device) {
            vkDestroyDevice(device, nullptr);
            device = VK_NULL_HANDLE;
        }
        if (messenger) {
            auto destroy_messenger = reinterpret_cast<PFN_vkDestroyDebugUtilsMessengerEXT>(
                vkGetInstanceProcAddr(instance, "vkDestroyDebugUtilsMessengerEXT"));
            destroy_messenger(instance, messenger, nullptr);
            messenger = VK_NULL_HANDLE;
        }
        if (instance) {
            vkDestroyInstance(instance, nullptr);
            instance = VK_NULL_HANDLE;
        }
    }
    ~HostVulkan() { destroy(); }

    std::vector<std::string> take_messages() {
        std::lock_guard lock(log.mutex);
        return std::exchange(log.messages, {});
    }
};

// Stands in for the entry point of a loader other than the one pagedkv is linked with.
VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL foreign_loader_entry(VkInstance, const char*) {
    return nullptr;
}

void require_no_messages(HostVulkan& host) {
    const auto messages = host.take_messages();
    for (const auto& m : messages)
        UNSCOPED_INFO(m);
    REQUIRE(messages.empty());
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
        // Even head dims use 32-bit words and need nothing more.
        run_dynamic_cache(ctx, false);
    }
    require_no_messages(host);
    host.destroy();
    require_no_messages(host);
}
