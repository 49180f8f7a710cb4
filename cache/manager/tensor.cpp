#include "pagedkv/tensor.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cache/manager/access.hpp"
#include "pagedkv/context.hpp"
#include "pagedkv/error.hpp"
#include "shaders/vulkan/buffer.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv {

namespace {

int64_t checked_numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
        if (d < 0)
            throw Error(
                ErrorCode::InvalidArgument,
                fmt::format("tensor shape [{}] has a negative dimension", fmt::join(shape, ", ")));
        // 2^48 elements is far beyond any device and keeps bytes (x4) inside 64 bits.
        constexpr int64_t kMaxElements = int64_t(1) << 48;
        if (d != 0 && n > kMaxElements / d)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("tensor shape [{}] has more than 2^48 elements",
                                    fmt::join(shape, ", ")));
        n *= d;
    }
    return n;
}

}  // namespace

Tensor& Tensor::operator=(const Tensor& other) {
    if (this != &other) *this = Tensor(other);
    return *this;
}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
    if (this == &other) return *this;
    buffer_.reset();
    buffer_ = std::move(other.buffer_);
    device_ = std::move(other.device_);
    shape_ = std::move(other.shape_);
    dtype_ = other.dtype_;
    return *this;
}

VkBuffer Tensor::vk_buffer() const {
    if (!buffer_) throw Error(ErrorCode::InvalidArgument, "vk_buffer: the tensor is undefined");
    return buffer_->handle();
}

VkDeviceSize Tensor::vk_offset() const {
    if (!buffer_) throw Error(ErrorCode::InvalidArgument, "vk_offset: the tensor is undefined");
    return buffer_->offset();
}

bool Tensor::is_wrapped() const noexcept {
    return buffer_ && buffer_->kind() == detail::MemoryKind::External;
}

VkDeviceAddress Tensor::device_address() const {
    if (!buffer_)
        throw Error(ErrorCode::InvalidArgument, "device_address: the tensor is undefined");
    return buffer_->address();
}

int64_t Tensor::numel() const noexcept {
    int64_t n = 1;
    for (int64_t d : shape_)
        n *= d;
    return n;
}

namespace {

// Tensors hold f32, f16 or bf16; int8 and fp8 are pool dtypes only.
void check_tensor_dtype(DType dtype, const char* who) {
    if (!known_dtype(dtype))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: unknown dtype {}", who, static_cast<uint32_t>(dtype)));
    if (!is_float_dtype(dtype))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: {} is a pool dtype only; tensors hold f32, f16 or bf16", who,
                                to_string(dtype)));
}

}  // namespace

Tensor Tensor::empty(Context& ctx, std::vector<int64_t> shape, DType dtype) {
    return empty_on(detail::Access::device_ptr(ctx), std::move(shape), dtype);
}

Tensor Tensor::empty_on(const std::shared_ptr<detail::Device>& device, std::vector<int64_t> shape,
                        DType dtype) {
    check_tensor_dtype(dtype, "Tensor");
    Tensor t;
    const int64_t n = checked_numel(shape);
    t.device_ = device;
    t.shape_ = std::move(shape);
    t.dtype_ = dtype;
    t.buffer_ = detail::Buffer::create(*t.device_, uint64_t(n) * dtype_size(dtype),
                                       detail::MemoryKind::Tensor);
    return t;
}

Tensor Tensor::wrap(Context& ctx, VkBuffer buffer, VkDeviceSize offset, std::vector<int64_t> shape,
                    DType dtype, VkDeviceSize buffer_size) {
    if (buffer == VK_NULL_HANDLE)
        throw Error(ErrorCode::InvalidArgument, "wrap: the VkBuffer is null");
    check_tensor_dtype(dtype, "wrap");
    if (offset % 4 != 0)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("wrap: offset {} is not a multiple of 4 bytes", offset));
    const uint64_t bytes = uint64_t(checked_numel(shape)) * dtype_size(dtype);
    if (buffer_size != VK_WHOLE_SIZE && (offset > buffer_size || bytes > buffer_size - offset))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("wrap: shape [{}] of {} needs bytes [{}, {}), the buffer has {}",
                                fmt::join(shape, ", "), to_string(dtype), offset, offset + bytes,
                                buffer_size));
    Tensor t;
    t.device_ = detail::Access::device_ptr(ctx);
    t.buffer_ = detail::Buffer::wrap(*t.device_, buffer, offset, bytes, "wrap");
    t.shape_ = std::move(shape);
    t.dtype_ = dtype;
    return t;
}

Tensor Tensor::from_host(Context& ctx, std::span<const float> data, std::vector<int64_t> shape,
                         DType dtype) {
    const int64_t n = checked_numel(shape);
    if (uint64_t(n) != data.size())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("from_host: shape [{}] holds {} elements, data has {}",
                                fmt::join(shape, ", "), n, data.size()));
    Tensor t = empty(ctx, std::move(shape), dtype);  // refuses a dtype a tensor cannot have
    std::vector<uint16_t> bits;
    switch (dtype) {
        case DType::F32:
            t.buffer_->write(data.data(), data.size_bytes());
            return t;
        case DType::F16:
            bits.resize(data.size());
            for (size_t i = 0; i < data.size(); ++i)
                bits[i] = f32_to_f16(data[i]);
            break;
        case DType::BF16:
            bits.resize(data.size());
            for (size_t i = 0; i < data.size(); ++i)
                bits[i] = f32_to_bf16(data[i]);
            break;
        case DType::Int8:
        case DType::FP8E4M3:
            break;  // refused by empty()
    }
    t.buffer_->write(bits.data(), bits.size() * sizeof(uint16_t));
    return t;
}

std::vector<float> Tensor::to_host() const {
    if (!buffer_) throw Error(ErrorCode::InvalidArgument, "to_host: tensor is undefined");
    const size_t n = size_t(numel());
    std::vector<float> out(n);
    std::vector<uint16_t> bits;
    switch (dtype_) {
        case DType::F32:
            buffer_->read(out.data(), n * sizeof(float));
            return out;
        case DType::F16:
            bits.resize(n);
            buffer_->read(bits.data(), n * sizeof(uint16_t));
            for (size_t i = 0; i < n; ++i)
                out[i] = f16_to_f32(bits[i]);
            return out;
        case DType::BF16:
            bits.resize(n);
            buffer_->read(bits.data(), n * sizeof(uint16_t));
            for (size_t i = 0; i < n; ++i)
                out[i] = bf16_to_f32(bits[i]);
            return out;
        case DType::Int8:
        case DType::FP8E4M3:
            break;  // no tensor has one (check_tensor_dtype)
    }
    throw Error(ErrorCode::Unsupported,
                fmt::format("to_host: unknown dtype {}", static_cast<unsigned>(dtype_)));
}

}  // namespace pagedkv
