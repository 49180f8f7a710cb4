// copy_rows: moves (token, head) rows between a contiguous (batch, heads, seq, dim) tensor and
// pages, for every sequence of a step in one dispatch. Scatter writes tensor rows into pages,
// gather reads pages into tensor rows (an entry without a page zero-fills its row).
// Pages are reached through buffer device addresses, so a pool may span any number of slabs.
// A second tensor may ride along (tensor2 at page_offset2: a layer's V next to its K): units
// past heads * chunks of an entry address it. Compiled three times: WORD16 (uint16_t), WORD32
// (uint), WORD128 (uvec4) words.
#version 460
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require

#if defined(WORD16)
#extension GL_EXT_shader_16bit_storage : require
#define WORD uint16_t
#define WORD_ZERO uint16_t(0)
#define WORD_ALIGN 2
#elif defined(WORD32)
#define WORD uint
#define WORD_ZERO 0u
#define WORD_ALIGN 4
#else
#define WORD uvec4
#define WORD_ZERO uvec4(0u)
#define WORD_ALIGN 16
#endif

#include "page_address.glsl"

layout(local_size_x_id = 0) in;

layout(buffer_reference, std430, buffer_reference_align = WORD_ALIGN) buffer Words { WORD w[]; };
// x: tensor row of head 0 (b * heads * seq + s), or NONE (scatter zeros)
// y: block * block_size + slot, or NONE (gather zeros)
layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer Entries { uvec2 e[]; };

layout(push_constant) uniform Params {
    uint64_t tensor;        // Words
    uint64_t entries;       // Entries
    uint64_t tensor2;       // Words: the second tensor, or 0
    uint64_t page_offset;   // bytes from a block's start to this layer's K or V page
    uint64_t page_offset2;  // bytes from a block's start to the second tensor's page
    PageAddressing pages;
    uint num_entries;
    uint heads;
    uint row_words;         // words in one (token, head) row
    uint head_stride;       // tensor rows between consecutive heads (= seq)
    uint gather;            // 1: pages -> tensor, 0: tensor -> pages
    uint chunk_words;       // words one thread moves: 1 (GPUs: coalesced) or a whole row (CPUs)
    uint chunks;            // chunks per row (row_words / chunk_words)
    uint units;             // threads per entry (heads * chunks)
    // log2 of chunks, units and block_size when they are powers of two, else NONE: shifts
    // instead of divisions, which a CPU device cannot vectorize.
    uint chunk_shift;
    uint unit_shift;
    uint block_shift;
} p;

const uint NONE = 0xFFFFFFFFu;  // an entry without a tensor row or without a page

uint div(uint a, uint b, uint shift) { return shift != NONE ? a >> shift : a / b; }

void main() {
    const uint total = p.num_entries * p.units;
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    Entries entries = Entries(p.entries);
    for (uint i = gl_GlobalInvocationID.x; i < total; i += stride) {
        const uint entry = div(i, p.units, p.unit_shift);
        const uint unit = i - entry * p.units;
        const uint unit_head = div(unit, p.chunks, p.chunk_shift);
        const uint first = (unit - unit_head * p.chunks) * p.chunk_words;
        uint head = unit_head;
        Words tensor = Words(p.tensor);
        uint64_t page_offset = p.page_offset;
        if (head >= p.heads) {  // the second tensor's share of the entry
            head -= p.heads;
            tensor = Words(p.tensor2);
            page_offset = p.page_offset2;
        }
        const uvec2 e = entries.e[entry];
        const uint t = (e.x + head * p.head_stride) * p.row_words + first;
        if (e.y == NONE) {  // gather past a row's end: zero padding
            for (uint w = 0; w < p.chunk_words; ++w) tensor.w[t + w] = WORD_ZERO;
            continue;
        }
        const uint block = div(e.y, p.pages.block_size, p.block_shift);
        const uint slot = e.y - block * p.pages.block_size;
        Words page = Words(page_row_address(p.pages, page_offset, block, slot, head,
                                            uint64_t(p.row_words) * WORD_ALIGN) +
                           uint64_t(first) * WORD_ALIGN);
        if (p.gather != 0u) {
            for (uint w = 0; w < p.chunk_words; ++w) tensor.w[t + w] = page.w[w];
        } else if (e.x == NONE) {  // no row: a hole, zeroed
            for (uint w = 0; w < p.chunk_words; ++w) page.w[w] = WORD_ZERO;
        } else {
            for (uint w = 0; w < p.chunk_words; ++w) page.w[w] = tensor.w[t + w];
        }
    }
}
