// GpuTimer: GPU time of recorded work, from timestamps written around it in the open batch.
// Used to pick the byte-moving path per device (calibration) and by pagedkv-bench.
#pragma once

#include <vulkan/vulkan_core.h>

#include <functional>
#include <vector>

namespace pagedkv::detail {

class Device;

class GpuTimer {
  public:
    explicit GpuTimer(Device& dev);
    ~GpuTimer();
    GpuTimer(const GpuTimer&) = delete;
    GpuTimer& operator=(const GpuTimer&) = delete;

    // Whether the device's queue writes timestamps at all.
    static bool supported(const Device& dev);
    // Median seconds of the GPU work `op` records, over `reps` runs after `warmup` runs, all in
    // one submit (which this waits for).
    double median(const std::function<void()>& op, int reps = 9, int warmup = 2);
    // Each run's GPU time, and the CPU time the calling thread spent in `op` itself (recording
    // the work: what the library costs the host, without the submit and the wait).
    struct Run {
        double device_s = 0;
        double host_s = 0;
    };
    std::vector<Run> runs(const std::function<void()>& op, int reps = 9, int warmup = 2);

  private:
    void stamp(uint32_t query);
    static constexpr uint32_t kQueries = 256;
    Device& dev_;
    VkQueryPool pool_ = VK_NULL_HANDLE;
    double period_ns_ = 1;
};

}  // namespace pagedkv::detail
