#include "shaders/vulkan/batch.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

namespace {

constexpr size_t kChunkBytes = 1 << 20;
constexpr size_t kUploadAlign = 16;

constexpr VkPipelineStageFlags kStages =
    VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
constexpr VkAccessFlags kWrites = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;

// Compute and transfer writes made visible to later compute and transfer commands (and, with
// host, to the host once the command buffer has finished).
void full_barrier(VkCommandBuffer cmd, bool host = false) {
    VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = kWrites;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                       VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT |
                       (host ? VK_ACCESS_HOST_READ_BIT : 0);
    vkCmdPipelineBarrier(cmd, kStages, kStages | (host ? VK_PIPELINE_STAGE_HOST_BIT : 0), 0, 1, &mb,
                         0, nullptr, 0, nullptr);
}

}  // namespace

Batches::Batches(Device& dev) : dev_(dev) {
    VkCommandPoolCreateInfo cpci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    cpci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    cpci.queueFamilyIndex = dev.queue_family();
    vk_check(vkCreateCommandPool(dev.handle(), &cpci, nullptr, &pool_), "vkCreateCommandPool");
}

Batches::~Batches() {
    VkDevice d = dev_.handle();
    // Waits for the library's own submits only: the device may be a host's, busy with its work.
    for (auto& b : in_flight_)
        vkWaitForFences(d, 1, &b->fence, VK_TRUE, UINT64_MAX);
    auto destroy = [&](std::unique_ptr<Batch>& b) {
        if (!b || b->external) return;  // the caller's command buffer is the caller's
        vkDestroyFence(d, b->fence, nullptr);
        vkFreeCommandBuffers(d, pool_, 1, &b->cmd);
    };
    if (open_ && !open_->external) vkEndCommandBuffer(open_->cmd);
    destroy(open_);
    for (auto& b : in_flight_)
        destroy(b);
    for (auto& b : spare_)
        destroy(b);
    in_flight_.clear();
    spare_.clear();
    open_.reset();
    spare_chunks_.clear();
    vkDestroyCommandPool(d, pool_, nullptr);
}

void Batches::begin() {
    if (open_) return;
    collect_finished();
    if (!spare_.empty()) {
        open_ = std::move(spare_.back());
        spare_.pop_back();
        vk_check(vkResetFences(dev_.handle(), 1, &open_->fence), "vkResetFences");
        vk_check(vkResetCommandBuffer(open_->cmd, 0), "vkResetCommandBuffer");
    } else {
        auto b = std::make_unique<Batch>();
        VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
        ai.commandPool = pool_;
        ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
        ai.commandBufferCount = 1;
        vk_check(vkAllocateCommandBuffers(dev_.handle(), &ai, &b->cmd), "vkAllocateCommandBuffers");
        VkFenceCreateInfo fci{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
        VkResult r = vkCreateFence(dev_.handle(), &fci, nullptr, &b->fence);
        if (r != VK_SUCCESS) vkFreeCommandBuffers(dev_.handle(), pool_, 1, &b->cmd);
        vk_check(r, "vkCreateFence");
        open_ = std::move(b);
    }
    open_->serial = next_serial_;
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    vk_check(vkBeginCommandBuffer(open_->cmd, &bi), "vkBeginCommandBuffer");
    chunk_used_ = kChunkBytes;  // the first upload takes a fresh chunk
    // Earlier submits are ordered before this one but their writes are not yet visible to it.
    needs_entry_barrier_ = true;
    dirty_.clear();
}

VkCommandBuffer Batches::record(std::initializer_list<Resource*> reads,
                                std::initializer_list<Resource*> writes) {
    begin();
    bool hazard = needs_entry_barrier_;
    for (auto list : {reads, writes})
        for (Resource* r : list)
            hazard = hazard || dirty_.count(r) != 0 || (r->may_alias() && !dirty_.empty());
    if (hazard) {
        barrier(open_->cmd);
        dirty_.clear();
        needs_entry_barrier_ = false;
    }
    open_->recorded = true;
    for (auto list : {reads, writes})
        for (Resource* r : list)
            open_->keep.push_back(r->shared_from_this());
    for (Resource* r : writes) {
        dirty_.insert(r);
        r->last_write_serial = open_->serial;
    }
    return open_->cmd;
}

void Batches::reserve_upload(size_t bytes) {
    begin();
    if (open_->chunks.empty() || chunk_used_ + bytes > open_->chunks.back()->size())
        next_chunk(bytes);
}

size_t Batches::upload_bytes(size_t bytes) noexcept {
    return (bytes + kUploadAlign - 1) / kUploadAlign * kUploadAlign;
}

void Batches::next_chunk(size_t bytes) {
    std::shared_ptr<Buffer> chunk;
    auto it = std::find_if(spare_chunks_.begin(), spare_chunks_.end(),
                           [&](const auto& c) { return c->size() >= bytes; });
    if (it != spare_chunks_.end()) {
        chunk = std::move(*it);
        spare_chunks_.erase(it);
    } else {
        chunk = Buffer::create(dev_, std::max(kChunkBytes, bytes), MemoryKind::Upload);
    }
    open_->chunks.push_back(std::move(chunk));
    chunk_used_ = 0;
}

VkDeviceAddress Batches::upload(const void* data, size_t bytes) {
    ++dev_.counters().uploads;
    begin();
    const size_t aligned = upload_bytes(bytes);
    if (open_->chunks.empty() || chunk_used_ + aligned > open_->chunks.back()->size())
        next_chunk(aligned);
    Buffer& chunk = *open_->chunks.back();
    std::memcpy(static_cast<char*>(chunk.mapped()) + chunk_used_, data, bytes);
    const VkDeviceAddress addr = chunk.address() + chunk_used_;
    chunk_used_ += aligned;
    return addr;
}

void Batches::keep_alive(std::shared_ptr<const void> p) {
    begin();
    open_->keep.push_back(std::move(p));
}

void Batches::flush() {
    if (!open_ || open_->external) return;
    // Make the batch's writes visible to the host (tensor reads map memory directly) and to
    // compute and transfer commands submitted later to the queue, the host's own included
    // (a barrier's second scope reaches later submissions).
    full_barrier(open_->cmd, /*host=*/true);
    vk_check(vkEndCommandBuffer(open_->cmd), "vkEndCommandBuffer");
    VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.commandBufferCount = 1;
    si.pCommandBuffers = &open_->cmd;
    VkResult r = vkQueueSubmit(dev_.queue(), 1, &si, open_->fence);
    if (r != VK_SUCCESS) {
        // The batch is lost; drop it so later work starts clean.
        retire(*open_);
        spare_.push_back(std::move(open_));
        vk_check(r, "vkQueueSubmit");
    }
    ++dev_.counters().submits;
    ++next_serial_;
    in_flight_.push_back(std::move(open_));
}

void Batches::require_finished(uint64_t serial) const {
    if (serial == 0) return;
    if (open_ && open_->external && serial >= open_->serial)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("this reads what commands recorded into the caller's command "
                                "buffer write (recording {}): call Context::end_recording(), "
                                "submit the buffer, wait for it and call "
                                "Context::finish_recording() first",
                                open_->serial));
    if (auto it = external_.find(serial); it != external_.end())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("this reads what commands recorded into the caller's command "
                                "buffer write (recording {}), which is not marked finished: "
                                "submit it, wait for it, then call Context::finish_recording({})",
                                it->first, it->first));
}

void Batches::wait(uint64_t serial) {
    if (serial == 0) return;
    require_finished(serial);
    if (serial <= completed_) return;
    if (open_ && serial >= open_->serial) flush();
    while (!in_flight_.empty() && in_flight_.front()->serial <= serial) {
        Batch& b = *in_flight_.front();
        vk_check(vkWaitForFences(dev_.handle(), 1, &b.fence, VK_TRUE, UINT64_MAX),
                 "vkWaitForFences");
        completed_ = b.serial;
        retire(b);
        spare_.push_back(std::move(in_flight_.front()));
        in_flight_.pop_front();
    }
}

void Batches::wait_all() {
    flush();
    if (!in_flight_.empty()) wait(in_flight_.back()->serial);
}

void Batches::begin_external(VkCommandBuffer cmd) {
    if (cmd == VK_NULL_HANDLE)
        throw Error(ErrorCode::InvalidArgument, "begin_recording: the command buffer is null");
    if (open_ && open_->external)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("begin_recording: already recording into a command buffer "
                                "(recording {}); call end_recording() first",
                                open_->serial));
    flush();  // the library's own earlier work reaches the queue before the caller's buffer
    auto b = std::make_unique<Batch>();
    b->cmd = cmd;
    b->external = true;
    b->serial = next_serial_;
    open_ = std::move(b);
    chunk_used_ = kChunkBytes;
    // The library's earlier work is visible to whatever the caller records next (the flushed
    // batch ends with such a barrier too; this one also covers a queue the caller switched).
    barrier(cmd);
    // The caller's earlier commands in cmd may have written what the first command reads.
    needs_entry_barrier_ = true;
    dirty_.clear();
}

uint64_t Batches::end_external() {
    if (!open_ || !open_->external)
        throw Error(ErrorCode::InvalidArgument,
                    "end_recording: not recording into a caller's command buffer");
    // Everything the recording wrote, visible to the caller's later commands and to the host
    // once the command buffer has finished.
    barrier(open_->cmd, /*host=*/true);
    const uint64_t id = open_->serial;
    external_.emplace(id, std::move(open_));
    ++next_serial_;
    return id;
}

void Batches::finish_external(uint64_t id) {
    auto it = external_.find(id);
    if (it == external_.end())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("finish_recording: no ended, unfinished recording {}", id));
    retire(*it->second);
    external_.erase(it);
}

void Batches::end_call() noexcept {
    if (!open_ || !open_->external || !open_->recorded) return;
    barrier(open_->cmd);
    open_->recorded = false;
    needs_entry_barrier_ = true;
    dirty_.clear();
}

void Batches::barrier(VkCommandBuffer cmd, bool host) noexcept {
    full_barrier(cmd, host);
    ++dev_.counters().barriers;
}

void Batches::collect_finished() {
    while (!in_flight_.empty() &&
           vkGetFenceStatus(dev_.handle(), in_flight_.front()->fence) == VK_SUCCESS) {
        completed_ = in_flight_.front()->serial;
        retire(*in_flight_.front());
        spare_.push_back(std::move(in_flight_.front()));
        in_flight_.pop_front();
    }
}

void Batches::retire(Batch& b) {
    b.keep.clear();
    for (auto& c : b.chunks)
        spare_chunks_.push_back(std::move(c));
    b.chunks.clear();
    if (spare_chunks_.size() > 8) spare_chunks_.resize(8);
}

}  // namespace pagedkv::detail
