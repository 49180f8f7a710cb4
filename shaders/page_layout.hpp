// PageLayout: where each byte of a pool lives. One block holds, for every layer, a K page and
// a V page of block_size tokens, each head-major [kv_heads][block_size][head_dim]; one block
// id therefore serves every layer (vLLM, TensorRT-LLM).
#pragma once

#include <cstdint>

#include "pagedkv/dtype.hpp"

namespace pagedkv::detail {

struct PageLayout {
    uint32_t num_layers = 0;
    uint32_t kv_heads = 0;
    uint32_t head_dim = 0;
    uint32_t v_head_dim = 0;
    uint32_t block_size = 0;
    DType dtype = DType::F16;

    uint64_t elem_bytes() const { return dtype_size(dtype); }
    uint64_t k_row_bytes() const { return uint64_t(head_dim) * elem_bytes(); }
    uint64_t v_row_bytes() const { return uint64_t(v_head_dim) * elem_bytes(); }
    uint64_t k_page_bytes() const { return k_row_bytes() * kv_heads * block_size; }
    uint64_t v_page_bytes() const { return v_row_bytes() * kv_heads * block_size; }
    uint64_t layer_bytes() const { return k_page_bytes() + v_page_bytes(); }
    uint64_t block_bytes() const { return layer_bytes() * num_layers; }
    // Bytes from a block's start to one layer's K (or V) page.
    uint64_t page_offset(uint32_t layer, bool value) const {
        return layer * layer_bytes() + (value ? k_page_bytes() : 0);
    }
};

}  // namespace pagedkv::detail
