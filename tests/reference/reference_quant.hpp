// The reference quantizer: the oracle for quantized pages (Int8, FP8E4M3). The obvious host
// implementation of the rule README "Quantized pages" states; the device kernels must produce
// exactly these bytes and scales, and dequantize to exactly these values.
//
// One (token, kv head) row x of d elements (f32, already exact in the input's dtype):
//   amax  = max |x_i|
//   amax not finite:   scale = NaN, every code 0 (the row reads back as NaN)
//   amax < 2^-100:     scale = 0,   every code 0 (the row reads back as zeros)
//   else:              scale = amax * fl(1 / C), r = fl(C / amax) (IEEE division),
//                      code_i = encode(fl(x_i * r)),  C = 127 (Int8) or 448 (FP8E4M3)
//   Int8:    encode(y) = clamp(round-half-even(y), -127, 127), as a two's-complement byte
//   FP8E4M3: encode(y) = the nearest E4M3FN value (ties to the even code), saturating at +-448
//   dequantized value = fl(decode(code) * scale), then rounded to the compute dtype.
// The FP8 encoder here searches the 127 positive finite values instead of manipulating bits, so
// it is independent of the kernel's integer arithmetic.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "pagedkv/dtype.hpp"

namespace pagedkv::test {

// The value of an E4M3FN code (0x7F / 0xFF: NaN).
inline float fp8e4m3_value(uint8_t c) {
    const float sign = (c & 0x80) ? -1.0f : 1.0f;
    const int e = (c >> 3) & 0xF, m = c & 7;
    if (e == 15 && m == 7) return std::nanf("");
    if (e == 0) return sign * std::ldexp(float(m), -9);
    return sign * std::ldexp(1.0f + float(m) / 8.0f, e - 7);
}

// The nearest E4M3FN code to y (|y| beyond 448 saturates), ties to the even code.
inline uint8_t fp8e4m3_nearest(float y) {
    static const std::array<float, 127> positive = [] {
        std::array<float, 127> v{};
        for (int c = 0; c < 127; ++c)
            v[size_t(c)] = fp8e4m3_value(uint8_t(c));
        return v;
    }();
    const float a = std::fabs(y);
    const uint8_t sign = std::signbit(y) ? 0x80 : 0;
    // First value >= a; compare with the one below it.
    const auto it = std::lower_bound(positive.begin(), positive.end(), a);
    if (it == positive.end()) return uint8_t(sign | 126);
    const int hi = int(it - positive.begin());
    if (hi == 0) return 0;  // +-0 (-0 is stored as +0)
    if (*it == a) return uint8_t(sign | hi);
    const int lo = hi - 1;
    // Exact (Sterbenz: neighbours are at most a factor 2 apart).
    const float dlo = a - positive[size_t(lo)], dhi = *it - a;
    const int c = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
    return uint8_t(c == 0 ? 0 : sign | c);  // (-0 is stored as +0)
}

inline float quant_max(DType t) {
    return t == DType::Int8 ? 127.0f : 448.0f;
}

struct QuantizedRow {
    std::vector<uint8_t> codes;
    float scale = 0.0f;
};

inline QuantizedRow quantize_row(DType t, std::span<const float> x) {
    QuantizedRow q;
    q.codes.assign(x.size(), 0);
    // |x| compared as bits: NaN above infinity above every finite value.
    uint32_t amax_bits = 0;
    for (float v : x)
        amax_bits = std::max(amax_bits, std::bit_cast<uint32_t>(v) & 0x7FFFFFFFu);
    if (amax_bits >= 0x7F800000u) {
        q.scale = std::bit_cast<float>(0x7FC00000u);
        return q;
    }
    if (amax_bits < 0x0D800000u) return q;  // below 2^-100: zeros
    const float amax = std::bit_cast<float>(amax_bits);
    const float c = quant_max(t);
    q.scale = amax * (1.0f / c);  // fl(1/C): a constant in the kernel
    const float r = c / amax;
    for (size_t i = 0; i < x.size(); ++i) {
        const float y = x[i] * r;
        if (t == DType::Int8) {
            const float n = std::clamp(std::nearbyint(y), -127.0f, 127.0f);
            q.codes[i] = uint8_t(int8_t(n));
        } else {
            q.codes[i] = fp8e4m3_nearest(y);
        }
    }
    return q;
}

inline float dequantize(DType t, uint8_t code, float scale) {
    const float v = t == DType::Int8 ? float(int8_t(code)) : fp8e4m3_value(code);
    return v * scale;
}

// The values a quantized pool stores for rows of `dim` elements (x holds whole rows), as a
// gather in compute dtype `compute` returns them.
inline std::vector<float> quantize_rows(DType t, DType compute, std::span<const float> x,
                                        size_t dim) {
    std::vector<float> out(x.size());
    for (size_t r = 0; r + dim <= x.size(); r += dim) {
        const QuantizedRow q = quantize_row(t, x.subspan(r, dim));
        for (size_t i = 0; i < dim; ++i)
            out[r + i] = round_to(compute, dequantize(t, q.codes[i], q.scale));
    }
    return out;
}

}  // namespace pagedkv::test
