// float_bits.glsl: conversions between f32 bit patterns and f16, bf16 and FP8 E4M3FN, and the
// correctly rounded quotient c / a, in integer arithmetic only: the results equal the host's
// (allocator/dtype.cpp, tests/reference/reference_quant.hpp) bit for bit on any device
// (packHalf2x16 rounds as the implementation likes, float division is only accurate to 2.5
// ulp, and a device may flush subnormals in float arithmetic).
// Needs GL_EXT_shader_explicit_arithmetic_types_int64 (pagedkv_div_rounded).

uint f16_to_f32(uint h) {
    const uint sign = (h & 0x8000u) << 16;
    const uint e = (h >> 10) & 0x1fu;
    const uint m = h & 0x3ffu;
    if (e == 0u) {
        if (m == 0u) return sign;
        // m * 2^-24, normalised: the leading bit at position b is worth 2^(b - 24).
        const uint b = uint(findMSB(m));
        return sign | ((103u + b) << 23) | ((m << (23u - b)) & 0x7fffffu);
    }
    if (e == 31u) return sign | 0x7f800000u | (m << 13);
    return sign | ((e + 112u) << 23) | (m << 13);
}

uint f32_to_f16(uint u) {
    const uint sign = (u >> 16) & 0x8000u;
    const uint a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN
    if (a >= 0x477ff000u) return sign | 0x7c00u;  // rounds to infinity or is one
    if (a < 0x38800000u) {
        // Subnormal f16 or zero: a's value in units of 2^-24 is M >> s, rounded to nearest even.
        const uint e = a >> 23;
        if (e == 0u) return sign;  // an f32 subnormal is far below half a unit
        const uint s = 126u - e;   // >= 14
        if (s > 24u) return sign;  // below half a unit
        const uint m = (a & 0x7fffffu) | 0x800000u;
        uint r = m >> s;
        const uint rem = m & ((1u << s) - 1u);
        const uint half_unit = 1u << (s - 1u);
        if (rem > half_unit || (rem == half_unit && (r & 1u) != 0u)) r += 1u;
        return sign | r;
    }
    uint v = a - (112u << 23);
    v += 0xfffu + ((v >> 13) & 1u);
    return sign | (v >> 13);
}

uint f32_to_bf16(uint u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return ((u >> 16) | 0x40u) & 0xffffu;  // quiet NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// Type codes of pagedkv::DType.
const uint DT_F32 = 0u;
const uint DT_F16 = 1u;
const uint DT_BF16 = 2u;
const uint DT_INT8 = 3u;
const uint DT_FP8 = 4u;

uint to_f32_bits(uint bits, uint type) {
    return type == DT_F32 ? bits : type == DT_F16 ? f16_to_f32(bits) : bits << 16;
}

uint from_f32_bits(uint u, uint type) {
    return type == DT_F32 ? u : type == DT_F16 ? f32_to_f16(u) : f32_to_bf16(u);
}

// The f32 bits of an E4M3FN code (0x7f and 0xff are NaN).
uint fp8_to_f32(uint c) {
    const uint sign = (c & 0x80u) << 24;
    const uint e = (c >> 3) & 0xfu;
    const uint m = c & 7u;
    if (e == 15u && m == 7u) return 0x7fc00000u;
    if (e == 0u) {
        if (m == 0u) return sign;
        // m * 2^-9, normalised: the leading bit at position b is worth 2^(b - 9).
        const uint b = uint(findMSB(m));
        return sign | ((118u + b) << 23) | ((m << (23u - b)) & 0x7fffffu);
    }
    return sign | ((e + 120u) << 23) | (m << 20);
}

// The E4M3FN code nearest the f32 bits u (ties to even, saturating at +-448, zero unsigned).
uint f32_to_fp8(uint u) {
    const uint sign = (u >> 24) & 0x80u;
    const uint a = u & 0x7fffffffu;
    if (a >= 0x43e00000u) return sign | 0x7eu;  // 448 or beyond (finite here)
    if (a <= 0x3a800000u) return 0u;           // at most half of the least subnormal, 2^-10
    const uint e = a >> 23;
    if (e >= 121u) {  // normal E4M3 (2^-6 and up): round the 20 dropped mantissa bits
        uint v = a - (120u << 23);
        v += 0x7ffffu + ((v >> 20) & 1u);
        return sign | (v >> 20);  // below 448: never past 0x7e
    }
    // Subnormal E4M3: a's value in units of 2^-9 is M >> s, rounded to nearest even.
    const uint s = 141u - e;  // 21..
    if (s > 24u) return 0u;
    const uint m = (a & 0x7fffffu) | 0x800000u;
    uint r = m >> s;
    const uint rem = m & ((1u << s) - 1u);
    const uint half_unit = 1u << (s - 1u);
    if (rem > half_unit || (rem == half_unit && (r & 1u) != 0u)) r += 1u;
    return r == 0u ? 0u : sign | r;
}

// The f32 bits of c / a rounded to nearest even, for c an integer in [32, 2^9) (127 and 448 here:
// q then has at least 26 bits) and a the bits of a positive normal f32 for which the quotient is
// a normal f32.
uint div_rounded(uint c, uint a) {
    const uint m = (a & 0x7fffffu) | 0x800000u;  // a = m * 2^(ea - 150)
    const int ea = int(a >> 23);
    // q = floor(c * 2^43 / m): 20 to 29 significant bits (c * 2^23 / m lies in (c / 2, c]).
    const uint64_t num = uint64_t(c) << 43;
    const uint64_t q64 = num / uint64_t(m);
    const bool inexact = q64 * uint64_t(m) != num;
    const uint q = uint(q64);
    const int b = findMSB(q);
    const int shift = b - 23;  // >= 2 for c >= 32: q keeps 24 bits and a rounding bit
    uint mant = q >> uint(shift);
    const uint rem = q & ((1u << uint(shift)) - 1u);
    const uint half_unit = 1u << uint(shift - 1);
    if (rem > half_unit || (rem == half_unit && (inexact || (mant & 1u) != 0u))) mant += 1u;
    int exp2 = shift - 43 - (ea - 150);  // c / a = mant * 2^exp2
    if (mant == 0x1000000u) {
        mant >>= 1;
        exp2 += 1;
    }
    return (uint(exp2 + 23 + 127) << 23) | (mant & 0x7fffffu);
}
