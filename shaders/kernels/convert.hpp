// Records the convert shader: element-wise f32 / f16 / bf16 conversion between two buffers,
// rounding to nearest even bit-exactly as the host's conversions in pagedkv/dtype.hpp do.
// Which tensors need converting is the caller's business; this only moves bits.
#pragma once

#include <cstdint>

#include "pagedkv/dtype.hpp"
#include "shaders/vulkan/buffer.hpp"

namespace pagedkv::detail {

class Device;

// Converts count elements of src (dtype from) into dst (dtype to), both starting at their
// address(): one dispatch in the open batch. Throws Unsupported when an odd count with a 16-bit
// side needs storageBuffer16BitAccess and the device lacks it, CapacityExceeded past 2^32 - 2
// elements.
void record_convert(Device& dev, Buffer& src, DType from, Buffer& dst, DType to, uint64_t count);
// Throws CapacityExceeded (naming op) when record_convert would refuse count elements for their
// number: a caller that converts after committing a change checks first.
void check_convert(uint64_t count, const char* op);

}  // namespace pagedkv::detail
