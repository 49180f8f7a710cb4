#include "cache/manager/converted.hpp"

#include <fmt/format.h>

#include "cache/manager/access.hpp"
#include "pagedkv/error.hpp"
#include "shaders/kernels/convert.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

Tensor converted(const Tensor& t, DType to) {
    if (!t.defined()) throw Error(ErrorCode::InvalidArgument, "converted: tensor is undefined");
    if (t.dtype() == to) return t;
    if (!known_dtype(to))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("converted: unknown dtype {}", static_cast<unsigned>(to)));
    Device& dev = Access::device(t);
    Device::CallLock lock(dev);
    Tensor out = Access::empty_tensor(Access::device_ptr(t), t.shape(), to);
    record_convert(dev, Access::buffer(t), t.dtype(), Access::buffer(out), to, uint64_t(t.numel()));
    return out;
}

}  // namespace pagedkv::detail
