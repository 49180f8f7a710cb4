// paged_attention: decode attention, one query token per batch row, read straight from the
// pages through a CSR block table (PAGED), or from contiguous (batch, kv_heads, len, dim) K/V
// (CONTIGUOUS: the same arithmetic on a gather's output, for comparison).
// One workgroup per (query head, row). Tokens go in tiles of 64: each thread scores one token
// of the tile, then every thread rescales its share of the output (online softmax, as in
// FlashAttention) and accumulates the tile's values for its output words. Accumulates in f32.
// Elements are read as 32-bit words: one f32, or two f16/bf16 (even head dims), so no 16-bit
// device feature is needed. Compiled for F32, F16 and BF16 elements.
#version 460
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require

#include "page_address.glsl"

layout(local_size_x = 64) in;

const uint TILE = 64;
const uint MAX_WORDS = 256;  // head_dim up to 256 f32 or 512 16-bit elements

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Words { uint w[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) readonly buffer Uints { uint u[]; };

layout(push_constant) uniform Params {
    uint64_t q;        // (batch, q_heads, 1, head_dim)
    uint64_t dst;      // (batch, q_heads, 1, v_head_dim)
    uint64_t k;        // CONTIGUOUS: K (batch, kv_heads, max_len, head_dim)
    uint64_t v;        // CONTIGUOUS: V
    uint64_t indptr;   // PAGED: CSR row starts (batch + 1)
    uint64_t indices;  // PAGED: pages
    uint64_t last_page_len;  // PAGED: tokens in each row's last page; CONTIGUOUS: row lengths
    uint64_t first_slot;     // PAGED: slot of each row's first token in its first page
    uint64_t k_offset;       // PAGED: bytes from a block's start to the layer's K page
    uint64_t v_offset;       // PAGED: ... and V page
    PageAddressing pages;    // PAGED
    uint q_heads;
    uint kv_heads;
    uint k_words;      // 32-bit words in one K row (head_dim * elem_bytes / 4)
    uint v_words;
    uint max_len;      // CONTIGUOUS: the K/V tensors' seq length
    float scale;
} p;

shared float q_s[MAX_WORDS * 2];
shared float score_s[TILE];
shared float weight_s[TILE];
shared uint64_t value_s[TILE];  // address of each tile token's V row
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

uint row_length(uint row) {
#if defined(PAGED)
    const uint pages = Uints(p.indptr).u[row + 1] - Uints(p.indptr).u[row];
    if (pages == 0u) return 0u;
    return (pages - 1u) * p.pages.block_size + Uints(p.last_page_len).u[row] - Uints(p.first_slot).u[row];
#else
    return Uints(p.last_page_len).u[row];
#endif
}

// Address of the K (value = false) or V row of token t of kv head g in batch row `row`.
uint64_t token_row(uint row, uint g, uint t, bool value) {
#if defined(PAGED)
    const uint s = Uints(p.first_slot).u[row] + t;
    const uint block = Uints(p.indices).u[Uints(p.indptr).u[row] + s / p.pages.block_size];
    const uint slot = s % p.pages.block_size;
    const uint words = value ? p.v_words : p.k_words;
    return page_row_address(p.pages, value ? p.v_offset : p.k_offset, block, slot, g,
                            uint64_t(words) * 4ul);
#else
    const uint words = value ? p.v_words : p.k_words;
    return (value ? p.v : p.k) + uint64_t(((row * p.kv_heads + g) * p.max_len + t) * words) * 4ul;
#endif
}

void main() {
    const uint h = gl_WorkGroupID.x;
    const uint row = gl_WorkGroupID.y;
    const uint tid = gl_LocalInvocationID.x;
    const uint g = h / (p.q_heads / p.kv_heads);
    const uint len = row_length(row);

    Words q = Words(p.q + uint64_t(row * p.q_heads + h) * uint64_t(p.k_words) * 4ul);
    for (uint w = tid; w < p.k_words; w += TILE) {
        const vec2 x = unpack_word(q.w[w]) * p.scale;
        q_s[w * PER_WORD] = x.x;
        if (PER_WORD == 2) q_s[w * PER_WORD + 1] = x.y;
    }
    barrier();

    float m = NEG_INF;  // running max of the scores
    float l = 0.0;         // running sum of exp(score - m)
    vec2 acc[MAX_WORDS / TILE];
    for (uint i = 0; i < MAX_WORDS / TILE; ++i) acc[i] = vec2(0.0);

    for (uint t0 = 0; t0 < len; t0 += TILE) {
        const uint t = t0 + tid;
        float s = NEG_INF;
        if (t < len) {
            value_s[tid] = token_row(row, g, t, true);
            Words k = Words(token_row(row, g, t, false));
            s = 0.0;
            for (uint w = 0; w < p.k_words; ++w) {
                const vec2 x = unpack_word(k.w[w]);
                s += q_s[w * PER_WORD] * x.x;
                if (PER_WORD == 2) s += q_s[w * PER_WORD + 1] * x.y;
            }
        }
        score_s[tid] = s;
        barrier();
        float tile_max = score_s[0];
        for (uint j = 1; j < TILE; ++j) tile_max = max(tile_max, score_s[j]);
        const float m_new = max(m, tile_max);
        weight_s[tid] = t < len ? exp(s - m_new) : 0.0;
        barrier();
        const float factor = exp(m - m_new);
        float tile_sum = 0.0;
        for (uint j = 0; j < TILE; ++j) tile_sum += weight_s[j];
        l = l * factor + tile_sum;
        m = m_new;
        const uint tokens = min(TILE, len - t0);
        for (uint i = 0; i * TILE + tid < p.v_words; ++i) {
            const uint w = i * TILE + tid;
            vec2 a = acc[i] * factor;
            for (uint j = 0; j < tokens; ++j)
                a += weight_s[j] * unpack_word(Words(value_s[j]).w[w]);
            acc[i] = a;
        }
        barrier();  // score_s and weight_s are rewritten by the next tile
    }

    Words o = Words(p.dst + uint64_t(row * p.q_heads + h) * uint64_t(p.v_words) * 4ul);
    const float inv = l > 0.0 ? 1.0 / l : 0.0;
    for (uint i = 0; i * TILE + tid < p.v_words; ++i)
        o.w[i * TILE + tid] = pack_word(acc[i] * inv);
}
