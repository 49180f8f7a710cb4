// HostVulkan: what a host runtime owns, made by hand with a validation layer and a debug
// messenger of the host's, so the host sees every message: the instance, a device with exactly
// the features pagedkv documents for adoption, and a compute queue. Used by the adopt and
// embedding tests.
#pragma once

#include <vulkan/vulkan_core.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "pagedkv/context.hpp"

namespace pagedkv::test {

// Every message the validation layer sends to the host's messenger.
struct MessageLog {
    std::mutex mutex;
    std::vector<std::string> messages;
};

inline VKAPI_ATTR VkBool32 VKAPI_CALL
record_message(VkDebugUtilsMessageSeverityFlagBitsEXT, VkDebugUtilsMessageTypeFlagsEXT,
               const VkDebugUtilsMessengerCallbackDataEXT* data, void* user) {
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

inline void require_no_messages(HostVulkan& host) {
    const auto messages = host.take_messages();
    for (const auto& m : messages)
        UNSCOPED_INFO(m);
    REQUIRE(messages.empty());
}

// Runs body on a context adopted from a fresh host, then checks that the host tears down
// cleanly: no validation message before or after it destroys its device and instance (the
// layer reports objects the library left behind or destroyed twice).
template <class Body>
void on_adopted_device(Body&& body) {
    HostVulkan host;
    {
        Context ctx = Context::adopt(host.external());
        body(host, ctx);
    }
    require_no_messages(host);
    host.destroy();
    require_no_messages(host);
}

}  // namespace pagedkv::test
