#include "shaders/vulkan/device.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"

namespace pagedkv::detail {

void vk_check(VkResult r, const char* what) {
    if (r != VK_SUCCESS)
        throw Error(ErrorCode::Vulkan, fmt::format("{} failed: VkResult {}", what, int(r)), r);
}

namespace {

std::atomic<int> g_live_devices{0};

constexpr const char* kValidationLayer = "VK_LAYER_KHRONOS_validation";

bool env_flag(const char* name) {
    const char* v = std::getenv(name);
    return v && *v && std::strcmp(v, "0") != 0;
}

VKAPI_ATTR VkBool32 VKAPI_CALL on_debug_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                VkDebugUtilsMessageTypeFlagsEXT,
                                                const VkDebugUtilsMessengerCallbackDataEXT* data,
                                                void* user) {
    const char* level =
        severity >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT ? "error" : "warning";
    static_cast<Device*>(user)->add_validation_message(
        fmt::format("[{}] {}", level, data && data->pMessage ? data->pMessage : "(no text)"));
    return VK_FALSE;
}

bool has_layer(const char* name) {
    uint32_t n = 0;
    vkEnumerateInstanceLayerProperties(&n, nullptr);
    std::vector<VkLayerProperties> layers(n);
    vkEnumerateInstanceLayerProperties(&n, layers.data());
    return std::any_of(layers.begin(), layers.end(), [&](const VkLayerProperties& l) {
        return std::strcmp(l.layerName, name) == 0;
    });
}

int device_score(VkPhysicalDeviceType t) {
    switch (t) {
        case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
            return 4;
        case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
            return 3;
        case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
            return 2;
        case VK_PHYSICAL_DEVICE_TYPE_CPU:
            return 1;
        default:
            return 0;
    }
}

struct Features {
    VkPhysicalDeviceFeatures2 core{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
    VkPhysicalDeviceVulkan11Features v11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
    VkPhysicalDeviceVulkan12Features v12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    Features() {
        core.pNext = &v11;
        v11.pNext = &v12;
    }
    Features(const Features&) = delete;
};

// Why a device cannot run pagedkv, or "" when it can.
std::string unusable_reason(VkPhysicalDevice pd) {
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(pd, &p);
    if (p.apiVersion < VK_API_VERSION_1_2) return "needs Vulkan 1.2";
    Features f;
    vkGetPhysicalDeviceFeatures2(pd, &f.core);
    if (!f.v12.bufferDeviceAddress) return "no bufferDeviceAddress";
    if (!f.core.features.shaderInt64) return "no shaderInt64";
    return {};
}

}  // namespace

std::shared_ptr<Device> Device::create(const ContextOptions& opts) {
    std::shared_ptr<Device> d(new Device());
    d->owns_ = true;
    const bool validation = opts.enable_validation || env_flag("PAGEDKV_VALIDATION");
    if (validation && !has_layer(kValidationLayer))
        throw Error(ErrorCode::Unsupported,
                    "validation requested but VK_LAYER_KHRONOS_validation is not installed "
                    "(Debian: apt-get install vulkan-validationlayers)");

    uint32_t instance_version = VK_API_VERSION_1_0;
    vkEnumerateInstanceVersion(&instance_version);
    if (instance_version < VK_API_VERSION_1_2)
        throw Error(ErrorCode::Unsupported, "pagedkv needs a Vulkan 1.2 loader");

    VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "pagedkv";
    app.pEngineName = "pagedkv";
    app.apiVersion = std::min<uint32_t>(instance_version, VK_API_VERSION_1_3);
    std::vector<const char*> layers, extensions;
    if (validation) {
        layers.push_back(kValidationLayer);
        extensions.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
    }
    VkDebugUtilsMessengerCreateInfoEXT dbg{VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
    dbg.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                          VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
    dbg.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                      VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
    dbg.pfnUserCallback = on_debug_message;
    dbg.pUserData = d.get();

    VkInstanceCreateInfo ici{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    ici.pApplicationInfo = &app;
    ici.enabledLayerCount = uint32_t(layers.size());
    ici.ppEnabledLayerNames = layers.data();
    ici.enabledExtensionCount = uint32_t(extensions.size());
    ici.ppEnabledExtensionNames = extensions.data();
    if (validation) ici.pNext = &dbg;  // also catches messages from instance creation
    vk_check(vkCreateInstance(&ici, nullptr, &d->instance_), "vkCreateInstance");
    if (validation) {
        auto create = reinterpret_cast<PFN_vkCreateDebugUtilsMessengerEXT>(
            vkGetInstanceProcAddr(d->instance_, "vkCreateDebugUtilsMessengerEXT"));
        if (!create) throw Error(ErrorCode::Unsupported, "VK_EXT_debug_utils is not available");
        vk_check(create(d->instance_, &dbg, nullptr, &d->messenger_),
                 "vkCreateDebugUtilsMessengerEXT");
    }

    uint32_t n = 0;
    vk_check(vkEnumeratePhysicalDevices(d->instance_, &n, nullptr), "vkEnumeratePhysicalDevices");
    std::vector<VkPhysicalDevice> devices(n);
    vk_check(vkEnumeratePhysicalDevices(d->instance_, &n, devices.data()),
             "vkEnumeratePhysicalDevices");
    if (devices.empty())
        throw Error(
            ErrorCode::Unsupported,
            "no Vulkan device found (for a CPU device: apt-get install mesa-vulkan-drivers)");
    if (opts.device_index >= 0) {
        if (size_t(opts.device_index) >= devices.size())
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("device_index {} out of range: {} Vulkan devices",
                                    opts.device_index, devices.size()));
        std::string why = unusable_reason(devices[size_t(opts.device_index)]);
        if (!why.empty())
            throw Error(ErrorCode::Unsupported,
                        fmt::format("device {} cannot run pagedkv: {}", opts.device_index, why));
        d->physical_ = devices[size_t(opts.device_index)];
    } else {
        int best = -1;
        std::string reasons;
        for (VkPhysicalDevice pd : devices) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(pd, &p);
            std::string why = unusable_reason(pd);
            if (!why.empty()) {
                reasons += fmt::format(" {}: {};", p.deviceName, why);
                continue;
            }
            if (device_score(p.deviceType) > best) {
                best = device_score(p.deviceType);
                d->physical_ = pd;
            }
        }
        if (!d->physical_)
            throw Error(ErrorCode::Unsupported, "no usable Vulkan device:" + reasons);
    }

    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(d->physical_, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> families(nq);
    vkGetPhysicalDeviceQueueFamilyProperties(d->physical_, &nq, families.data());
    bool found = false;
    // Prefer a family with compute but no graphics (an async compute queue), else any compute.
    for (int pass = 0; pass < 2 && !found; ++pass)
        for (uint32_t i = 0; i < nq && !found; ++i) {
            const VkQueueFlags f = families[i].queueFlags;
            if (!(f & VK_QUEUE_COMPUTE_BIT)) continue;
            if (pass == 0 && (f & VK_QUEUE_GRAPHICS_BIT)) continue;
            d->family_ = i;
            found = true;
        }
    if (!found) throw Error(ErrorCode::Unsupported, "the device has no compute queue");

    Features supported;
    vkGetPhysicalDeviceFeatures2(d->physical_, &supported.core);
    Features enable;
    enable.core.features.shaderInt64 = VK_TRUE;
    enable.core.features.shaderInt16 = supported.core.features.shaderInt16;
    enable.v11.storageBuffer16BitAccess = supported.v11.storageBuffer16BitAccess;
    enable.v12.bufferDeviceAddress = VK_TRUE;
    enable.v12.storageBuffer8BitAccess = supported.v12.storageBuffer8BitAccess;
    enable.v12.shaderFloat16 = supported.v12.shaderFloat16;
    enable.v12.shaderInt8 = supported.v12.shaderInt8;
    enable.v12.timelineSemaphore = supported.v12.timelineSemaphore;

    const float priority = 1.0f;
    VkDeviceQueueCreateInfo qci{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    qci.queueFamilyIndex = d->family_;
    qci.queueCount = 1;
    qci.pQueuePriorities = &priority;
    VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    dci.pNext = &enable.core;
    dci.queueCreateInfoCount = 1;
    dci.pQueueCreateInfos = &qci;
    vk_check(vkCreateDevice(d->physical_, &dci, nullptr, &d->device_), "vkCreateDevice");
    vkGetDeviceQueue(d->device_, d->family_, 0, &d->queue_);

    vkGetPhysicalDeviceProperties(d->physical_, &d->props_);
    // The 16-bit shader variant declares the Int16 capability as well as 16-bit storage.
    d->init_common(enable.v11.storageBuffer16BitAccess == VK_TRUE &&
                   enable.core.features.shaderInt16 == VK_TRUE);
    const bool uma = d->props_.deviceType == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU ||
                     d->props_.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    d->map_tensors_ = uma && !opts.force_staging;
    d->paths_ = {opts.scatter_path, opts.gather_path};
    return d;
}

std::shared_ptr<Device> Device::adopt(const ExternalVulkan& ext) {
    if (!ext.instance || !ext.physical_device || !ext.device || !ext.queue)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("adopt: instance, physical_device, device and queue must all be "
                                "set (got instance {}, physical_device {}, device {}, queue {})",
                                ext.instance ? "set" : "null", ext.physical_device ? "set" : "null",
                                ext.device ? "set" : "null", ext.queue ? "set" : "null"));
    // Handles made through another loader dispatch through tables this loader does not know.
    if (ext.get_instance_proc_addr && ext.get_instance_proc_addr != &vkGetInstanceProcAddr)
        throw Error(ErrorCode::Unsupported,
                    "adopt: get_instance_proc_addr is not the vkGetInstanceProcAddr of the Vulkan "
                    "loader pagedkv is linked with; pass nullptr or that loader's");

    std::string why = unusable_reason(ext.physical_device);
    if (!why.empty())
        throw Error(ErrorCode::Unsupported,
                    fmt::format("adopt: device cannot run pagedkv: {}", why));

    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(ext.physical_device, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> families(nq);
    vkGetPhysicalDeviceQueueFamilyProperties(ext.physical_device, &nq, families.data());
    if (ext.queue_family >= nq)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("adopt: queue_family {} out of range: the device has {} queue "
                                "families",
                                ext.queue_family, nq));
    if (!(families[ext.queue_family].queueFlags & VK_QUEUE_COMPUTE_BIT))
        throw Error(ErrorCode::Unsupported,
                    fmt::format("adopt: queue family {} has no VK_QUEUE_COMPUTE_BIT (flags {:#x})",
                                ext.queue_family, families[ext.queue_family].queueFlags));

    Features supported;
    vkGetPhysicalDeviceFeatures2(ext.physical_device, &supported.core);
    if (ext.int16_storage &&
        !(supported.v11.storageBuffer16BitAccess && supported.core.features.shaderInt16))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("adopt: int16_storage is set but the physical device lacks "
                                "{}",
                                supported.core.features.shaderInt16 ? "storageBuffer16BitAccess"
                                                                    : "shaderInt16"));

    std::shared_ptr<Device> d(new Device());
    d->owns_ = false;
    d->instance_ = ext.instance;
    d->physical_ = ext.physical_device;
    d->device_ = ext.device;
    d->queue_ = ext.queue;
    d->family_ = ext.queue_family;
    vkGetPhysicalDeviceProperties(d->physical_, &d->props_);
    // What the device supports is not what the host enabled: only the host can tell.
    d->init_common(ext.int16_storage);
    d->map_tensors_ = d->props_.deviceType == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU ||
                      d->props_.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    return d;
}

int Device::live_count() noexcept {
    return g_live_devices.load();
}

void Device::init_common(bool enable_16bit) {
    ++g_live_devices;
    storage16_ = enable_16bit;
    VkPhysicalDeviceSubgroupProperties sub{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceProperties2 props2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    props2.pNext = &sub;
    vkGetPhysicalDeviceProperties2(physical_, &props2);
    const VkSubgroupFeatureFlags need =
        VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT;
    subgroup_arithmetic_ = (sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                           (sub.supportedOperations & need) == need && sub.subgroupSize >= 1 &&
                           sub.subgroupSize <= 64;
    vkGetPhysicalDeviceMemoryProperties(physical_, &mem_props_);
    // The largest buffer and allocation the device takes (Vulkan 1.1 maintenance3, 1.3
    // maintenance4): slab size, since every kernel reaches pages by address and no slab is
    // bound through a descriptor (maxStorageBufferRange does not apply).
    VkPhysicalDeviceMaintenance4Properties m4{
        VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_4_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties m3{
        VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
    const bool has_m4 = props_.apiVersion >= VK_API_VERSION_1_3;
    if (has_m4) m3.pNext = &m4;
    VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    p2.pNext = &m3;
    vkGetPhysicalDeviceProperties2(physical_, &p2);
    max_buffer_bytes_ = m3.maxMemoryAllocationSize;
    if (has_m4 && m4.maxBufferSize)
        max_buffer_bytes_ = std::min(max_buffer_bytes_, m4.maxBufferSize);
    if (max_buffer_bytes_ == 0) max_buffer_bytes_ = props_.limits.maxStorageBufferRange;
    buffer_cache_ = std::make_unique<BufferCache>(uint64_t(512) << 20);
    batches_ = std::make_unique<Batches>(*this);
}

Device::~Device() {
    if (batches_) --g_live_devices;
    if (device_) {
        // An adopted device also runs the host's work: wait for ours only (so does Batches'
        // destructor).
        if (owns_) {
            vkDeviceWaitIdle(device_);
        } else if (batches_) {
            try {
                batches_->wait_all();
            } catch (const Error&) {
                // A lost device: nothing left to wait for.
            }
        }
        batches_.reset();  // may hand tensor buffers back to the cache: clear it after
        buffer_cache_.reset();
        for (auto& [name, p] : pipelines_) {
            vkDestroyPipeline(device_, p.pipeline, nullptr);
            vkDestroyPipelineLayout(device_, p.layout, nullptr);
        }
    }
    if (!owns_) return;
    if (device_) vkDestroyDevice(device_, nullptr);
    if (messenger_) {
        auto destroy = reinterpret_cast<PFN_vkDestroyDebugUtilsMessengerEXT>(
            vkGetInstanceProcAddr(instance_, "vkDestroyDebugUtilsMessengerEXT"));
        if (destroy) destroy(instance_, messenger_, nullptr);
    }
    if (instance_) vkDestroyInstance(instance_, nullptr);
}

uint32_t Device::memory_type(uint32_t type_bits, VkMemoryPropertyFlags required,
                             VkMemoryPropertyFlags preferred) const {
    for (int pass = 0; pass < 2; ++pass) {
        const VkMemoryPropertyFlags want = pass == 0 ? (required | preferred) : required;
        for (uint32_t i = 0; i < mem_props_.memoryTypeCount; ++i)
            if ((type_bits & (1u << i)) && (mem_props_.memoryTypes[i].propertyFlags & want) == want)
                return i;
    }
    throw Error(ErrorCode::Unsupported,
                fmt::format("no memory type with property flags {:#x}", required));
}

uint64_t Device::max_buffer_bytes() const noexcept {
    return max_buffer_bytes_;
}

void Device::fail_allocations(MemoryKind kind, int64_t after) noexcept {
    std::lock_guard lock(fail_mutex_);
    fail_kind_ = kind;
    fail_after_ = after;
}

bool Device::injected_allocation_failure(MemoryKind kind) noexcept {
    std::lock_guard lock(fail_mutex_);
    if (fail_after_ < 0 || kind != fail_kind_) return false;
    if (fail_after_ == 0) return true;
    --fail_after_;
    return false;
}

uint64_t Device::device_local_heap_bytes() const {
    const uint32_t type = memory_type(~0u, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0);
    return mem_props_.memoryHeaps[mem_props_.memoryTypes[type].heapIndex].size;
}

const Device::Pipeline& Device::pipeline(const char* name, std::span<const uint32_t> spirv,
                                         uint32_t push_constant_bytes) {
    auto it = pipelines_.find(name);
    if (it != pipelines_.end()) return it->second;

    VkShaderModuleCreateInfo smci{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
    smci.codeSize = spirv.size_bytes();
    smci.pCode = spirv.data();
    VkShaderModule module;
    vk_check(vkCreateShaderModule(device_, &smci, nullptr, &module), "vkCreateShaderModule");

    Pipeline p;
    VkPushConstantRange range{VK_SHADER_STAGE_COMPUTE_BIT, 0, push_constant_bytes};
    VkPipelineLayoutCreateInfo plci{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
    plci.pushConstantRangeCount = 1;
    plci.pPushConstantRanges = &range;
    VkResult r = vkCreatePipelineLayout(device_, &plci, nullptr, &p.layout);
    if (r != VK_SUCCESS) {
        vkDestroyShaderModule(device_, module, nullptr);
        vk_check(r, "vkCreatePipelineLayout");
    }
    const uint32_t wg = workgroup_size();
    VkSpecializationMapEntry entry{0, 0, sizeof(uint32_t)};
    VkSpecializationInfo spec{1, &entry, sizeof(wg), &wg};
    VkComputePipelineCreateInfo cpci{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
    cpci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
    cpci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    cpci.stage.module = module;
    cpci.stage.pName = "main";
    cpci.stage.pSpecializationInfo = &spec;
    cpci.layout = p.layout;
    r = vkCreateComputePipelines(device_, VK_NULL_HANDLE, 1, &cpci, nullptr, &p.pipeline);
    vkDestroyShaderModule(device_, module, nullptr);
    if (r != VK_SUCCESS) {
        vkDestroyPipelineLayout(device_, p.layout, nullptr);
        vk_check(r, "vkCreateComputePipelines");
    }
    return pipelines_.emplace(name, p).first->second;
}

std::vector<std::string> Device::validation_messages() const {
    std::lock_guard lock(messages_mutex_);
    return messages_;
}

void Device::clear_validation_messages() {
    std::lock_guard lock(messages_mutex_);
    messages_.clear();
}

void Device::add_validation_message(std::string m) {
    std::lock_guard lock(messages_mutex_);
    messages_.push_back(std::move(m));
}

void Device::synchronize_quietly() noexcept {
    try {
        synchronize();
    } catch (const Error&) {
    }
}

Device::CallLock::CallLock(Device& dev) : dev_(dev) {
    dev_.mutex_.lock();
    ++dev_.call_depth_;
}

Device::CallLock::~CallLock() {
    if (--dev_.call_depth_ == 0 && dev_.batches_) dev_.batches_->end_call();
    dev_.mutex_.unlock();
}

void Device::synchronize() {
    std::lock_guard lock(mutex_);
    batches_->wait_all();
}

}  // namespace pagedkv::detail
