// quant_rows: copy_rows for quantized pages (Int8, FP8E4M3). A scatter quantizes each
// (token, head) row of a float tensor (f32, f16 or bf16) with one f32 scale and writes its
// codes (one byte per element, four to a word) and the scale (in the page's scale rows,
// PageFormat::scales_offset); a gather dequantizes rows into a float tensor. One thread per row.
//   amax = max |x|;  not finite: scale NaN, codes 0;  below 2^-100: scale 0, codes 0;
//   else scale = amax * fl(1 / C), r = C / amax (correctly rounded), code = encode(fl(x * r))
// with C = 127 (Int8: round half even, clamp to +-127) or 448 (FP8E4M3: nearest, ties to even,
// saturating); a value reads back as fl(decode(code) * scale), rounded to the tensor's dtype.
// Only integer arithmetic and correctly rounded multiplies (precise: never fused), so the bytes
// equal tests/reference/reference_quant.hpp on every device.
#version 460
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require

#include "float_bits.glsl"
#include "page_address.glsl"

layout(local_size_x_id = 0) in;

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Words { uint w[]; };
// x: tensor row of head 0 (b * heads * seq + s), or NONE (scatter a zero row)
// y: block * block_size + slot, or NONE (gather zeros)
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer Entries { uvec2 e[]; };

layout(push_constant) uniform Params {
    uint64_t tensor;        // Words
    uint64_t entries;       // Entries
    uint64_t tensor2;       // Words: the second tensor (V), or 0
    uint64_t page_offset;   // bytes from a block's start to this layer's K (or V) page
    uint64_t page_offset2;  // ... to the second tensor's page
    uint64_t scales;        // bytes from a block's start to the first page's scales
    uint64_t scales2;       // ... to the second page's scales
    PageAddressing pages;
    uint num_entries;
    uint heads;
    uint dim;               // elements of one row (a multiple of 4)
    uint dim2;              // ... of the second tensor's rows
    uint head_stride;       // tensor rows between consecutive heads (= seq)
    uint gather;            // 1: pages -> tensor, 0: tensor -> pages
    uint tensor_type;       // DT_F32, DT_F16 or DT_BF16
    uint quant_type;        // DT_INT8 or DT_FP8
} p;

const uint NONE = 0xFFFFFFFFu;
const uint INV_127 = 0x3c010204u;  // fl(1 / 127)
const uint INV_448 = 0x3b124925u;  // fl(1 / 448)

// Element i of a tensor row starting at element `start` (even: rows are multiples of 4), as f32
// bits.
uint load(Words t, uint start, uint i) {
    if (p.tensor_type == DT_F32) return t.w[start + i];
    const uint word = t.w[(start + i) >> 1];
    return to_f32_bits((word >> (((start + i) & 1u) * 16u)) & 0xffffu, p.tensor_type);
}

uint encode(uint y_bits) {
    if (p.quant_type == DT_FP8) return f32_to_fp8(y_bits);
    const float n = clamp(roundEven(uintBitsToFloat(y_bits)), -127.0, 127.0);
    return uint(int(n)) & 0xffu;
}

float decode(uint code) {
    if (p.quant_type == DT_FP8) return uintBitsToFloat(fp8_to_f32(code));
    return float(bitfieldExtract(int(code), 0, 8));
}

void scatter(Words t, uint start, Words codes, Words scale, uint dim, bool hole) {
    uint amax = 0u;
    if (!hole)
        for (uint i = 0; i < dim; ++i) amax = max(amax, load(t, start, i) & 0x7fffffffu);
    if (hole || amax >= 0x7f800000u || amax < 0x0d800000u) {
        scale.w[0] = hole || amax < 0x7f800000u ? 0u : 0x7fc00000u;
        for (uint w = 0; w < dim / 4u; ++w) codes.w[w] = 0u;
        return;
    }
    const bool fp8 = p.quant_type == DT_FP8;
    precise const float s = uintBitsToFloat(amax) * uintBitsToFloat(fp8 ? INV_448 : INV_127);
    scale.w[0] = floatBitsToUint(s);
    const float r = uintBitsToFloat(div_rounded(fp8 ? 448u : 127u, amax));
    for (uint w = 0; w < dim / 4u; ++w) {
        uint word = 0u;
        for (uint k = 0; k < 4u; ++k) {
            precise const float y = uintBitsToFloat(load(t, start, 4u * w + k)) * r;
            word |= encode(floatBitsToUint(y)) << (8u * k);
        }
        codes.w[w] = word;
    }
}

void store_pair(Words t, uint start, uint i, uint a, uint b) {
    if (p.tensor_type == DT_F32) {
        t.w[start + i] = a;
        t.w[start + i + 1u] = b;
    } else {
        t.w[(start + i) >> 1] = from_f32_bits(a, p.tensor_type) |
                                (from_f32_bits(b, p.tensor_type) << 16);
    }
}

void gather(Words t, uint start, Words codes, Words scale, uint dim, bool none) {
    if (none) {
        for (uint i = 0; i < dim; i += 2u) store_pair(t, start, i, 0u, 0u);
        return;
    }
    const uint sb = scale.w[0];
    const float s = uintBitsToFloat(sb);
    const bool nan = (sb & 0x7fffffffu) > 0x7f800000u;
    for (uint w = 0; w < dim / 4u; ++w) {
        const uint word = codes.w[w];
        uint v[4];
        for (uint k = 0; k < 4u; ++k) {
            precise const float x = decode((word >> (8u * k)) & 0xffu) * s;
            v[k] = nan ? 0x7fc00000u : floatBitsToUint(x);
        }
        store_pair(t, start, 4u * w, v[0], v[1]);
        store_pair(t, start, 4u * w + 2u, v[2], v[3]);
    }
}

void main() {
    const uint members = p.tensor2 != 0ul ? 2u : 1u;
    const uint units = members * p.heads;
    const uint total = p.num_entries * units;
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    Entries entries = Entries(p.entries);
    for (uint i = gl_GlobalInvocationID.x; i < total; i += stride) {
        const uint entry = i / units;
        uint head = i - entry * units;
        Words t = Words(p.tensor);
        uint64_t page_offset = p.page_offset, scales = p.scales;
        uint dim = p.dim;
        if (head >= p.heads) {  // the second tensor's share of the entry
            head -= p.heads;
            t = Words(p.tensor2);
            page_offset = p.page_offset2;
            scales = p.scales2;
            dim = p.dim2;
        }
        const uvec2 e = entries.e[entry];
        const uint start = (e.x + head * p.head_stride) * dim;
        if (e.y == NONE) {  // gather past a row's end: zero padding
            gather(t, start, Words(0ul), Words(0ul), dim, true);
            continue;
        }
        const uint block = e.y / p.pages.block_size;
        const uint slot = e.y - block * p.pages.block_size;
        Words codes = Words(page_row_address(p.pages, page_offset, block, slot, head, dim));
        Words scale = Words(page_row_address(p.pages, scales, block, slot, head, 4ul));
        if (p.gather != 0u)
            gather(t, start, codes, scale, dim, false);
        else
            scatter(t, start, codes, scale, dim, e.x == NONE);
    }
}
