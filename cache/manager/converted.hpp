// converted: a tensor in another dtype, made on the device (the convert kernel), so that cache
// writes take f32, f16 and bf16 inputs whatever the pool holds.
#pragma once

#include <utility>

#include "pagedkv/tensor.hpp"

namespace pagedkv::detail {

// t itself when it already has dtype `to`; else a new tensor of t's shape and dtype `to`,
// written by a dispatch recorded into the open batch (rounding to nearest even, bit for bit as
// round_to()). Allocates before it records: on a throw nothing is recorded.
Tensor converted(const Tensor& t, DType to);

// A layer's K and V, each converted (a gather of pages into the pool's compute dtype).
inline std::pair<Tensor, Tensor> converted(const std::pair<Tensor, Tensor>& kv, DType to) {
    return {converted(kv.first, to), converted(kv.second, to)};
}

}  // namespace pagedkv::detail
