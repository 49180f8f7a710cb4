// converted: a tensor in another dtype, made on the device (the convert kernel), so that cache
// writes take f32, f16 and bf16 inputs whatever the pool holds.
#pragma once

#include "pagedkv/tensor.hpp"

namespace pagedkv::detail {

// t itself when it already has dtype `to`; else a new tensor of t's shape and dtype `to`,
// written by a dispatch recorded into the open batch (rounding to nearest even, bit for bit as
// round_to()). Allocates before it records: on a throw nothing is recorded.
Tensor converted(const Tensor& t, DType to);

}  // namespace pagedkv::detail
