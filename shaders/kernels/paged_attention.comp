// paged_attention: decode attention, one query token per batch row, read straight from the
// pages through a CSR block table (PAGED), or from contiguous (batch, kv_heads, len, dim) K/V
// (CONTIGUOUS: the same arithmetic on a gather's output, for comparison).
//
// One workgroup of 64 threads per (kv head, slice of its query heads, row, chunk): it computes
// up to MAX_G query heads of one GQA group, so each K/V row is read once per group (or once
// per slice, when head_dim * heads would not fit q_s). Tokens go in tiles of p.tile tokens:
//   1. staging: the tile's K rows are copied into shared memory with coalesced loads (16-byte
//      uvec4 words where rows, pages and offsets allow, else 32-bit words). PAGED walks the
//      pages the tile touches: one block-table read per page; within a page the tile's rows
//      are contiguous (head-major [kv_heads][block_size][row]) or kv_heads rows apart
//      (token-major [block_size][kv_heads][row]): p.pages.slot_rows;
//   2. scores: thread j scores token j against every query head of the slice;
//   3. online softmax (as in FlashAttention): the tile's max and sum per head are reduced with
//      subgroupMax / subgroupAdd (SUBGROUP) or a shared-memory tree (otherwise);
//   4. values: each thread owns output words and reads them, coalesced, from every V row of
//      the tile, accumulating all query heads of the slice from one load.
// Split-K (flash-decoding): with p.chunk != 0 the workgroup covers tokens
// [chunk * z, chunk * (z + 1)) of its row and writes its partial (max, sum, unnormalised acc)
// to p.scratch; the REDUCE variant then combines a row's chunks in order.
// The tiling depends on the row's tokens only (never on pages), so PAGED and CONTIGUOUS do
// the same arithmetic in the same order and agree bit for bit.
// Elements are read as 32-bit words: one f32, or two f16/bf16 (even head dims). Accumulates
// in f32. Compiled for F32, F16 and BF16 elements, PAGED / CONTIGUOUS / REDUCE, with and
// without SUBGROUP.
// Quantized pages (INT8, FP8: PAGED only, with and without SUBGROUP) are read directly: a word
// holds four codes, and each (token, head) row has one f32 scale (the page's scale rows, at
// p.k_scales / p.v_scales from the K / V page). A tile's scales are staged with its rows; a
// score is scale_k * sum(q_i * code_i), and a V row adds weight * scale_v * code. The query and
// the output are floats of their own type (p.flags >> 1: DT_F32, DT_F16 or DT_BF16), and a
// split writes its partials as that type's REDUCE variant reads them.
#version 460
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#if defined(SUBGROUP)
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

#if defined(INT8) || defined(FP8)
#define QUANT
#include "float_bits.glsl"
#endif
#include "page_address.glsl"

layout(local_size_x = 64) in;

const uint WG = 64;
#if defined(QUANT)
const uint MAX_WORDS = 64;    // head_dim up to 256 codes (an accumulator of 4 floats a word)
#else
const uint MAX_WORDS = 256;   // head_dim up to 256 f32 or 512 16-bit elements
#endif
const uint MAX_G = 8;         // query heads a workgroup computes
const uint Q_FLOATS = 2048;   // q_s: p.group * head_dim <= Q_FLOATS
const uint K_S_WORDS = 4160;  // k_s: p.tile * (k_words + 1) <= K_S_WORDS (64 rows of 64 words)

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Words { uint w[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) readonly buffer Quads { uvec4 w[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) readonly buffer Uints { uint u[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer Floats { float f[]; };

layout(push_constant) uniform Params {
    uint64_t q;        // (batch, q_heads, 1, head_dim)
    uint64_t dst;      // (batch, q_heads, 1, v_head_dim)
    uint64_t k;        // CONTIGUOUS: K (batch, kv_heads, max_len, head_dim); PAGED: K page offset
    uint64_t v;        // CONTIGUOUS: V; PAGED: bytes from a block's start to the layer's V page
    // PAGED: first_page (batch: where the row's pages start in indices), length (batch: the
    // row's tokens), first_slot (batch: its first token's slot in its first page), indices;
    // CONTIGUOUS: row lengths (batch)
    uint64_t table;
    uint64_t scratch;  // split: partials (batch, q_heads, chunks) of 2 + 2 * v_words floats
    PageAddressing pages;  // PAGED
    uint q_heads;      // (the rows are gl_NumWorkGroups.y)
    uint kv_heads;
    uint k_words;      // 32-bit words in one K row (head_dim * elem_bytes / 4)
    uint v_words;
    uint max_len;      // CONTIGUOUS: the K/V tensors' seq length
    float scale;
    uint chunk;        // tokens a workgroup covers (split), or 0: the whole row
    uint tile;         // tokens a tile: tile * (k_words + 1) <= K_S_WORDS, tile <= 64
    uint group;        // query heads a workgroup computes (<= MAX_G)
    uint flags;        // bit 0: K rows are read as uvec4 (k_words % 4 == 0, aligned);
                       // QUANT: bits 1..: the DT_ type of q and dst
    uint k_scales;     // QUANT: bytes from the K page to its scales (PageFormat::scales_offset)
    uint v_scales;     // QUANT: ... from the V page to its scales
} p;

#define NEG_INF uintBitsToFloat(0xFF800000u)

#if defined(QUANT)
#define VEC vec4
const uint PER_WORD = 4;
#if defined(INT8)
VEC unpack_word(uint w) {
    const int i = int(w);
    return vec4(bitfieldExtract(i, 0, 8), bitfieldExtract(i, 8, 8), bitfieldExtract(i, 16, 8),
                bitfieldExtract(i, 24, 8));
}
#else  // FP8: E4M3FN codes through a table (fp8_s, filled before the first tile)
shared float fp8_s[256];
VEC unpack_word(uint w) {
    return vec4(fp8_s[w & 0xFFu], fp8_s[(w >> 8) & 0xFFu], fp8_s[(w >> 16) & 0xFFu], fp8_s[w >> 24]);
}
#endif
#elif defined(F32)
#define VEC vec2
const uint PER_WORD = 1;
vec2 unpack_word(uint w) { return vec2(uintBitsToFloat(w), 0.0); }
uint pack_word(vec2 v) { return floatBitsToUint(v.x); }
#elif defined(F16)
#define VEC vec2
const uint PER_WORD = 2;
vec2 unpack_word(uint w) { return unpackHalf2x16(w); }
uint pack_word(vec2 v) { return packHalf2x16(v); }
#else  // BF16: the upper half of an f32; rounded to nearest even on the way out
#define VEC vec2
const uint PER_WORD = 2;
vec2 unpack_word(uint w) { return vec2(uintBitsToFloat(w << 16), uintBitsToFloat(w & 0xFFFF0000u)); }
uint to_bf16(float f) {
    const uint u = floatBitsToUint(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (u >> 16) | 0x40u;  // NaN stays a quiet NaN
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
uint pack_word(vec2 v) { return to_bf16(v.x) | (to_bf16(v.y) << 16); }
#endif

#if defined(REDUCE)
// One workgroup per (query head, row): combines the row's chunks in order. A chunk without
// tokens has sum 0 and adds nothing.
void main() {
    const uint h = gl_WorkGroupID.x;
    const uint row = gl_WorkGroupID.y;
    const uint tid = gl_LocalInvocationID.x;
    const uint rec = 2u + 2u * p.v_words;
    const uint n = p.chunk;  // REDUCE: chunks per row
    Floats part = Floats(p.scratch + uint64_t((row * p.q_heads + h) * n * rec) * 4ul);
    float m = NEG_INF;
    for (uint c = 0; c < n; ++c)
        if (part.f[c * rec + 1u] > 0.0) m = max(m, part.f[c * rec]);
    float l = 0.0;
    for (uint c = 0; c < n; ++c) {
        const float lc = part.f[c * rec + 1u];
        if (lc > 0.0) l += lc * exp(part.f[c * rec] - m);
    }
    const float inv = l > 0.0 ? 1.0 / l : 0.0;
    Words o = Words(p.dst + uint64_t(row * p.q_heads + h) * uint64_t(p.v_words) * 4ul);
    for (uint w = tid; w < p.v_words; w += WG) {
        vec2 a = vec2(0.0);
        for (uint c = 0; c < n; ++c) {
            const float lc = part.f[c * rec + 1u];
            if (lc > 0.0) {
                const vec2 x = vec2(part.f[c * rec + 2u + 2u * w], part.f[c * rec + 3u + 2u * w]);
                a += x * exp(part.f[c * rec] - m);
            }
        }
        o.w[w] = pack_word(a * inv);
    }
}
#else

shared float q_s[Q_FLOATS];
shared uint k_s[K_S_WORDS];
shared float weight_s[MAX_G * WG];
shared float red_s[MAX_G * WG];
shared uint64_t value_s[WG];  // address of each tile token's V row
#if defined(QUANT)
shared float k_scale_s[WG];  // each tile token's K scale
shared float v_scale_s[WG];  // ... and V scale
#endif

uint row_length(uint row) {
#if defined(PAGED)
    return Uints(p.table).u[gl_NumWorkGroups.y + row];
#else
    return Uints(p.table).u[row];
#endif
}

// Copies count K rows, the first at address k and each `rows` K rows after the previous (1:
// contiguous; token-major pages: kv_heads), into k_s rows [first, first + count) (stride
// k_words + 1: scoring threads read different rows at the same column without bank
// conflicts), and notes the V row of each (V rows `rows` V rows apart from v). QUANT: also
// the K and V scales of each, from ks and vs (the first row's scales, `rows` scales apart).
void stage(uint tid, uint64_t k, uint64_t v, uint first, uint count, uint rows
#if defined(QUANT)
           , uint64_t ks, uint64_t vs
#endif
) {
    const uint stride = p.k_words + 1u;
    if ((p.flags & 1u) != 0u) {
        const uint per_row = p.k_words >> 2;
        const uint src_row = per_row * rows;
        Quads src = Quads(k);
        for (uint i = tid; i < count * per_row; i += WG) {
            const uint r = i / per_row;
            const uint c = i - r * per_row;
            const uint at = (first + r) * stride + c * 4u;
            const uvec4 x = src.w[r * src_row + c];
            k_s[at] = x.x;
            k_s[at + 1u] = x.y;
            k_s[at + 2u] = x.z;
            k_s[at + 3u] = x.w;
        }
    } else {
        const uint src_row = p.k_words * rows;
        Words src = Words(k);
        for (uint i = tid; i < count * p.k_words; i += WG) {
            const uint r = i / p.k_words;
            const uint c = i - r * p.k_words;
            k_s[(first + r) * stride + c] = src.w[r * src_row + c];
        }
    }
    if (tid < count) {
        value_s[first + tid] = v + uint64_t(tid * rows) * uint64_t(p.v_words) * 4ul;
#if defined(QUANT)
        k_scale_s[first + tid] = Floats(ks).f[tid * rows];
        v_scale_s[first + tid] = Floats(vs).f[tid * rows];
#endif
    }
}

// v[hh] = the max (or sum) of every thread's v[hh], for hh < p.group; in every thread.
void reduce(uint tid, inout float v[MAX_G], bool is_max) {
#if defined(SUBGROUP)
    for (uint hh = 0; hh < MAX_G; ++hh)
        if (hh < p.group) {
            const float r = is_max ? subgroupMax(v[hh]) : subgroupAdd(v[hh]);
            if (subgroupElect()) red_s[hh * WG + gl_SubgroupID] = r;
        }
    barrier();
    for (uint hh = 0; hh < MAX_G; ++hh)
        if (hh < p.group) {
            float r = red_s[hh * WG];
            for (uint i = 1; i < gl_NumSubgroups; ++i)
                r = is_max ? max(r, red_s[hh * WG + i]) : r + red_s[hh * WG + i];
            v[hh] = r;
        }
    barrier();
#else
    for (uint hh = 0; hh < MAX_G; ++hh)
        if (hh < p.group) red_s[hh * WG + tid] = v[hh];
    for (uint half_ = WG / 2; half_ > 0u; half_ >>= 1) {
        barrier();
        if (tid < half_)
            for (uint hh = 0; hh < MAX_G; ++hh)
                if (hh < p.group) {
                    const float a = red_s[hh * WG + tid], b = red_s[hh * WG + tid + half_];
                    red_s[hh * WG + tid] = is_max ? max(a, b) : a + b;
                }
    }
    barrier();
    for (uint hh = 0; hh < MAX_G; ++hh)
        if (hh < p.group) v[hh] = red_s[hh * WG];
    barrier();
#endif
}

void main() {
    const uint slices = (p.q_heads / p.kv_heads + p.group - 1u) / p.group;
    const uint g = gl_WorkGroupID.x / slices;
    const uint h0 = g * (p.q_heads / p.kv_heads) + (gl_WorkGroupID.x - g * slices) * p.group;
    const uint group = min(p.group, (g + 1u) * (p.q_heads / p.kv_heads) - h0);
    const uint row = gl_WorkGroupID.y;
    const uint batch = gl_NumWorkGroups.y;
    const uint tid = gl_LocalInvocationID.x;
    const uint len = row_length(row);
    const uint begin = p.chunk != 0u ? min(len, gl_WorkGroupID.z * p.chunk) : 0u;
    const uint end = p.chunk != 0u ? min(len, begin + p.chunk) : len;
    const uint elems = p.k_words * PER_WORD;

#if defined(QUANT)
    // q in its own type: one element a thread at a time (elems is a multiple of 4).
    const uint io = p.flags >> 1;
    const uint64_t io_bytes = io == DT_F32 ? 4ul : 2ul;
    for (uint i = tid; i < group * elems; i += WG) {
        const uint hh = i / elems, e = i - hh * elems;
        // The row's address in 64 bits (batch * q_heads * head_dim may pass 2^32 elements).
        Words q = Words(p.q + uint64_t(row * p.q_heads + h0 + hh) * uint64_t(elems) * io_bytes);
        uint bits;
        if (io == DT_F32) {
            bits = q.w[e];
        } else {
            bits = to_f32_bits((q.w[e >> 1] >> ((e & 1u) * 16u)) & 0xFFFFu, io);
        }
        q_s[hh * elems + e] = uintBitsToFloat(bits) * p.scale;
    }
#if defined(FP8)
    for (uint c = tid; c < 256u; c += WG) fp8_s[c] = uintBitsToFloat(fp8_to_f32(c));
#endif
#else
    for (uint i = tid; i < group * p.k_words; i += WG) {
        const uint hh = i / p.k_words, w = i - hh * p.k_words;
        Words q = Words(p.q + uint64_t(row * p.q_heads + h0 + hh) * uint64_t(p.k_words) * 4ul);
        const vec2 x = unpack_word(q.w[w]) * p.scale;
        q_s[hh * elems + w * PER_WORD] = x.x;
        if (PER_WORD == 2) q_s[hh * elems + w * PER_WORD + 1] = x.y;
    }
#endif
    barrier();

#if defined(PAGED)
    Uints table = Uints(p.table);
    const uint first_page = table.u[row];
    const uint first_slot = table.u[2u * batch + row];
    const uint indices = 3u * batch;
#endif

    float m[MAX_G];  // running max of the scores
    float l[MAX_G];  // running sum of exp(score - m)
    VEC acc[MAX_WORDS / WG][MAX_G];
    for (uint hh = 0; hh < MAX_G; ++hh) {
        m[hh] = NEG_INF;
        l[hh] = 0.0;
        for (uint i = 0; i < MAX_WORDS / WG; ++i) acc[i][hh] = VEC(0.0);
    }

    for (uint t0 = begin; t0 < end; t0 += p.tile) {
        const uint n = min(p.tile, end - t0);
        const uint64_t k_row = uint64_t(p.k_words) * 4ul, v_row = uint64_t(p.v_words) * 4ul;
#if defined(PAGED)
        for (uint j = 0; j < n;) {  // the pages the tile touches, one table read each
            const uint s = first_slot + t0 + j;
            const uint page = s / p.pages.block_size;
            const uint slot = s - page * p.pages.block_size;
            const uint count = min(n - j, p.pages.block_size - slot);
            const uint block = table.u[indices + first_page + page];
            stage(tid, page_row_address(p.pages, p.k, block, slot, g, k_row),
                  page_row_address(p.pages, p.v, block, slot, g, v_row), j, count,
                  p.pages.slot_rows
#if defined(QUANT)
                  , page_row_address(p.pages, p.k + p.k_scales, block, slot, g, 4ul),
                  page_row_address(p.pages, p.v + p.v_scales, block, slot, g, 4ul)
#endif
            );
            j += count;
        }
#else
        const uint64_t at = uint64_t((row * p.kv_heads + g) * p.max_len + t0);
        stage(tid, p.k + at * k_row, p.v + at * v_row, 0u, n, 1u);
#endif
        barrier();

        float s[MAX_G];
        for (uint hh = 0; hh < MAX_G; ++hh) s[hh] = tid < n ? 0.0 : NEG_INF;
        if (tid < n) {
            const uint base = tid * (p.k_words + 1u);
            for (uint w = 0; w < p.k_words; ++w) {
                const VEC x = unpack_word(k_s[base + w]);
                for (uint hh = 0; hh < MAX_G; ++hh)
                    if (hh < group) {
#if defined(QUANT)
                        const uint at = hh * elems + w * 4u;
                        s[hh] += q_s[at] * x.x + q_s[at + 1u] * x.y + q_s[at + 2u] * x.z +
                                 q_s[at + 3u] * x.w;
#else
                        s[hh] += q_s[hh * elems + w * PER_WORD] * x.x;
                        if (PER_WORD == 2) s[hh] += q_s[hh * elems + w * PER_WORD + 1] * x.y;
#endif
                    }
            }
#if defined(QUANT)
            const float ks = k_scale_s[tid];
            for (uint hh = 0; hh < MAX_G; ++hh) s[hh] *= ks;
#endif
        }
        float mx[MAX_G];
        for (uint hh = 0; hh < MAX_G; ++hh) mx[hh] = s[hh];
        reduce(tid, mx, true);
        float factor[MAX_G];
        float wsum[MAX_G];
        for (uint hh = 0; hh < MAX_G; ++hh) {
            const float m_new = max(m[hh], mx[hh]);
            const float w = tid < n ? exp(s[hh] - m_new) : 0.0;
#if defined(QUANT)
            weight_s[hh * WG + tid] = tid < n ? w * v_scale_s[tid] : 0.0;  // V scale folded in
#else
            weight_s[hh * WG + tid] = w;
#endif
            wsum[hh] = w;
            factor[hh] = exp(m[hh] - m_new);
            m[hh] = m_new;
        }
        reduce(tid, wsum, false);  // its barriers also publish weight_s
        for (uint hh = 0; hh < MAX_G; ++hh) l[hh] = l[hh] * factor[hh] + wsum[hh];

        for (uint i = 0; i < MAX_WORDS / WG; ++i) {  // constant bounds: acc stays in registers
            const uint w = i * WG + tid;
            if (w >= p.v_words) break;
            VEC a[MAX_G];
            for (uint hh = 0; hh < MAX_G; ++hh) a[hh] = acc[i][hh] * factor[hh];
            for (uint j = 0; j < n; ++j) {
                const VEC x = unpack_word(Words(value_s[j]).w[w]);
                for (uint hh = 0; hh < MAX_G; ++hh)
                    if (hh < group) a[hh] += weight_s[hh * WG + j] * x;
            }
            for (uint hh = 0; hh < MAX_G; ++hh) acc[i][hh] = a[hh];
        }
        barrier();  // k_s, value_s and weight_s are rewritten by the next tile
    }

#if defined(QUANT)
    // Elements 4w..4w+3 of each output row (thread tid holds word w = i * WG + tid). As
    // partials: a record of 2 + 2 * (the output's words) floats, element e of a 16-bit output
    // at 2 + e, of an f32 one at 2 + 2e (the REDUCE variant of the output's type reads pairs).
    const uint v_elems = p.v_words * 4u;
    if (p.chunk != 0u) {
        const uint chunks = gl_NumWorkGroups.z;
        const uint rec = 2u + (io == DT_F32 ? 2u * v_elems : v_elems);
        for (uint hh = 0; hh < MAX_G; ++hh) {
            if (hh >= group) break;
            Floats part = Floats(p.scratch +
                                 uint64_t(((row * p.q_heads + h0 + hh) * chunks +
                                           gl_WorkGroupID.z) * rec) * 4ul);
            if (tid == 0u) {
                part.f[0] = m[hh];
                part.f[1] = l[hh];
            }
            if (l[hh] > 0.0)
                for (uint i = 0; i < MAX_WORDS / WG; ++i) {
                    const uint w = i * WG + tid;
                    if (w >= p.v_words) break;
                    const vec4 a = acc[i][hh];
                    if (io == DT_F32) {
                        for (uint k = 0; k < 4u; ++k) {
                            part.f[2u + 8u * w + 2u * k] = a[k];
                            part.f[3u + 8u * w + 2u * k] = 0.0;
                        }
                    } else {
                        for (uint k = 0; k < 4u; ++k) part.f[2u + 4u * w + k] = a[k];
                    }
                }
        }
        return;
    }
    for (uint hh = 0; hh < MAX_G; ++hh)
        if (hh < group) {
            Words o = Words(p.dst + uint64_t(row * p.q_heads + h0 + hh) * uint64_t(v_elems) *
                                        (io == DT_F32 ? 4ul : 2ul));
            const float inv = l[hh] > 0.0 ? 1.0 / l[hh] : 0.0;
            for (uint i = 0; i < MAX_WORDS / WG; ++i) {
                const uint w = i * WG + tid;
                if (w >= p.v_words) break;
                const vec4 a = acc[i][hh] * inv;
                const uint e = 4u * w;
                if (io == DT_F32) {
                    for (uint k = 0; k < 4u; ++k) o.w[e + k] = floatBitsToUint(a[k]);
                } else {  // two words of two elements (e is a multiple of 4)
                    for (uint k = 0; k < 4u; k += 2u)
                        o.w[(e + k) >> 1] = from_f32_bits(floatBitsToUint(a[k]), io) |
                                            (from_f32_bits(floatBitsToUint(a[k + 1u]), io) << 16);
                }
            }
        }
#else
    if (p.chunk != 0u) {
        const uint chunks = gl_NumWorkGroups.z;
        const uint rec = 2u + 2u * p.v_words;
        for (uint hh = 0; hh < MAX_G; ++hh) {
            if (hh >= group) break;
            Floats part = Floats(p.scratch +
                                 uint64_t(((row * p.q_heads + h0 + hh) * chunks +
                                           gl_WorkGroupID.z) * rec) * 4ul);
            if (tid == 0u) {
                part.f[0] = m[hh];
                part.f[1] = l[hh];
            }
            if (l[hh] > 0.0)
                for (uint i = 0; i < MAX_WORDS / WG; ++i) {
                    const uint w = i * WG + tid;
                    if (w >= p.v_words) break;
                    part.f[2u + 2u * w] = acc[i][hh].x;
                    part.f[3u + 2u * w] = acc[i][hh].y;
                }
        }
        return;
    }
    for (uint hh = 0; hh < MAX_G; ++hh)
        if (hh < group) {
            Words o = Words(p.dst + uint64_t(row * p.q_heads + h0 + hh) * uint64_t(p.v_words) * 4ul);
            const float inv = l[hh] > 0.0 ? 1.0 / l[hh] : 0.0;
            for (uint i = 0; i < MAX_WORDS / WG; ++i)
                if (i * WG + tid < p.v_words) o.w[i * WG + tid] = pack_word(acc[i][hh] * inv);
        }
#endif
}
#endif
