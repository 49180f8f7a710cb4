// Device: one Vulkan device and queue, owned or adopted, with the memory-type choice, the
// validation-message sink, the compute pipelines and the batch being recorded.
// Shared by Context, tensors and pools; never reached by users directly.
#pragma once

#include <vulkan/vulkan_core.h>

#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "pagedkv/context.hpp"
#include "pagedkv/page_layout.hpp"
#include "shaders/vulkan/buffer.hpp"

namespace pagedkv::detail {

class Batches;

// Throws Error(Vulkan) naming the call when r is not VK_SUCCESS.
void vk_check(VkResult r, const char* what);

class Device {
  public:
    static std::shared_ptr<Device> create(const ContextOptions& opts);
    static std::shared_ptr<Device> adopt(const ExternalVulkan& ext);
    ~Device();
    Device(const Device&) = delete;
    Device& operator=(const Device&) = delete;

    VkDevice handle() const noexcept { return device_; }
    VkPhysicalDevice physical() const noexcept { return physical_; }
    VkQueue queue() const noexcept { return queue_; }
    uint32_t queue_family() const noexcept { return family_; }
    const VkPhysicalDeviceProperties& properties() const noexcept { return props_; }
    const VkPhysicalDeviceMemoryProperties& memory() const noexcept { return mem_props_; }
    bool is_cpu() const noexcept { return props_.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU; }
    bool has_16bit_storage() const noexcept { return storage16_; }
    // Whether compute shaders may use GL_KHR_shader_subgroup_arithmetic (subgroupMax,
    // subgroupAdd) with subgroups of at most 64 invocations.
    bool has_subgroup_arithmetic() const noexcept { return subgroup_arithmetic_; }

    // Whether tensors live in memory the host can map (UMA, lavapipe, large-BAR GPUs).
    bool map_tensors() const noexcept { return map_tensors_; }
    // A memory type with all of `required`, preferring one that also has `preferred`.
    uint32_t memory_type(uint32_t type_bits, VkMemoryPropertyFlags required,
                         VkMemoryPropertyFlags preferred) const;
    // Largest single buffer / allocation the device accepts (maintenance3/4 limits).
    uint64_t max_buffer_bytes() const noexcept;
    // Size of the memory heap that device-local buffers (the pool's slabs) come from.
    uint64_t device_local_heap_bytes() const;

    Batches& batches() { return *batches_; }
    BufferCache& buffer_cache() { return *buffer_cache_; }
    // One lock for everything recorded on this device (queue, batches, pipelines).
    std::recursive_mutex& mutex() { return mutex_; }
    // The device lock held for one library call. Calls nest (an update takes it again for its
    // gather); when the outermost one ends, Batches::end_call() runs, which closes the call's
    // commands with a barrier when they went into a caller's command buffer.
    class CallLock {
      public:
        explicit CallLock(Device& dev);
        ~CallLock();
        CallLock(const CallLock&) = delete;
        CallLock& operator=(const CallLock&) = delete;

      private:
        Device& dev_;
    };
    DeviceCounters& counters() { return counters_; }

    // A compute pipeline for one of the embedded SPIR-V modules, made on first use.
    struct Pipeline {
        VkPipeline pipeline = VK_NULL_HANDLE;
        VkPipelineLayout layout = VK_NULL_HANDLE;
    };
    const Pipeline& pipeline(const char* name, std::span<const uint32_t> spirv,
                             uint32_t push_constant_bytes);
    uint32_t workgroup_size() const noexcept { return 64; }

    std::vector<std::string> validation_messages() const;
    void clear_validation_messages();
    void add_validation_message(std::string m);

    // Waits for all work and releases what finished batches kept alive.
    void synchronize();
    // synchronize() for destructors: a lost device leaves nothing to wait for, and no throw.
    void synchronize_quietly() noexcept;

    struct BytePaths {
        BytePath scatter = BytePath::Auto;
        BytePath gather = BytePath::Auto;
        bool whole_rows = false;  // shader threads move whole rows (CPU devices) or words
    };
    // The paths chosen by options, or by measurement on first use (resolve_byte_paths()).
    const BytePaths& byte_paths() const noexcept { return paths_; }
    void set_byte_paths(BytePaths p) noexcept { paths_ = p; }

    // The page layout PageLayout::Auto stands for on this device: Auto until measured
    // (resolve_page_layout() in shaders/store/), then HeadMajor or TokenMajor.
    PageLayout page_layout() const noexcept { return page_layout_; }
    void set_page_layout(PageLayout l) noexcept { page_layout_ = l; }

    // Devices alive in this process (a leak shows up here before a driver runs out).
    static int live_count() noexcept;

    // For tests of the out-of-memory paths: once `after` more buffers of this kind have been
    // made, making one throws as a failed vkAllocateMemory would (negative: never fail).
    void fail_allocations(MemoryKind kind, int64_t after) noexcept;
    // Counts one buffer of this kind; true when it must fail.
    bool injected_allocation_failure(MemoryKind kind) noexcept;

    // For tests of the attention kernel's paths (shaders/kernels/attention.cpp): which
    // variant and split it takes, instead of what the device and the shape suggest.
    struct AttentionPaths {
        bool no_subgroups = false;  // the shared-memory reductions even where subgroups work
        uint32_t chunk_tokens = 0;  // 0: the host's rule; kNoSplit: never split; else this
    };
    static constexpr uint32_t kNoSplit = 0xFFFFFFFFu;
    const AttentionPaths& attention_paths() const noexcept { return attention_paths_; }
    void set_attention_paths(AttentionPaths p) noexcept { attention_paths_ = p; }

  private:
    Device() = default;
    void init_common(bool enable_16bit);

    bool owns_ = false;
    VkInstance instance_ = VK_NULL_HANDLE;
    VkDebugUtilsMessengerEXT messenger_ = VK_NULL_HANDLE;
    VkPhysicalDevice physical_ = VK_NULL_HANDLE;
    VkDevice device_ = VK_NULL_HANDLE;
    VkQueue queue_ = VK_NULL_HANDLE;
    uint32_t family_ = 0;
    VkPhysicalDeviceProperties props_{};
    VkPhysicalDeviceMemoryProperties mem_props_{};
    uint64_t max_buffer_bytes_ = 0;
    bool storage16_ = false;
    bool subgroup_arithmetic_ = false;
    AttentionPaths attention_paths_;
    BytePaths paths_;
    PageLayout page_layout_ = PageLayout::Auto;
    bool map_tensors_ = false;

    std::unique_ptr<Batches> batches_;
    std::unique_ptr<BufferCache> buffer_cache_;
    std::map<std::string, Pipeline> pipelines_;
    std::recursive_mutex mutex_;
    uint32_t call_depth_ = 0;  // CallLocks held (guarded by mutex_)
    DeviceCounters counters_;

    std::mutex fail_mutex_;
    MemoryKind fail_kind_ = MemoryKind::Tensor;
    int64_t fail_after_ = -1;

    mutable std::mutex messages_mutex_;
    std::vector<std::string> messages_;
};

}  // namespace pagedkv::detail
