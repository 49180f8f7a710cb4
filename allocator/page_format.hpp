// PageFormat: the one description of a page. One block holds, for every layer, a K page and a
// V page of block_size tokens of every kv head, in one of two layouts: head-major
// [kv_heads][block_size][head_dim] or token-major [block_size][kv_heads][head_dim]; one block id
// therefore serves every layer (vLLM, TensorRT-LLM). row_offset() is the one place a (slot,
// head) row is placed within a page: every host-side address derives from it, and
// page_address.glsl (from the strides below) for the shaders. Everything that sizes or addresses
// pages (the pool, the slabs, the kernels' push constants, the snapshot format, the paged view)
// derives its numbers from here. Quantized pages (Int8, FP8E4M3) add one f32 scale per row after
// the page's values (scales_offset()).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "pagedkv/dtype.hpp"
#include "pagedkv/page_layout.hpp"

namespace pagedkv {

struct PageFormat {
    uint32_t num_layers = 0;
    uint32_t num_kv_heads = 0;
    uint32_t head_dim = 0;
    uint32_t v_head_dim = 0;
    uint32_t block_size = 0;
    DType dtype = DType::F16;
    // Resolved: HeadMajor or TokenMajor, never Auto (check_pool_shape refuses anything else).
    PageLayout layout = PageLayout::HeadMajor;

    uint64_t elem_bytes() const noexcept { return dtype_size(dtype); }
    uint64_t k_row_bytes() const noexcept { return uint64_t(head_dim) * elem_bytes(); }
    uint64_t v_row_bytes() const noexcept { return uint64_t(v_head_dim) * elem_bytes(); }
    // (token, head) rows in one page.
    uint64_t page_rows() const noexcept { return uint64_t(num_kv_heads) * block_size; }
    // A quantized page (Int8, FP8E4M3) is its rows' values, then one f32 scale per row in the
    // same row order (row_offset(slot, head, scale_bytes()) from scales_offset()); other pages
    // are their values only.
    uint64_t scale_bytes() const noexcept { return dtype_scale_size(dtype); }
    uint64_t k_values_bytes() const noexcept { return k_row_bytes() * page_rows(); }
    uint64_t v_values_bytes() const noexcept { return v_row_bytes() * page_rows(); }
    uint64_t k_page_bytes() const noexcept {
        return k_values_bytes() + scale_bytes() * page_rows();
    }
    uint64_t v_page_bytes() const noexcept {
        return v_values_bytes() + scale_bytes() * page_rows();
    }
    // Bytes from a K (or V) page's start to its scales.
    uint64_t scales_offset(bool value) const noexcept {
        return value ? v_values_bytes() : k_values_bytes();
    }
    uint64_t layer_bytes() const noexcept { return k_page_bytes() + v_page_bytes(); }
    // Bytes of one block: every layer's K page and V page. Call after check_pool_shape (which
    // refuses a format whose block would not fit 64 bits).
    uint64_t block_bytes() const noexcept { return layer_bytes() * num_layers; }
    // Bytes from a block's start to one layer's K (or V) page.
    uint64_t page_offset(uint32_t layer, bool value) const noexcept {
        return layer * layer_bytes() + (value ? k_page_bytes() : 0);
    }

    // Rows between consecutive heads of one slot, and between consecutive slots of one head.
    uint32_t head_stride_rows() const noexcept {
        return layout == PageLayout::TokenMajor ? 1 : block_size;
    }
    uint32_t slot_stride_rows() const noexcept {
        return layout == PageLayout::TokenMajor ? num_kv_heads : 1;
    }
    // Bytes from a page's start to the row of (slot, head), rows of row_bytes (K or V).
    uint64_t row_offset(uint32_t slot, uint32_t head, uint64_t row_bytes) const noexcept {
        return (uint64_t(head) * head_stride_rows() + uint64_t(slot) * slot_stride_rows()) *
               row_bytes;
    }

    bool operator==(const PageFormat&) const = default;
};

// A pool: its page format, how many blocks, and the largest slab its store may make (0: the
// device's limit).
struct PoolShape : PageFormat {
    uint64_t num_blocks = 0;
    uint64_t max_slab_bytes = 0;

    const PageFormat& format() const noexcept { return *this; }
    bool operator==(const PoolShape&) const = default;
};

// What is wrong with a shape, and in which field (the snapshot decoder turns the field into a
// byte offset; BlockPool reports the text).
struct ShapeProblem {
    enum class Field {
        NumLayers,
        NumKvHeads,
        HeadDim,
        VHeadDim,
        BlockSize,
        DType,
        Layout,
        NumBlocks,
        MaxSlabBytes
    };
    Field field;
    std::string what;
};
const char* field_name(ShapeProblem::Field f) noexcept;

// Every dimension at least 1, a known dtype (quantized: head dims multiples of 4, so every
// page and row starts on a 4-byte word), a resolved layout (HeadMajor or TokenMajor), page
// slots (block * block_size + slot) within 32 bits with ~0u reserved, block and pool bytes within
// 64 bits, a slab of at least one block.
std::optional<ShapeProblem> check_pool_shape(const PoolShape& s);

}  // namespace pagedkv
