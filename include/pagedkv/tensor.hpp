// Tensor: a contiguous row-major device tensor; a cheap copyable handle sharing its buffer,
// like a framework tensor. K/V tensors given to caches are (batch, kv_heads, seq_len, head_dim).
#pragma once

#include <vulkan/vulkan_core.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "pagedkv/dtype.hpp"
#include "pagedkv/export.h"

namespace pagedkv {

class Context;
namespace detail {
class Device;
class Buffer;
struct Access;
}  // namespace detail

class PAGEDKV_API Tensor {
  public:
    Tensor() = default;
    Tensor(const Tensor&) = default;
    Tensor(Tensor&&) noexcept = default;
    // The buffer is released before the device it lives on (a defaulted assignment would
    // drop the device first when this was its last handle).
    Tensor& operator=(const Tensor& other);
    Tensor& operator=(Tensor&& other) noexcept;
    ~Tensor() = default;

    // Uploads data (converted to dtype, rounding to nearest even). data.size() must equal the
    // product of shape.
    static Tensor from_host(Context& ctx, std::span<const float> data, std::vector<int64_t> shape,
                            DType dtype = DType::F32);
    // An uninitialised device tensor (the library fills it).
    static Tensor empty(Context& ctx, std::vector<int64_t> shape, DType dtype);

    // A view of a host runtime's own buffer: the tensor's bytes are [offset, offset + nbytes())
    // of `buffer`, read in place (no copy) wherever a Tensor is taken. The library never frees,
    // caches or writes the buffer. The host guarantees:
    //  - `buffer` was created on ctx's VkDevice with usage STORAGE_BUFFER | SHADER_DEVICE_ADDRESS
    //    | TRANSFER_SRC | TRANSFER_DST, is bound to memory allocated with
    //    VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT, and outlives every handle to the tensor and the
    //    GPU work reading it (ctx.synchronize(), or finish_recording() of the recording);
    //  - its writes to the range are done before a call reads the tensor: submitted and waited
    //    for, or recorded earlier in the command buffer pagedkv records into (the barrier that
    //    starts each call covers compute and transfer writes); and it does not overwrite the
    //    range until the work reading it has finished.
    // Checked (InvalidArgument, nothing made): a null buffer; an offset that is not a multiple
    // of 4 (16 lets copies use the widest words); a negative dimension or an unknown dtype; a
    // range past buffer_size when given, else past the buffer's vkGetBufferMemoryRequirements
    // size (the only size Vulkan reports: it may round the created size up, so pass
    // buffer_size to have an overrun of that slack caught too). Usage and memory binding cannot
    // be queried; the validation layer reports them.
    static Tensor wrap(Context& ctx, VkBuffer buffer, VkDeviceSize offset,
                       std::vector<int64_t> shape, DType dtype,
                       VkDeviceSize buffer_size = VK_WHOLE_SIZE);

    // Converts to f32 on the host; waits for the pending work that writes the tensor.
    std::vector<float> to_host() const;

    const std::vector<int64_t>& shape() const noexcept { return shape_; }
    DType dtype() const noexcept { return dtype_; }
    int64_t numel() const noexcept;
    uint64_t nbytes() const noexcept { return uint64_t(numel()) * dtype_size(dtype_); }
    bool defined() const noexcept { return buffer_ != nullptr; }
    // Whether two handles share one device buffer.
    bool same_storage(const Tensor& other) const noexcept { return buffer_ == other.buffer_; }

    // The device buffer, for a runtime's own shaders: the tensor's bytes start at vk_offset()
    // (0 but for a wrapped tensor; the buffer may be larger). Valid while a handle to the
    // tensor lives. device_address() is that of the first byte (vk_offset() included).
    VkBuffer vk_buffer() const;
    VkDeviceSize vk_offset() const;
    VkDeviceAddress device_address() const;
    // Whether the tensor is a view made by wrap().
    bool is_wrapped() const noexcept;

  private:
    friend struct detail::Access;
    PAGEDKV_LOCAL static Tensor empty_on(const std::shared_ptr<detail::Device>& device,
                                         std::vector<int64_t> shape, DType dtype);

    std::shared_ptr<detail::Device> device_;  // declared first: outlives the buffer
    std::shared_ptr<detail::Buffer> buffer_;
    std::vector<int64_t> shape_;
    DType dtype_ = DType::F32;
};

}  // namespace pagedkv
