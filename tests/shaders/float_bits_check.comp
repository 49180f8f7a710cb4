// Runs one function of shaders/kernels/float_bits.glsl over an array of f32 bit patterns, for
// tests/shaders/test_quant_kernel.cpp: op 0 div_rounded(c, x), 1 f32_to_fp8(x), 2 fp8_to_f32(x).
#version 460
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require

#include "../../shaders/kernels/float_bits.glsl"

layout(local_size_x_id = 0) in;

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Words { uint w[]; };

layout(push_constant) uniform Params {
    uint64_t src;
    uint64_t dst;
    uint count;
    uint c;
    uint op;
} p;

void main() {
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < p.count; i += stride) {
        const uint x = Words(p.src).w[i];
        Words(p.dst).w[i] = p.op == 0u ? div_rounded(p.c, x)
                          : p.op == 1u ? f32_to_fp8(x)
                                       : fp8_to_f32(x);
    }
}
