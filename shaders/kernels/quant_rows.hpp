// Records the quant_rows shader: the scatter and gather of copy_rows for quantized pages (Int8,
// FP8E4M3). A scatter reads each (token, head) row of a float tensor (f32, f16 or bf16),
// quantizes it with one f32 scale (the rule of tests/reference/reference_quant.hpp, in integer
// and correctly rounded float arithmetic only, so the bytes are the same on every device) and
// writes the codes and the scale; a gather dequantizes rows into a float tensor. A row's words
// are spread over threads (its amax reduced in shared memory), or one thread takes a whole row
// on a CPU device (byte_paths().whole_rows). The caller decides which rows go where (cache
// policy); this only quantizes.
#pragma once

#include <cstdint>
#include <span>

#include "pagedkv/dtype.hpp"
#include "shaders/kernels/page_slabs.hpp"
#include "shaders/kernels/row_copy.hpp"

namespace pagedkv::detail {

// float_bits.glsl's DT_ codes (and convert.comp's): pagedkv::DType's values.
constexpr uint32_t shader_dtype_code(DType t) noexcept {
    return static_cast<uint32_t>(t);
}
static_assert(shader_dtype_code(DType::F32) == 0 && shader_dtype_code(DType::F16) == 1 &&
                  shader_dtype_code(DType::BF16) == 2 && shader_dtype_code(DType::Int8) == 3 &&
                  shader_dtype_code(DType::FP8E4M3) == 4,
              "DT_ codes of float_bits.glsl");

struct QuantRowCopy {
    Buffer* tensor = nullptr;
    DType tensor_dtype = DType::F32;  // F32, F16 or BF16 (both tensors)
    std::span<const RowEntry> entries;
    uint32_t heads = 0;
    uint32_t dim = 0;          // elements of one (token, head) row
    uint32_t head_stride = 0;  // tensor rows between heads (= the tensor's seq length)
    uint64_t page_offset = 0;  // bytes from a block's start to the layer's K or V page
    bool value = false;        // the page is a V page (its scales follow v_values_bytes)
    bool gather = false;
    // Optional second tensor moved by the same entries: the layer's V (rows of dim2).
    Buffer* tensor2 = nullptr;
    uint32_t dim2 = 0;
    uint64_t page_offset2 = 0;
    Buffer* entries_buffer = nullptr;
    uint64_t entries_offset = 0;
};

void record_quant_rows(Device& dev, PageSlabs& pages, const QuantRowCopy& op);

}  // namespace pagedkv::detail
