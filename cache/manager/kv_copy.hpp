// record_kv: the scatter (or gather) of one layer's K and V for the same entries, shared by the
// 0.1 caches and the KVManager: one op for both when their rows are the same size (one
// dispatch, no barrier between them), else one each.
#pragma once

#include <cstdint>
#include <span>

#include "allocator/page_format.hpp"
#include "shaders/kernels/row_copy.hpp"

namespace pagedkv::detail {

// entries_buffer (optional): the entries already in device-readable memory at that offset.
inline void record_kv(Device& dev, PageSlabs& pages, const PageFormat& lay, uint32_t layer,
                      Buffer& k, Buffer& v, std::span<const RowEntry> entries, uint32_t heads,
                      uint32_t head_stride, bool gather, Buffer* entries_buffer = nullptr,
                      uint64_t entries_offset = 0) {
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
