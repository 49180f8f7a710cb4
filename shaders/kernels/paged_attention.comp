// paged_attention: decode attention, one query token per batch row, read straight from the
// pages through a CSR block table (PAGED), or from contiguous (batch, kv_heads, len, dim) K/V
// (CONTIGUOUS: the same arithmetic on a gather's output, for comparison).
//
// One workgroup of 64 threads per (kv head, slice of its query heads, row, chunk): it computes
// up to MAX_G query heads of one GQA group, so each K/V row is read once per group (or once
// per slice, when head_dim * heads would not fit q_s). Tokens go in tiles of p.tile tokens:
//   1. staging: the tile's K rows are copied into shared memory with coalesced loads (16-byte
//      uvec4 words where rows, pages and offsets allow, else 32-bit words). PAGED walks the
//      pages the tile touches: one block-table read per page, and within a page the tile's
//      rows are contiguous (pages are head-major [kv_heads][block_size][row]);
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
#version 460
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#if defined(SUBGROUP)
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

#include "page_address.glsl"

layout(local_size_x = 64) in;

const uint WG = 64;
const uint MAX_WORDS = 256;   // head_dim up to 256 f32 or 512 16-bit elements
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
    uint batch;
    uint q_heads;
    uint kv_heads;
    uint k_words;      // 32-bit words in one K row (head_dim * elem_bytes / 4)
    uint v_words;
    uint max_len;      // CONTIGUOUS: the K/V tensors' seq length
    float scale;
    uint chunk;        // tokens a workgroup covers (split), or 0: the whole row
    uint tile;         // tokens a tile: tile * (k_words + 1) <= K_S_WORDS, tile <= 64
    uint group;        // query heads a workgroup computes (<= MAX_G)
    uint quads;        // 1: K rows are read as uvec4 (k_words % 4 == 0, aligned)
} p;

#define NEG_INF uintBitsToFloat(0xFF800000u)

#if defined(F32)
const uint PER_WORD = 1;
vec2 unpack_word(uint w) { return vec2(uintBitsToFloat(w), 0.0); }
uint pack_word(vec2 v) { return floatBitsToUint(v.x); }
#elif defined(F16)
const uint PER_WORD = 2;
vec2 unpack_word(uint w) { return unpackHalf2x16(w); }
uint pack_word(vec2 v) { return packHalf2x16(v); }
#else  // BF16: the upper half of an f32; rounded to nearest even on the way out
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

uint row_length(uint row) {
#if defined(PAGED)
    return Uints(p.table).u[p.batch + row];
#else
    return Uints(p.table).u[row];
#endif
}

// Copies count K rows starting at address k into k_s rows [first, first + count) (stride
// k_words + 1: scoring threads read different rows at the same column without bank
// conflicts), and notes the V row of each.
void stage(uint tid, uint64_t k, uint64_t v, uint first, uint count) {
    const uint stride = p.k_words + 1u;
    if (p.quads != 0u) {
        const uint per_row = p.k_words >> 2;
        Quads src = Quads(k);
        for (uint i = tid; i < count * per_row; i += WG) {
            const uint r = i / per_row;
            const uint at = (first + r) * stride + (i - r * per_row) * 4u;
            const uvec4 x = src.w[i];
            k_s[at] = x.x;
            k_s[at + 1u] = x.y;
            k_s[at + 2u] = x.z;
            k_s[at + 3u] = x.w;
        }
    } else {
        Words src = Words(k);
        for (uint i = tid; i < count * p.k_words; i += WG) {
            const uint r = i / p.k_words;
            k_s[(first + r) * stride + (i - r * p.k_words)] = src.w[i];
        }
    }
    if (tid < count) value_s[first + tid] = v + uint64_t(tid) * uint64_t(p.v_words) * 4ul;
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
    const uint tid = gl_LocalInvocationID.x;
    const uint len = row_length(row);
    const uint begin = p.chunk != 0u ? min(len, gl_WorkGroupID.z * p.chunk) : 0u;
    const uint end = p.chunk != 0u ? min(len, begin + p.chunk) : len;
    const uint elems = p.k_words * PER_WORD;

    for (uint i = tid; i < group * p.k_words; i += WG) {
        const uint hh = i / p.k_words, w = i - hh * p.k_words;
        Words q = Words(p.q + uint64_t(row * p.q_heads + h0 + hh) * uint64_t(p.k_words) * 4ul);
        const vec2 x = unpack_word(q.w[w]) * p.scale;
        q_s[hh * elems + w * PER_WORD] = x.x;
        if (PER_WORD == 2) q_s[hh * elems + w * PER_WORD + 1] = x.y;
    }
    barrier();

#if defined(PAGED)
    Uints table = Uints(p.table);
    const uint first_page = table.u[row];
    const uint first_slot = table.u[2u * p.batch + row];
    const uint indices = 3u * p.batch;
#endif

    float m[MAX_G];  // running max of the scores
    float l[MAX_G];  // running sum of exp(score - m)
    vec2 acc[MAX_WORDS / WG][MAX_G];
    for (uint hh = 0; hh < MAX_G; ++hh) {
        m[hh] = NEG_INF;
        l[hh] = 0.0;
        for (uint i = 0; i < MAX_WORDS / WG; ++i) acc[i][hh] = vec2(0.0);
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
                  page_row_address(p.pages, p.v, block, slot, g, v_row), j, count);
            j += count;
        }
#else
        const uint64_t at = uint64_t((row * p.kv_heads + g) * p.max_len + t0);
        stage(tid, p.k + at * k_row, p.v + at * v_row, 0u, n);
#endif
        barrier();

        float s[MAX_G];
        for (uint hh = 0; hh < MAX_G; ++hh) s[hh] = tid < n ? 0.0 : NEG_INF;
        if (tid < n) {
            const uint base = tid * (p.k_words + 1u);
            for (uint w = 0; w < p.k_words; ++w) {
                const vec2 x = unpack_word(k_s[base + w]);
                for (uint hh = 0; hh < MAX_G; ++hh)
                    if (hh < group) {
                        s[hh] += q_s[hh * elems + w * PER_WORD] * x.x;
                        if (PER_WORD == 2) s[hh] += q_s[hh * elems + w * PER_WORD + 1] * x.y;
                    }
            }
        }
        float mx[MAX_G];
        for (uint hh = 0; hh < MAX_G; ++hh) mx[hh] = s[hh];
        reduce(tid, mx, true);
        float factor[MAX_G];
        float wsum[MAX_G];
        for (uint hh = 0; hh < MAX_G; ++hh) {
            const float m_new = max(m[hh], mx[hh]);
            const float w = tid < n ? exp(s[hh] - m_new) : 0.0;
            weight_s[hh * WG + tid] = w;
            wsum[hh] = w;
            factor[hh] = exp(m[hh] - m_new);
            m[hh] = m_new;
        }
        reduce(tid, wsum, false);  // its barriers also publish weight_s
        for (uint hh = 0; hh < MAX_G; ++hh) l[hh] = l[hh] * factor[hh] + wsum[hh];

        for (uint i = 0; i < MAX_WORDS / WG; ++i) {  // constant bounds: acc stays in registers
            const uint w = i * WG + tid;
            if (w >= p.v_words) break;
            vec2 a[MAX_G];
            for (uint hh = 0; hh < MAX_G; ++hh) a[hh] = acc[i][hh] * factor[hh];
            for (uint j = 0; j < n; ++j) {
                const vec2 x = unpack_word(Words(value_s[j]).w[w]);
                for (uint hh = 0; hh < MAX_G; ++hh)
                    if (hh < group) a[hh] += weight_s[hh * WG + j] * x;
            }
            for (uint hh = 0; hh < MAX_G; ++hh) acc[i][hh] = a[hh];
        }
        barrier();  // k_s, value_s and weight_s are rewritten by the next tile
    }

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
}
#endif
