// view_pages: the part of a PagedView that describes the pool's pages (dims, layout, slabs,
// where one layer's K and V pages sit in a block), shared by a cache's view and a step's view;
// each fills in its own block table.
#pragma once

#include "cache/manager/pool_state.hpp"
#include "pagedkv/paged_view.hpp"

namespace pagedkv::detail {

inline PagedView view_pages(const PoolState& ps, uint32_t layer) {
    if (ps.sharded())
        throw Error(ErrorCode::NotImplemented,
                    fmt::format("view: a PagedView of a pool over {} devices is not implemented "
                                "(a view describes one device's pages); use write_shards / "
                                "attention_shards",
                                ps.shards.size()));
    const PageFormat& lay = ps.format;
    const PageSlabs& storage = *ps.shards[0].pages;
    PagedView v;
    v.layer = layer;
    v.kv_heads = lay.num_kv_heads;
    v.head_dim = lay.head_dim;
    v.v_head_dim = lay.v_head_dim;
    v.block_size = lay.block_size;
    v.dtype = lay.dtype;
    v.layout = lay.layout;
    for (const auto& slab : storage.slabs()) {
        v.slabs.push_back(slab->handle());
        v.slab_addresses.push_back(slab->address());
    }
    v.slab_table = storage.slab_table().address();
    v.slab_shift = storage.slab_shift();
    v.block_bytes = lay.block_bytes();
    v.k_offset = lay.page_offset(ps.page_layer(layer), false);
    v.v_offset = lay.page_offset(ps.page_layer(layer), true);
    v.scale_bytes = uint32_t(lay.scale_bytes());
    if (v.scale_bytes) {
        v.k_scales_offset = v.k_offset + lay.scales_offset(false);
        v.v_scales_offset = v.v_offset + lay.scales_offset(true);
    }
    return v;
}

}  // namespace pagedkv::detail
