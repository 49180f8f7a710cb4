// Compute shaders a host runtime would own, used by the embedding tests to check that the
// library's commands interleave correctly with the caller's own in one command buffer, and
// that its paged view addresses the pages it describes. f32 data throughout.
//   PRODUCE:     a[i] = base + i * step                    (writes K/V before the library reads it)
//   COMBINE:     c[i] = a[i] + 2 * b[i]                     (reads what the library gathered)
//   VIEW_GATHER: a = one layer's K or V of every row, read from the pages through the paged
//                view's CSR block table ((batch, heads, max_len, dim), zero past a row's end);
//                quantized pages (quant 1: int8, 2: fp8 e4m3) dequantized as code * scale, the
//                row's scale read where the view's scales offset says
#version 460
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require

layout(local_size_x = 64) in;

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Floats { float f[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) readonly buffer Uints { uint u[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer Addresses { uint64_t a[]; };

layout(push_constant) uniform Params {
    uint64_t a;
    uint64_t b;
    uint64_t c;
    uint n;
    float base;
    float step;
    // VIEW_GATHER: the view (slab table, CSR arrays) and the shape of the output
    uint heads;
    uint dim;
    uint max_len;
    uint block_size;
    uint slab_shift;
    uint token_major;  // 1: pages are [block_size][heads][dim], else [heads][block_size][dim]
    uint64_t indptr;
    uint64_t indices;
    uint64_t last_page_len;
    uint64_t first_slot;
    uint64_t block_bytes;
    uint64_t page_offset;
    uint64_t scales_offset;  // from a block's start (PagedView k_scales_offset / v_scales_offset)
    uint quant;              // 0: f32 pages, 1: int8 codes, 2: fp8 e4m3 codes
} p;

void main() {
    const uint i = gl_GlobalInvocationID.x;
    if (i >= p.n) return;
#if defined(PRODUCE)
    Floats(p.a).f[i] = p.base + float(i) * p.step;
#elif defined(COMBINE)
    Floats(p.c).f[i] = Floats(p.a).f[i] + 2.0 * Floats(p.b).f[i];
#elif defined(VIEW_GATHER)
    const uint d = i % p.dim;
    const uint t = (i / p.dim) % p.max_len;
    const uint h = (i / (p.dim * p.max_len)) % p.heads;
    const uint row = i / (p.dim * p.max_len * p.heads);
    const uint first_page = Uints(p.indptr).u[row];
    const uint pages = Uints(p.indptr).u[row + 1] - first_page;
    const uint first = Uints(p.first_slot).u[row];
    const uint len = pages == 0u ? 0u
                                 : (pages - 1u) * p.block_size + Uints(p.last_page_len).u[row] - first;
    if (t >= len) {
        Floats(p.a).f[i] = 0.0;
        return;
    }
    const uint s = first + t;
    const uint block = Uints(p.indices).u[first_page + s / p.block_size];
    const uint slot = s % p.block_size;
    const uint64_t slab = Addresses(p.b).a[block >> p.slab_shift];
    const uint64_t in_slab = uint64_t(block & ((1u << p.slab_shift) - 1u)) * p.block_bytes;
    const uint r = p.token_major != 0u ? slot * p.heads + h : h * p.block_size + slot;
    if (p.quant != 0u) {
        // One byte per element: read the word holding it.
        const uint64_t at = in_slab + p.page_offset + uint64_t(r * p.dim + d);
        const uint word = Uints(slab + (at & ~uint64_t(3))).u[0];
        const uint code = (word >> (uint(at & 3ul) * 8u)) & 0xFFu;
        const float scale = Floats(slab + in_slab + p.scales_offset + uint64_t(r) * 4ul).f[0];
        float v;
        if (p.quant == 1u) {
            v = float(int(code << 24) >> 24);
        } else {
            const uint e = (code >> 3) & 15u, m = code & 7u;
            v = e == 0u ? ldexp(float(m), -9) : ldexp(1.0 + float(m) * 0.125, int(e) - 7);
            if ((code & 0x80u) != 0u) v = -v;
        }
        Floats(p.a).f[i] = v * scale;
        return;
    }
    const uint64_t byte = in_slab + p.page_offset + uint64_t(r * p.dim + d) * 4ul;
    Floats(p.a).f[i] = Floats(slab + byte).f[0];
#endif
}
