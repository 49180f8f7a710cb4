// record_kv: the scatter (or gather) of one layer's K and V for the same entries, shared by the
// 0.1 caches and the KVManager: one op for both when their rows are the same size (one
// dispatch, no barrier between them), else one each. Quantized pages go through the quantize
// kernel (both tensors in one dispatch), which reads and writes tensors of any float dtype;
// other pages take tensors of the pool's dtype.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <span>

#include "allocator/page_format.hpp"
#include "pagedkv/error.hpp"
#include "shaders/kernels/quant_rows.hpp"
#include "shaders/kernels/row_copy.hpp"

namespace pagedkv::detail {

// The dtype K/V tensors are written from and gathered into: the pool's, or for a quantized pool
// `input` itself (the quantize kernel reads any float dtype).
inline DType kv_tensor_dtype(const PageFormat& lay, DType input) {
    return is_quantized(lay.dtype) ? input : lay.dtype;
}

// Throws CapacityExceeded (naming op) when a quantized pool's kernel could not index tensors of
// `rows` (token, head) rows (B * heads * tokens): checked before a cache changes.
inline void check_kv_rows(const PageFormat& lay, uint64_t rows, const char* op) {
    const uint64_t widest = std::max(lay.head_dim, lay.v_head_dim);
    if (is_quantized(lay.dtype) && rows * widest > UINT32_MAX)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("{}: {} rows of {} elements exceed the quantize kernel's 32-bit "
                                "indexing",
                                op, rows, widest));
}

// k and v hold tensor_dtype (kv_tensor_dtype); entries_buffer (optional): the entries already in
// device-readable memory at that offset.
inline void record_kv(Device& dev, PageSlabs& pages, const PageFormat& lay, uint32_t layer,
                      Buffer& k, Buffer& v, DType tensor_dtype, std::span<const RowEntry> entries,
                      uint32_t heads, uint32_t head_stride, bool gather,
                      Buffer* entries_buffer = nullptr, uint64_t entries_offset = 0) {
    if (is_quantized(lay.dtype)) {
        QuantRowCopy q;
        q.tensor = &k;
        q.tensor_dtype = tensor_dtype;
        q.entries = entries;
        q.heads = heads;
        q.dim = lay.head_dim;
        q.head_stride = head_stride;
        q.page_offset = lay.page_offset(layer, false);
        q.gather = gather;
        q.tensor2 = &v;
        q.dim2 = lay.v_head_dim;
        q.page_offset2 = lay.page_offset(layer, true);
        q.entries_buffer = entries_buffer;
        q.entries_offset = entries_offset;
        record_quant_rows(dev, pages, q);
        return;
    }
    RowCopy op{&k,    entries, heads, lay.k_row_bytes(), head_stride, lay.page_offset(layer, false),
               gather};
    op.entries_buffer = entries_buffer;
    op.entries_offset = entries_offset;
    if (lay.k_row_bytes() == lay.v_row_bytes()) {
        op.tensor2 = &v;
        op.page_offset2 = lay.page_offset(layer, true);
        record_row_copy(dev, pages, op);
        return;
    }
    record_row_copy(dev, pages, op);
    op.tensor = &v;
    op.row_bytes = lay.v_row_bytes();
    op.page_offset = lay.page_offset(layer, true);
    record_row_copy(dev, pages, op);
}

}  // namespace pagedkv::detail
