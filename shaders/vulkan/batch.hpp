// Batches: the command buffer being recorded and those in flight. Every library operation
// records into the open batch; a step becomes one submit. Barriers are inserted only where a
// command touches a resource written since the last barrier (ggml's sync_buffers idea).
// The open batch may instead be a command buffer of the caller's (begin_external): the library
// records into it and never submits it; the caller says when it has finished executing.
#pragma once

#include <vulkan/vulkan_core.h>

#include <cstdint>
#include <deque>
#include <initializer_list>
#include <map>
#include <memory>
#include <unordered_set>
#include <vector>

#include "shaders/vulkan/buffer.hpp"

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
    // Makes sure uploads of `bytes` in all (each counted as upload_bytes()) need no new memory
    // in the open batch, and that the batch is begun: a call that must not fail once it has
    // changed its state reserves first.
    void reserve_upload(size_t bytes);
    static size_t upload_bytes(size_t bytes) noexcept;
    void keep_alive(std::shared_ptr<const void> p);

    // Serial of the batch being recorded; serials grow by one per submit.
    uint64_t open_serial() const noexcept { return next_serial_; }
    // Submits the open batch if it holds any command (no wait); does nothing while recording
    // into a caller's command buffer.
    void flush();
    // Waits until the batch with this serial has finished (flushing it first if open). Throws
    // when that batch is a caller's command buffer not marked finished.
    void wait(uint64_t serial);
    // Throws when the batch with this serial is a caller's command buffer still recording or
    // not marked finished (what it writes cannot be read yet).
    void require_finished(uint64_t serial) const;
    // Submits the open batch (unless it is the caller's) and waits for every submitted one.
    void wait_all();

    // From now on commands go into cmd, a primary command buffer of the caller's in the
    // recording state (the library's own open batch is submitted first).
    void begin_external(VkCommandBuffer cmd);
    // Closes the caller's batch (a final barrier) and returns its id, which the caller passes
    // to finish_external() once the command buffer has finished executing.
    uint64_t end_external();
    void finish_external(uint64_t id);
    bool recording_external() const noexcept { return open_ && open_->external; }
    // End of an outermost library call: in a caller's command buffer, a barrier makes the
    // call's writes visible to the caller's later compute and transfer commands, and the next
    // call's first command starts with one that makes the caller's writes visible to it.
    void end_call() noexcept;

  private:
    struct Batch {
        VkCommandBuffer cmd = VK_NULL_HANDLE;
        VkFence fence = VK_NULL_HANDLE;
        uint64_t serial = 0;
        bool external = false;  // the caller's command buffer (no fence, never submitted here)
        bool recorded = false;  // a command since the last end_call()
        std::vector<std::shared_ptr<const void>> keep;
        std::vector<std::shared_ptr<Buffer>> chunks;
    };
    void begin();
    // Makes a chunk of at least `bytes` (a spare one, or new) the open batch's current one.
    void next_chunk(size_t bytes);
    // A full barrier in cmd (host: also to host reads), counted in the device's counters.
    void barrier(VkCommandBuffer cmd, bool host = false) noexcept;
    void retire(Batch& b);
    void collect_finished();

    Device& dev_;
    VkCommandPool pool_ = VK_NULL_HANDLE;
    std::unique_ptr<Batch> open_;
    std::deque<std::unique_ptr<Batch>> in_flight_;
    std::vector<std::unique_ptr<Batch>> spare_;
    std::map<uint64_t, std::unique_ptr<Batch>> external_;  // ended, not finished
    std::vector<std::shared_ptr<Buffer>> spare_chunks_;
    uint64_t next_serial_ = 1;
    uint64_t completed_ = 0;
    size_t chunk_used_ = 0;
    std::unordered_set<const Resource*> dirty_;
    bool needs_entry_barrier_ = true;
};

}  // namespace pagedkv::detail
