// Context: the Vulkan device pagedkv records its work on (its own, or one adopted from a host
// runtime). Movable, not copyable; tensors and pools keep the device alive after it is gone.
#pragma once

#include "pagedkv/export.h"

#include <vulkan/vulkan_core.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pagedkv {

namespace detail {
class Device;
struct Access;
}  // namespace detail

// How K/V bytes move between tensors and pages: a compute shader, or transfer commands
// (vkCmdCopyBuffer with one region per head and run of page slots). Which is faster depends on
// the device (copy commands on lavapipe, shaders on most discrete GPUs); Auto measures both
// on the device when its first pool is made and keeps the faster for scatter and for gather.
enum class BytePath : uint8_t { Auto, Shader, CopyCommands };

struct ContextOptions {
    // Index into vkEnumeratePhysicalDevices; -1 picks a discrete GPU, then an integrated
    // one, then anything else (a CPU implementation such as lavapipe).
    int device_index = -1;
    // Khronos validation layer with every message collected (see validation_messages()).
    // Also switched on by the environment variable PAGEDKV_VALIDATION=1.
    bool enable_validation = false;
    // Keep tensors in device-local memory reached through staging copies even where the
    // device offers host-visible device memory (exercises the discrete-GPU path anywhere).
    bool force_staging = false;
    BytePath scatter_path = BytePath::Auto;
    BytePath gather_path = BytePath::Auto;
};

// A host runtime's Vulkan objects, adopted by Context::adopt. The library never destroys them;
// destroy every pagedkv object made on the context (contexts, pools, caches, tensors) before
// destroying the device. When the last of them goes, the library waits for its own
// submissions (their fences) only, never for the whole device, so the host's queues may be
// busy; recordings into the host's command buffers must have finished by then.
//
// What the host must have set up, because Vulkan offers no way to ask a VkDevice which
// features it was created with:
//  - instance created with apiVersion >= VK_API_VERSION_1_2, physical device of Vulkan 1.2+;
//  - device created with VkPhysicalDeviceVulkan12Features::bufferDeviceAddress and
//    VkPhysicalDeviceFeatures::shaderInt64 enabled (required);
//  - storageBuffer16BitAccess (VkPhysicalDeviceVulkan11Features) and shaderInt16 enabled when
//    the device has both, and then int16_storage set: f16/bf16 pools with an odd head_dim move
//    16-bit words and need them;
//  - queue taken from queue_family, a family with VK_QUEUE_COMPUTE_BIT. The library submits
//    to it under its own lock: the host must not use the queue from another thread while a
//    pagedkv call runs (Vulkan requires queue access to be externally synchronized).
// Validation messages go to the host's own debug messenger: Context::validation_messages()
// stays empty for an adopted device.
struct ExternalVulkan {
    VkInstance instance = VK_NULL_HANDLE;
    VkPhysicalDevice physical_device = VK_NULL_HANDLE;
    VkDevice device = VK_NULL_HANDLE;
    VkQueue queue = VK_NULL_HANDLE;
    uint32_t queue_family = 0;
    // Whether the device was created with storageBuffer16BitAccess and shaderInt16 enabled.
    bool int16_storage = false;
    // The loader entry point of the host. The library calls Vulkan through the loader it is
    // linked with, so this must be nullptr or that loader's vkGetInstanceProcAddr (a host
    // with a loader of its own, e.g. one opened with dlopen from another path, is refused).
    PFN_vkGetInstanceProcAddr get_instance_proc_addr = nullptr;
};

// How much GPU work the library has recorded and submitted (for benchmarks and tests that
// pin "one submit per step").
struct DeviceCounters {
    uint64_t submits = 0;
    uint64_t dispatches = 0;
    uint64_t barriers = 0;
    uint64_t copies = 0;
    uint64_t descriptor_updates = 0;
    uint64_t uploads = 0;       // host data copied into per-batch upload memory (tables, entries)
    uint64_t copy_regions = 0;  // regions of the scatter/gather copy commands (vkCmdCopyBuffer)
};

class PAGEDKV_API Context {
  public:
    static Context create(ContextOptions opts = {});
    static Context adopt(const ExternalVulkan& ext);

    Context(Context&&) noexcept;
    Context& operator=(Context&&) noexcept;
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    ~Context();

    std::string device_name() const;
    // True for a CPU implementation (lavapipe, SwiftShader).
    bool is_cpu_device() const;

    // Submits the work recorded so far (no wait). Reading a tensor flushes by itself.
    void flush();
    // Submits and waits for everything recorded so far (the library's own batches; a
    // recording into the caller's command buffer is the caller's to submit).
    void synchronize();

    // Recording into a command buffer of the caller's, for runtimes that build their own
    // (README, "Embedding"). Between begin_recording(cmd) and end_recording(), every command
    // the library records (scatter, gather, page copies, staging uploads) goes into cmd, a
    // primary command buffer in the recording state from a pool of this context's queue
    // family; the library never begins, ends or submits it. Barriers the library inserts:
    //  - at begin_recording(): the library's earlier writes are made visible to what follows;
    //  - before the first command of each library call: compute-shader and transfer writes
    //    recorded earlier in cmd are made visible to it (the caller's own compute shader may
    //    have written the K/V being cached);
    //  - after the last command of each library call: its writes are made visible to later
    //    compute-shader and transfer commands (the caller's attention shader may read the
    //    gathered K/V or the pages right after);
    //  - end_recording() adds one that makes every write visible to the host as well.
    // Writes by other stages (graphics, host) before a call, and reads by other stages after
    // it, need barriers of the caller's. The library's own earlier work is submitted by
    // begin_recording(); submit cmd to this context's queue (or wait for synchronize() first).
    // Until cmd is submitted, record nothing through the library outside a recording: its
    // own batches would reach the queue first. Reading a tensor (to_host, snapshots with page
    // contents) and making a BlockPool throw while recording. The recording belongs to the
    // context, not to a thread: calls from any thread on this context (and on what was made
    // from it) go into cmd until end_recording().
    void begin_recording(VkCommandBuffer cmd);
    // Stops recording into the caller's command buffer and returns the recording's id. Once
    // the caller has seen cmd finish executing (its fence signalled), finish_recording(id)
    // releases the scratch memory the commands use and makes the tensors they wrote
    // readable; reading one before throws.
    uint64_t end_recording();
    void finish_recording(uint64_t id);
    // Whether begin_recording() is in effect.
    bool recording() const;

    // Messages the validation layer reported (warnings and errors), oldest first.
    std::vector<std::string> validation_messages() const;
    void clear_validation_messages();
    DeviceCounters counters() const;
    // The byte paths in use (Auto resolved once the first pool exists).
    BytePath scatter_path() const;
    BytePath gather_path() const;

  private:
    friend struct detail::Access;
    PAGEDKV_LOCAL explicit Context(std::shared_ptr<detail::Device> d);
    std::shared_ptr<detail::Device> device_;
};

}  // namespace pagedkv
