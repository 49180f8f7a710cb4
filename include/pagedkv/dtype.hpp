// DType: the element types pages and tensors can hold. F32, F16 and BF16 are tensor and pool
// dtypes; Int8 and FP8E4M3 are pool dtypes only (quantized pages: one f32 scale per token per
// kv head, stored in the page beside the values; see PageFormat and README "Quantized pages").
// Conversion to and from f32 rounds to nearest-even and is done on the host, bit-exactly.
#pragma once

#include "pagedkv/export.h"

#include <cstddef>
#include <cstdint>

namespace pagedkv {

enum class DType : uint8_t { F32, F16, BF16, Int8, FP8E4M3 };

// Whether t is one of the enumerators (a DType cast from a stored or C integer may not be).
constexpr bool known_dtype(DType t) noexcept {
    return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Int8 ||
           t == DType::FP8E4M3;
}
// Int8 (symmetric, -127..127) and FP8E4M3 (OCP E4M3FN, saturating at +-448): pool dtypes whose
// pages keep one f32 scale per (token, kv head) row.
constexpr bool is_quantized(DType t) noexcept {
    return t == DType::Int8 || t == DType::FP8E4M3;
}
// The dtypes a Tensor may have (and a pool's compute_dtype): F32, F16, BF16.
constexpr bool is_float_dtype(DType t) noexcept {
    return t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

// Bytes of one element; 0 for a value that is not an enumerator (every entry point refuses
// such a dtype with known_dtype() before sizing anything). Each dtype is listed: a new one
// must say its size here.
constexpr size_t dtype_size(DType t) noexcept {
    switch (t) {
        case DType::F32:
            return 4;
        case DType::F16:
        case DType::BF16:
            return 2;
        case DType::Int8:
        case DType::FP8E4M3:
            return 1;
    }
    return 0;
}
// Bytes of the scale a page keeps per (token, kv head) row: 4 (one f32) for a quantized
// dtype, 0 otherwise.
constexpr size_t dtype_scale_size(DType t) noexcept {
    return is_quantized(t) ? 4 : 0;
}
PAGEDKV_API const char* to_string(DType t) noexcept;

// Round-to-nearest-even conversions used by Tensor::from_host / to_host (and by the tests'
// reference cache, so both sides round the same way).
PAGEDKV_API uint16_t f32_to_f16(float f) noexcept;
PAGEDKV_API float f16_to_f32(uint16_t h) noexcept;
PAGEDKV_API uint16_t f32_to_bf16(float f) noexcept;
PAGEDKV_API float bf16_to_f32(uint16_t h) noexcept;
// Rounds f through dtype t and back: the value a tensor of dtype t stores for f (f itself for a
// quantized dtype, whose stored value depends on its whole row: see the quantize kernel).
PAGEDKV_API float round_to(DType t, float f) noexcept;

}  // namespace pagedkv
