#include "shaders/vulkan/buffer.hpp"

#include <fmt/format.h>

#include <cstring>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

std::shared_ptr<Buffer> Buffer::create(Device& dev_ref, VkDeviceSize size, MemoryKind kind) {
    Device* dev = &dev_ref;
    if (dev->injected_allocation_failure(kind))
        throw Error(
            ErrorCode::Vulkan,
            fmt::format("vkAllocateMemory of {} bytes failed: out of memory (injected)", size),
            VK_ERROR_OUT_OF_DEVICE_MEMORY);
    if (kind != MemoryKind::DeviceLocal && kind != MemoryKind::HostPages) {
        // Tensors and staging buffers come and go every step: reuse a cached buffer of the same
        // kind and size class (warm memory, no vkAllocateMemory), and give it back to the cache
        // when the last handle goes.
        const VkDeviceSize cls = BufferCache::size_class(size == 0 ? 16 : size);
        std::unique_ptr<Buffer> cached = dev->buffer_cache().take(kind, cls);
        Buffer* raw = cached ? cached.release() : make(*dev, cls, kind).release();
        return std::shared_ptr<Buffer>(raw, [dev](Buffer* p) { dev->buffer_cache().give(p); });
    }
    return std::shared_ptr<Buffer>(make(*dev, size, kind).release());
}

std::shared_ptr<Buffer> Buffer::wrap(Device& dev, VkBuffer buffer, VkDeviceSize offset,
                                     VkDeviceSize size, const char* op) {
    if (buffer == VK_NULL_HANDLE)
        throw Error(ErrorCode::InvalidArgument, fmt::format("{}: the VkBuffer is null", op));
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(dev.handle(), buffer, &req);
    if (offset > req.size || size > req.size - offset)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: bytes [{}, {}) do not fit the buffer, whose memory "
                                "requirements are {} bytes",
                                op, offset, offset + size, req.size));
    std::shared_ptr<Buffer> b(new Buffer());
    b->device_ = &dev;
    b->kind_ = MemoryKind::External;
    b->buffer_ = buffer;
    b->offset_ = offset;
    b->size_ = size;
    VkBufferDeviceAddressInfo bdai{VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO};
    bdai.buffer = buffer;
    b->address_ = vkGetBufferDeviceAddress(dev.handle(), &bdai) + offset;
    return b;
}

std::unique_ptr<Buffer> Buffer::make(Device& dev_ref, VkDeviceSize size, MemoryKind kind) {
    Device* dev = &dev_ref;
    std::unique_ptr<Buffer> b(new Buffer());
    b->device_ = dev;
    b->kind_ = kind;
    b->size_ = size == 0 ? 16 : size;
    VkDevice d = dev->handle();

    VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    bci.size = b->size_;
    bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                VK_BUFFER_USAGE_TRANSFER_DST_BIT | VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT;
    bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    vk_check(vkCreateBuffer(d, &bci, nullptr, &b->buffer_), "vkCreateBuffer");

    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d, b->buffer_, &req);
    const VkMemoryPropertyFlags host =
        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    uint32_t type = 0;
    switch (kind) {
        case MemoryKind::DeviceLocal:
            type = dev->memory_type(req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0);
            break;
        case MemoryKind::Upload:
        case MemoryKind::HostPages:
            type = dev->memory_type(req.memoryTypeBits, host, 0);
            break;
        case MemoryKind::Tensor:
            type = dev->map_tensors() ? dev->memory_type(req.memoryTypeBits, host,
                                                         VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)
                                      : dev->memory_type(req.memoryTypeBits,
                                                         VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0);
            break;
        case MemoryKind::External:
            throw Error(ErrorCode::InvalidArgument, "Buffer::create: external buffers are wrapped");
    }
    VkMemoryAllocateFlagsInfo flags{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO};
    flags.flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT;
    VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    mai.pNext = &flags;
    mai.allocationSize = req.size;
    mai.memoryTypeIndex = type;
    VkResult r = vkAllocateMemory(d, &mai, nullptr, &b->memory_);
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
        throw Error(ErrorCode::Vulkan,
                    fmt::format("vkAllocateMemory of {} bytes failed: out of memory", req.size), r);
    vk_check(r, "vkAllocateMemory");
    vk_check(vkBindBufferMemory(d, b->buffer_, b->memory_, 0), "vkBindBufferMemory");
    if (dev->memory().memoryTypes[type].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)
        vk_check(vkMapMemory(d, b->memory_, 0, VK_WHOLE_SIZE, 0, &b->mapped_), "vkMapMemory");
    VkBufferDeviceAddressInfo bdai{VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO};
    bdai.buffer = b->buffer_;
    b->address_ = vkGetBufferDeviceAddress(d, &bdai);
    return b;
}

Buffer::~Buffer() {
    if (kind_ == MemoryKind::External) return;  // the host's buffer
    VkDevice d = device_->handle();
    if (mapped_) vkUnmapMemory(d, memory_);
    vkDestroyBuffer(d, buffer_, nullptr);
    vkFreeMemory(d, memory_, nullptr);
}

void Buffer::write(const void* src, VkDeviceSize bytes, VkDeviceSize offset) {
    if (bytes == 0) return;
    if (mapped_) {
        std::memcpy(static_cast<char*>(mapped_) + offset, src, bytes);
        return;
    }
    auto staging = Buffer::create(*device_, bytes, MemoryKind::Upload);
    std::memcpy(staging->mapped(), src, bytes);
    Device::CallLock lock(*device_);
    Batches& batches = device_->batches();
    VkCommandBuffer cmd = batches.record({staging.get()}, {this});
    VkBufferCopy region{0, offset_ + offset, bytes};
    vkCmdCopyBuffer(cmd, staging->handle(), buffer_, 1, &region);
    ++device_->counters().copies;
    batches.keep_alive(staging);
    batches.flush();
}

void Buffer::read(void* dst, VkDeviceSize bytes, VkDeviceSize offset) {
    if (bytes == 0) return;
    Device::CallLock lock(*device_);
    Batches& batches = device_->batches();
    if (batches.recording_external())
        throw Error(ErrorCode::InvalidArgument,
                    "reading a tensor waits for the GPU, which cannot happen while recording "
                    "into the caller's command buffer: call Context::end_recording() first");
    // Written by a caller's command buffer not yet marked finished: nothing to read yet (a
    // staging copy submitted now could run before the caller's buffer).
    batches.require_finished(last_write_serial);
    if (mapped_) {
        batches.wait(last_write_serial);
        std::memcpy(dst, static_cast<const char*>(mapped_) + offset, bytes);
        return;
    }
    auto staging = Buffer::create(*device_, bytes, MemoryKind::Upload);
    VkCommandBuffer cmd = batches.record({this}, {staging.get()});
    VkBufferCopy region{offset_ + offset, 0, bytes};
    vkCmdCopyBuffer(cmd, buffer_, staging->handle(), 1, &region);
    ++device_->counters().copies;
    batches.wait(staging->last_write_serial);
    std::memcpy(dst, staging->mapped(), bytes);
}

uint64_t BufferCache::size_class(uint64_t bytes) {
    constexpr uint64_t kSmall = 64 * 1024;
    if (bytes <= (1u << 20)) return (bytes + kSmall - 1) / kSmall * kSmall;
    uint64_t p = 1;
    while (p < bytes)
        p <<= 1;
    const uint64_t step = p / 16;  // the upper half of [p/2, p] in eighths of p/2
    return (bytes + step - 1) / step * step;
}

std::unique_ptr<Buffer> BufferCache::take(MemoryKind kind, uint64_t size_class) {
    std::lock_guard lock(mutex_);
    auto it = free_.find({kind, size_class});
    if (it == free_.end()) return nullptr;
    std::unique_ptr<Buffer> b = std::move(it->second);
    free_.erase(it);
    bytes_ -= b->size();
    return b;
}

void BufferCache::give(Buffer* raw) {
    std::unique_ptr<Buffer> b(raw);
    std::lock_guard lock(mutex_);
    if (closed_ || bytes_ + b->size() > budget_) return;  // destroyed here
    bytes_ += b->size();
    const std::pair<MemoryKind, uint64_t> key{b->kind(), b->size()};
    free_.emplace(key, std::move(b));
}

void BufferCache::clear() {
    std::lock_guard lock(mutex_);
    free_.clear();
    bytes_ = 0;
    closed_ = true;
}

uint64_t BufferCache::cached_bytes() const {
    std::lock_guard lock(mutex_);
    return bytes_;
}

}  // namespace pagedkv::detail
