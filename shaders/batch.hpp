// Batches: the command buffer being recorded and those in flight. Every library operation
// records into the open batch; a step becomes one submit. Barriers are inserted only where a
// command touches a resource written since the last barrier (ggml's sync_buffers idea).
#pragma once

#include <vulkan/vulkan_core.h>

#include <cstdint>
#include <deque>
#include <initializer_list>
#include <memory>
#include <unordered_set>
#include <vector>

#include "shaders/buffer.hpp"

namespace pagedkv::detail {

class Device;

class Batches {
  public:
    explicit Batches(Device& dev);
    ~Batches();
    Batches(const Batches&) = delete;
    Batches& operator=(const Batches&) = delete;

    // The open command buffer, ready for one command that reads `reads` and writes `writes`
    // (a barrier recorded first when needed). The resources stay alive until the batch ends.
    VkCommandBuffer record(std::initializer_list<Resource*> reads,
                           std::initializer_list<Resource*> writes);
    // Copies host data into upload memory that lives as long as the open batch; returns its
    // device address.
    VkDeviceAddress upload(const void* data, size_t bytes);
    void keep_alive(std::shared_ptr<const void> p);

    // Serial of the batch being recorded; serials grow by one per submit.
    uint64_t open_serial() const noexcept { return next_serial_; }
    // Submits the open batch if it holds any command (no wait).
    void flush();
    // Waits until the batch with this serial has finished (flushing it first if open).
    void wait(uint64_t serial);
    void wait_all() { wait(next_serial_); }

  private:
    struct Batch {
        VkCommandBuffer cmd = VK_NULL_HANDLE;
        VkFence fence = VK_NULL_HANDLE;
        uint64_t serial = 0;
        std::vector<std::shared_ptr<const void>> keep;
        std::vector<std::shared_ptr<Buffer>> chunks;
    };
    void begin();
    void retire(Batch& b);
    void collect_finished();

    Device& dev_;
    VkCommandPool pool_ = VK_NULL_HANDLE;
    std::unique_ptr<Batch> open_;
    std::deque<std::unique_ptr<Batch>> in_flight_;
    std::vector<std::unique_ptr<Batch>> spare_;
    std::vector<std::shared_ptr<Buffer>> spare_chunks_;
    uint64_t next_serial_ = 1;
    uint64_t completed_ = 0;
    size_t chunk_used_ = 0;
    std::unordered_set<const Resource*> dirty_;
    bool needs_entry_barrier_ = true;
};

}  // namespace pagedkv::detail
