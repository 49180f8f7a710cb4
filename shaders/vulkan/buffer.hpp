// Buffer: one VkBuffer with its own memory and device address, plus the bookkeeping the batch
// recorder needs (which batch last wrote it). Tensors, page slabs and upload chunks are Buffers;
// so is a view of a host runtime's VkBuffer (MemoryKind::External), which owns nothing.
#pragma once

#include <vulkan/vulkan_core.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

namespace pagedkv::detail {

class Device;

// Anything a recorded command reads or writes; the recorder inserts a barrier only when a
// command touches a resource written since the last barrier.
// Commands keep the resources they touch alive until their batch has finished.
class Resource : public std::enable_shared_from_this<Resource> {
  public:
    virtual ~Resource() = default;
    // Whether its memory may be that of another resource the recorder tracks (a host's buffer
    // wrapped as a tensor may be a library tensor's): any write since the last barrier is then
    // a hazard.
    virtual bool may_alias() const noexcept { return false; }
    uint64_t last_write_serial = 0;  // batch that last wrote it (0: never written by the GPU)
};

enum class MemoryKind {
    DeviceLocal,  // pages and tables: never mapped
    Upload,       // host-visible, coherent: per-step index data written by the host
    Tensor,       // device-local; mapped too where the device shares memory with the host
    External,     // a range of a host runtime's VkBuffer: not owned, never cached or destroyed
    HostPages,    // host-visible, coherent, long-lived (a host tier's page slabs): never cached
};

class Buffer : public Resource {
  public:
    // The device must outlive the buffer: internal resources hold a plain pointer (the
    // device's in-flight batches keep buffers alive), public handles hold the device.
    static std::shared_ptr<Buffer> create(Device& dev, VkDeviceSize size, MemoryKind kind);
    // A view of bytes [offset, offset + size) of a buffer the caller made on dev's VkDevice
    // (bound to memory, with the usages of create()'s buffers). Throws InvalidArgument (naming
    // op) for a null buffer or a range past the buffer's memory requirements (the only size
    // Vulkan reports; it may exceed the size the buffer was made with).
    static std::shared_ptr<Buffer> wrap(Device& dev, VkBuffer buffer, VkDeviceSize offset,
                                        VkDeviceSize size, const char* op);
    ~Buffer() override;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    // The VkBuffer and where this buffer's bytes start in it (0 but for External views):
    // commands that take (handle, byte offset) add offset().
    VkBuffer handle() const noexcept { return buffer_; }
    VkDeviceSize offset() const noexcept { return offset_; }
    // The address of the first byte (offset() included).
    VkDeviceAddress address() const noexcept { return address_; }
    VkDeviceSize size() const noexcept { return size_; }
    void* mapped() const noexcept { return mapped_; }
    MemoryKind kind() const noexcept { return kind_; }
    bool may_alias() const noexcept override { return kind_ == MemoryKind::External; }
    Device& device() const noexcept { return *device_; }

    // Host -> buffer. Only for buffers no pending GPU work reads or writes (fresh ones):
    // a mapped memcpy, or a staging copy submitted and waited for.
    void write(const void* src, VkDeviceSize bytes, VkDeviceSize offset = 0);
    // Buffer -> host, after the GPU work that writes it has finished.
    void read(void* dst, VkDeviceSize bytes, VkDeviceSize offset = 0);

  private:
    Buffer() = default;
    static std::unique_ptr<Buffer> make(Device& dev, VkDeviceSize size, MemoryKind kind);
    Device* device_ = nullptr;
    VkBuffer buffer_ = VK_NULL_HANDLE;
    VkDeviceMemory memory_ = VK_NULL_HANDLE;
    VkDeviceSize size_ = 0;
    VkDeviceSize offset_ = 0;
    MemoryKind kind_ = MemoryKind::DeviceLocal;
    VkDeviceAddress address_ = 0;
    void* mapped_ = nullptr;
};

// Freed tensor buffers kept for reuse, by size class (like a framework's caching allocator),
// up to a byte budget; the rest are destroyed.
class BufferCache {
  public:
    explicit BufferCache(uint64_t budget_bytes) : budget_(budget_bytes) {}
    ~BufferCache() { clear(); }
    BufferCache(const BufferCache&) = delete;
    BufferCache& operator=(const BufferCache&) = delete;

    // Sizes rounded up to 64 KiB below 1 MiB, else to an eighth of their power of two: at
    // most 12.5% slack.
    static uint64_t size_class(uint64_t bytes);
    std::unique_ptr<Buffer> take(MemoryKind kind, uint64_t size_class);
    void give(Buffer* b);
    void clear();
    uint64_t cached_bytes() const;

  private:
    mutable std::mutex mutex_;
    std::multimap<std::pair<MemoryKind, uint64_t>, std::unique_ptr<Buffer>> free_;
    uint64_t bytes_ = 0;
    uint64_t budget_;
    bool closed_ = false;
};

}  // namespace pagedkv::detail
