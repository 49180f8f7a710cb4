// Records the decode-attention shader (paged_attention.comp): one query token per batch row,
// against that row's tokens read straight from the pages through a CSR block table, or
// against contiguous K/V (the same arithmetic on a gather's output, for comparison). Which
// pages a row holds is the caller's business (cache policy); this only reads them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "allocator/page_format.hpp"
#include "shaders/kernels/page_slabs.hpp"
#include "shaders/vulkan/buffer.hpp"

namespace pagedkv::detail {

class Device;

struct AttentionShape {
    uint32_t batch = 0;
    uint32_t q_heads = 0;
    // The kv heads, head dims and dtype of K/V (num_layers and block_size are not read; for
    // paged attention this is the pool's format).
    PageFormat kv;
    // The dtype of the query and the output: kv.dtype for float K/V; a float dtype (F32, F16
    // or BF16) of the caller's choice for quantized pages (Int8, FP8E4M3: paged only).
    DType io = DType::F16;
    float scale = 1.0f;
};

// Throws Unsupported / CapacityExceeded (naming op) for shapes the shader cannot take.
void check_attention_shape(const AttentionShape& s, const char* op);

// The CSR table of one layer: per row, its pages (indptr/indices), the tokens in its last
// page and the slot of its first token in its first page.
struct CsrTable {
    std::span<const uint32_t> indptr, indices, last_page_len, first_slot;
};

// The kernel's own table, one entry per query row (a batch row, or one new token of a ragged
// step, which attends to its sequence's tokens up to itself): where the row's pages start in
// indices, how many tokens it reads, and the slot of its first token in its first page. As
// uint32 words: first_page[batch], length[batch], first_slot[batch], indices[...].
struct AttentionRows {
    std::vector<uint32_t> first_page, length, first_slot;  // one each per query row

    void reserve(size_t rows) {
        first_page.reserve(rows);
        length.reserve(rows);
        first_slot.reserve(rows);
    }
    void push(uint32_t page, uint32_t len, uint32_t slot) {
        first_page.push_back(page);
        length.push_back(len);
        first_slot.push_back(slot);
    }
    // The words the kernel reads: the three arrays, then indices (3 * rows + indices words).
    std::vector<uint32_t> pack(std::span<const uint32_t> indices) const;
    void pack_into(uint32_t* words, std::span<const uint32_t> indices) const noexcept;
};
// One row per CSR row.
std::vector<uint32_t> pack_row_table(const CsrTable& table, uint32_t block_size);

// query (batch, q_heads, 1, head_dim) -> out (batch, q_heads, 1, v_head_dim).
void record_paged_attention(Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
                            PageSlabs& pages, uint32_t layer, const CsrTable& table);
// The same with the row table (pack_row_table's words) already in device-readable memory at
// `table` + table_offset (a step's table, built once for every layer: nothing is uploaded);
// max_len is the longest row's length.
void record_paged_attention(Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
                            PageSlabs& pages, uint32_t layer, Buffer& table, uint64_t table_offset,
                            uint32_t max_len);
// K (batch, kv_heads, max_len, head_dim), V likewise with v_head_dim; row b uses its first
// lengths[b] tokens.
void record_contiguous_attention(Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
                                 Buffer& k, Buffer& v, uint32_t max_len,
                                 std::span<const uint32_t> lengths);

}  // namespace pagedkv::detail
