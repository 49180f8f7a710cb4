// quant_rows: copy_rows for quantized pages (Int8, FP8E4M3). A scatter quantizes each
// (token, head) row of a float tensor (f32, f16 or bf16) with one f32 scale and writes its
// codes (one byte per element, four to a word) and the scale (in the page's scale rows,
// PageFormat::scales_offset); a gather dequantizes rows into a float tensor. A row's words are
// spread over `lanes` threads (1 on CPU devices).
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

// A workgroup quantizes (or dequantizes) WG / lanes rows at a time, `lanes` threads per row,
// each thread a word of 4 codes at a time: neighbouring threads touch neighbouring memory, and a
// row's amax is reduced through shared memory.
layout(local_size_x = 64) in;
const uint WG = 64;


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
    uint lanes;             // threads per row: min(WG, words of the longer row)
} p;

shared uint amax_s[WG];  // each thread's share of its row's amax (|x| as bits)
shared uint r_s[WG];     // per row slot: C / amax as f32 bits, or 0 for a row of zero codes

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

void store_pair(Words t, uint start, uint i, uint a, uint b) {
    if (p.tensor_type == DT_F32) {
        t.w[start + i] = a;
        t.w[start + i + 1u] = b;
    } else {
        t.w[(start + i) >> 1] = from_f32_bits(a, p.tensor_type) |
                                (from_f32_bits(b, p.tensor_type) << 16);
    }
}

// One row's place: its tensor, first element and length, its codes and scale in the page.
struct Row {
    Words t;
    uint start;
    uint dim;
    Words codes;
    Words scale;
    bool no_tensor;  // scatter: a hole (zeros); gather: unused
    bool no_page;    // gather past a row's end: zeros
};

Row find_row(uint row) {
    const uint members = p.tensor2 != 0ul ? 2u : 1u;
    const uint units = members * p.heads;
    const uint entry = row / units;
    uint head = row - entry * units;
    Row r;
    r.t = Words(p.tensor);
    uint64_t page_offset = p.page_offset, scales = p.scales;
    r.dim = p.dim;
    if (head >= p.heads) {  // the second tensor's share of the entry
        head -= p.heads;
        r.t = Words(p.tensor2);
        page_offset = p.page_offset2;
        scales = p.scales2;
        r.dim = p.dim2;
    }
    const uvec2 e = Entries(p.entries).e[entry];
    r.no_tensor = e.x == NONE;
    r.no_page = e.y == NONE;
    r.start = r.no_tensor ? 0u : (e.x + head * p.head_stride) * r.dim;
    const uint y = r.no_page ? 0u : e.y;
    const uint block = y / p.pages.block_size;
    const uint slot = y - block * p.pages.block_size;
    r.codes = Words(page_row_address(p.pages, page_offset, block, slot, head, r.dim));
    r.scale = Words(page_row_address(p.pages, scales, block, slot, head, 4ul));
    return r;
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint lanes = p.lanes;
    const uint per_group = WG / lanes;
    const uint slot = tid / lanes;  // the row slot of this thread in its workgroup
    const uint lane = tid - slot * lanes;
    const uint members = p.tensor2 != 0ul ? 2u : 1u;
    const uint total = p.num_entries * members * p.heads;
    const uint groups = (total + per_group - 1u) / per_group;
    const bool fp8 = p.quant_type == DT_FP8;
    for (uint g = gl_WorkGroupID.x; g < groups; g += gl_NumWorkGroups.x) {
        const uint row = g * per_group + slot;
        const bool live = slot < per_group && row < total;
        Row r;
        if (live) r = find_row(row);
        const uint words = live ? r.dim / 4u : 0u;
        if (p.gather != 0u) {  // uniform: no barrier below is skipped by some threads
            if (!live) continue;
            if (r.no_page) {
                for (uint w = lane; w < words; w += lanes) {
                    store_pair(r.t, r.start, 4u * w, 0u, 0u);
                    store_pair(r.t, r.start, 4u * w + 2u, 0u, 0u);
                }
                continue;
            }
            const uint sb = r.scale.w[0];
            const float s = uintBitsToFloat(sb);
            const bool nan = (sb & 0x7fffffffu) > 0x7f800000u;
            for (uint w = lane; w < words; w += lanes) {
                const uint word = r.codes.w[w];
                uint v[4];
                for (uint k = 0; k < 4u; ++k) {
                    precise const float x = decode((word >> (8u * k)) & 0xffu) * s;
                    v[k] = nan ? 0x7fc00000u : floatBitsToUint(x);
                }
                store_pair(r.t, r.start, 4u * w, v[0], v[1]);
                store_pair(r.t, r.start, 4u * w + 2u, v[2], v[3]);
            }
            continue;
        }
        // Scatter: the row's amax, through shared memory.
        uint m = 0u;
        if (live && !r.no_tensor)
            for (uint i = 4u * lane; i < r.dim; i += 4u * lanes)
                for (uint k = 0; k < 4u; ++k) m = max(m, load(r.t, r.start, i + k) & 0x7fffffffu);
        amax_s[tid] = m;
        barrier();
        if (live && lane == 0u) {
            uint amax = 0u;
            for (uint l = 0; l < lanes; ++l) amax = max(amax, amax_s[tid + l]);
            uint rb = 0u;
            if (r.no_tensor || amax < 0x0d800000u) {
                r.scale.w[0] = 0u;  // a hole, zeros, or a row below 2^-100: zeros
            } else if (amax >= 0x7f800000u) {
                r.scale.w[0] = 0x7fc00000u;  // not finite: reads back as NaN
            } else {
                precise const float s =
                    uintBitsToFloat(amax) * uintBitsToFloat(fp8 ? INV_448 : INV_127);
                r.scale.w[0] = floatBitsToUint(s);
                rb = div_rounded(fp8 ? 448u : 127u, amax);
            }
            r_s[slot] = rb;
        }
        barrier();
        if (live) {
            const uint rb = r_s[slot];
            const float rq = uintBitsToFloat(rb);
            for (uint w = lane; w < words; w += lanes) {
                uint word = 0u;
                if (rb != 0u)
                    for (uint k = 0; k < 4u; ++k) {
                        precise const float y = uintBitsToFloat(load(r.t, r.start, 4u * w + k)) * rq;
                        word |= encode(floatBitsToUint(y)) << (8u * k);
                    }
                r.codes.w[w] = word;
            }
        }
        barrier();  // amax_s and r_s are written again by the next group
    }
}
