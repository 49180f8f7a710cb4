// convert: element-wise dtype conversion between f32, f16 and bf16 (codes of pagedkv::DType:
// 0 f32, 1 f16, 2 bf16), through the f32 bit pattern, rounding to nearest even with integer
// arithmetic only (float_bits.glsl): the result equals allocator/dtype.cpp's f32_to_f16 /
// f32_to_bf16 / f16_to_f32 / bf16_to_f32 bit for bit on any device.
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

#include "float_bits.glsl"

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

uint load(uint i) {
    if (p.src_type == DT_F32) return Words(p.src).w[i];
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
        const uint a = from_f32_bits(to_f32_bits(load(i), p.src_type), p.dst_type);
        const uint b = two ? from_f32_bits(to_f32_bits(load(i + 1u), p.src_type), p.dst_type) : 0u;
        if (p.dst_type == DT_F32) {
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
