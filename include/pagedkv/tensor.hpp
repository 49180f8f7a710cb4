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

    // Converts to f32 on the host; waits for the pending work that writes the tensor.
    std::vector<float> to_host() const;

    const std::vector<int64_t>& shape() const noexcept { return shape_; }
    DType dtype() const noexcept { return dtype_; }
    int64_t numel() const noexcept;
    uint64_t nbytes() const noexcept { return uint64_t(numel()) * dtype_size(dtype_); }
    bool defined() const noexcept { return buffer_ != nullptr; }
    // Whether two handles share one device buffer.
    bool same_storage(const Tensor& other) const noexcept { return buffer_ == other.buffer_; }

    // The device buffer, for a runtime's own shaders: the tensor's bytes start at offset 0
    // (the buffer may be larger). Valid while a handle to the tensor lives.
    VkBuffer vk_buffer() const;
    VkDeviceAddress device_address() const;

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
