// convert: element-wise dtype conversion between f32, f16 and bf16 (codes of pagedkv::DType:
// 0 f32, 1 f16, 2 bf16), through the f32 bit pattern, rounding to nearest even with integer
// arithmetic only: the result equals allocator/dtype.cpp's f32_to_f16 / f32_to_bf16 /
// f16_to_f32 / bf16_to_f32 bit for bit on any device (packHalf2x16 rounds as the
// implementation likes, and a device may flush subnormals in float arithmetic).
// Each invocation converts a pair of elements. Compiled twice: WORD32 reads and writes 16-bit
// elements as halves of 32-bit words (the host uses it only for an even count whenever a side
// is 16-bit, so no word reaches past either tensor); STORAGE16 addresses 16-bit elements one
// by one (GL_EXT_shader_16bit_storage), for odd counts.
#version 460
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#if defined(STORAGE16)
#extension GL_EXT_shader_16bit_storage : require
#endif

layout(local_size_x_id = 0) in;

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Words { uint w[]; };
#if defined(STORAGE16)
layout(buffer_reference, std430, buffer_reference_align = 2) buffer Halves { uint16_t h[]; };
#endif

layout(push_constant) uniform Params {
    uint64_t src;
    uint64_t dst;
    uint count;     // elements
    uint src_type;  // DType codes
    uint dst_type;
} p;

const uint F32 = 0u;
const uint F16 = 1u;

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

uint to_f32(uint bits, uint type) {
    return type == F32 ? bits : type == F16 ? f16_to_f32(bits) : bits << 16;
}

uint from_f32(uint u, uint type) {
    return type == F32 ? u : type == F16 ? f32_to_f16(u) : f32_to_bf16(u);
}

uint load(uint i) {
    if (p.src_type == F32) return Words(p.src).w[i];
#if defined(STORAGE16)
    return uint(Halves(p.src).h[i]);
#else
    return (Words(p.src).w[i >> 1] >> ((i & 1u) * 16u)) & 0xffffu;
#endif
}

void main() {
    const uint pairs = (p.count + 1u) / 2u;
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint pair = gl_GlobalInvocationID.x; pair < pairs; pair += stride) {
        const uint i = 2u * pair;
        const bool two = i + 1u < p.count;
        const uint a = from_f32(to_f32(load(i), p.src_type), p.dst_type);
        const uint b = two ? from_f32(to_f32(load(i + 1u), p.src_type), p.dst_type) : 0u;
        if (p.dst_type == F32) {
            Words(p.dst).w[i] = a;
            if (two) Words(p.dst).w[i + 1u] = b;
        } else {
#if defined(STORAGE16)
            Halves(p.dst).h[i] = uint16_t(a);
            if (two) Halves(p.dst).h[i + 1u] = uint16_t(b);
#else
            Words(p.dst).w[pair] = a | (b << 16);
#endif
        }
    }
}
