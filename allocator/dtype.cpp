#include "pagedkv/dtype.hpp"
#include "pagedkv/page_layout.hpp"

#include <bit>
#include <cmath>

namespace pagedkv {

const char* to_string(DType t) noexcept {
    switch (t) {
        case DType::F32:
            return "f32";
        case DType::F16:
            return "f16";
        case DType::BF16:
            return "bf16";
        case DType::Int8:
            return "int8";
        case DType::FP8E4M3:
            return "fp8e4m3";
    }
    return "?";
}

const char* to_string(PageLayout l) noexcept {
    switch (l) {
        case PageLayout::HeadMajor:
            return "head_major";
        case PageLayout::TokenMajor:
            return "token_major";
        case PageLayout::Auto:
            return "auto";
    }
    return "?";
}

uint16_t f32_to_bf16(float f) noexcept {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return uint16_t(u >> 16);
}

float bf16_to_f32(uint16_t h) noexcept {
    return std::bit_cast<float>(uint32_t(h) << 16);
}

uint16_t f32_to_f16(float f) noexcept {
    const uint32_t u = std::bit_cast<uint32_t>(f);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
    if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to infinity or is one
    if (abs < 0x38800000u) {
        // Subnormal f16 (or zero): scale so the f16 subnormal unit (2^-24) becomes 1, then let
        // the FPU round to nearest even.
        const float scaled = std::bit_cast<float>(abs) * 16777216.0f;
        return uint16_t(sign | uint16_t(std::nearbyint(scaled)));
    }
    // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
    uint32_t v = abs - (uint32_t(127 - 15) << 23);
    v += 0xfffu + ((v >> 13) & 1u);
    return uint16_t(sign | uint16_t(v >> 13));
}

float f16_to_f32(uint16_t h) noexcept {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        const float v = float(man) * (1.0f / 16777216.0f);  // man * 2^-24, exact
        return std::bit_cast<float>(std::bit_cast<uint32_t>(v) | sign);
    }
    if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
    return std::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
}

float round_to(DType t, float f) noexcept {
    switch (t) {
        case DType::F32:
            return f;
        case DType::F16:
            return f16_to_f32(f32_to_f16(f));
        case DType::BF16:
            return bf16_to_f32(f32_to_bf16(f));
        case DType::Int8:
        case DType::FP8E4M3:
            return f;
    }
    return f;
}

}  // namespace pagedkv
