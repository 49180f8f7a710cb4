#include "shaders/vulkan/gpu_timer.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <vector>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

namespace {

// CPU time of the calling thread (POSIX); elsewhere wall time.
double thread_cpu_seconds() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
#else
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
#endif
}

}  // namespace

GpuTimer::GpuTimer(Device& dev) : dev_(dev) {
    if (!supported(dev)) throw Error(ErrorCode::Unsupported, "the queue writes no timestamps");
    VkQueryPoolCreateInfo qi{VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
    qi.queryType = VK_QUERY_TYPE_TIMESTAMP;
    qi.queryCount = kQueries;
    vk_check(vkCreateQueryPool(dev.handle(), &qi, nullptr, &pool_), "vkCreateQueryPool");
    period_ns_ = double(dev.properties().limits.timestampPeriod);
}

GpuTimer::~GpuTimer() {
    dev_.synchronize();  // no recorded timestamp may outlive the pool
    vkDestroyQueryPool(dev_.handle(), pool_, nullptr);
}

bool GpuTimer::supported(const Device& dev) {
    uint32_t n = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(dev.physical(), &n, nullptr);
    std::vector<VkQueueFamilyProperties> f(n);
    vkGetPhysicalDeviceQueueFamilyProperties(dev.physical(), &n, f.data());
    return dev.queue_family() < n && f[dev.queue_family()].timestampValidBits > 0 &&
           dev.properties().limits.timestampPeriod > 0;
}

void GpuTimer::stamp(uint32_t q) {
    VkCommandBuffer cmd = dev_.batches().record({}, {});
    vkCmdWriteTimestamp(cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, pool_, q);
}

double GpuTimer::median(const std::function<void()>& op, int reps, int warmup) {
    std::vector<Run> r = runs(op, reps, warmup);
    std::vector<double> d;
    for (const Run& x : r)
        d.push_back(x.device_s);
    std::sort(d.begin(), d.end());
    return d[d.size() / 2];
}

std::vector<GpuTimer::Run> GpuTimer::runs(const std::function<void()>& op, int reps, int warmup) {
    const uint32_t total = uint32_t(std::min<int>(reps + warmup, kQueries / 2));
    VkCommandBuffer cmd = dev_.batches().record({}, {});
    vkCmdResetQueryPool(cmd, pool_, 0, 2 * total);
    // One submit per run, waited for: what a run allocates is recycled before the next, as in
    // a real step loop.
    std::vector<double> host(total);
    for (uint32_t r = 0; r < total; ++r) {
        stamp(2 * r);
        const double t0 = thread_cpu_seconds();
        op();
        host[r] = thread_cpu_seconds() - t0;
        stamp(2 * r + 1);
        dev_.batches().wait_all();
    }
    std::vector<uint64_t> t(2 * total);
    vk_check(vkGetQueryPoolResults(dev_.handle(), pool_, 0, 2 * total, t.size() * sizeof(uint64_t),
                                   t.data(), sizeof(uint64_t),
                                   VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT),
             "vkGetQueryPoolResults");
    std::vector<Run> out;
    for (uint32_t r = uint32_t(std::min<int>(warmup, int(total) - 1)); r < total; ++r)
        out.push_back({double(t[2 * r + 1] - t[2 * r]) * period_ns_ * 1e-9, host[r]});
    return out;
}

}  // namespace pagedkv::detail
