// PagedKVCache::paged_view: a layer's rows as a CSR block table (FlashInfer's indptr / indices /
// last_page_len, plus the first slot our rows may start at) in host-visible device memory,
// next to the addresses of the pool's slabs.
#include <fmt/format.h>

#include <cstring>

#include "cache/cache_state.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/paged_kv_cache.hpp"

namespace pagedkv {

namespace {

// What a view keeps alive; the device is declared first so it outlives the buffers.
struct ViewKeep {
    std::shared_ptr<detail::Device> device;
    std::shared_ptr<detail::PageStorage> pages;
    std::shared_ptr<detail::Buffer> table;
};

uint64_t align16(uint64_t v) {
    return (v + 15) / 16 * 16;
}

}  // namespace

PagedView PagedKVCache::paged_view(uint32_t layer) const {
    const detail::CacheState& st = *state_;
    detail::Device::CallLock l(*st.ps->device);
    if (layer >= st.num_layers())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("paged_view: layer_idx {} out of range, pool has {} layers", layer,
                                st.num_layers()));
    const PoolConfig& c = st.ps->config;
    const detail::PageLayout& lay = st.ps->layout;
    const detail::PageStorage& storage = *st.ps->pages;
    PagedView v;
    v.layer = layer;
    v.batch = st.batch;
    v.kv_heads = c.num_kv_heads;
    v.head_dim = c.head_dim;
    v.v_head_dim = c.v_head_dim;
    v.block_size = c.block_size;
    v.dtype = c.dtype;
    for (const auto& slab : storage.slabs()) {
        v.slabs.push_back(slab->handle());
        v.slab_addresses.push_back(slab->address());
    }
    v.slab_table = storage.slab_table().address();
    v.slab_shift = storage.slab_shift();
    v.block_bytes = lay.block_bytes();
    v.k_offset = lay.page_offset(layer, false);
    v.v_offset = lay.page_offset(layer, true);

    const uint32_t bs = st.block_size();
    v.host_indptr.push_back(0);
    for (uint32_t r = 0; r < st.batch; ++r) {
        const int64_t len = st.len[layer][r];
        const int64_t start = st.start[layer][r];
        v.lengths.push_back(len);
        if (len == 0) {
            v.host_first_slot.push_back(0);
            v.host_last_page_len.push_back(0);
        } else {
            for (int64_t p = start / bs; p <= (start + len - 1) / bs; ++p)
                v.host_indices.push_back(index(st.tables[r][size_t(p)]));
            v.host_first_slot.push_back(uint32_t(start % bs));
            v.host_last_page_len.push_back(uint32_t((start + len - 1) % bs + 1));
        }
        v.host_indptr.push_back(uint32_t(v.host_indices.size()));
    }

    // One buffer, four arrays at 16-byte aligned offsets.
    const auto bytes = [](const std::vector<uint32_t>& a) { return a.size() * sizeof(uint32_t); };
    v.indptr_offset = 0;
    v.indices_offset = align16(v.indptr_offset + bytes(v.host_indptr));
    v.last_page_len_offset = align16(v.indices_offset + bytes(v.host_indices));
    v.first_slot_offset = align16(v.last_page_len_offset + bytes(v.host_last_page_len));
    const uint64_t total = align16(v.first_slot_offset + bytes(v.host_first_slot));
    auto keep = std::make_shared<ViewKeep>();
    keep->device = st.ps->device;
    keep->pages = st.ps->pages;
    keep->table = detail::Buffer::create(*st.ps->device, total, detail::MemoryKind::Upload);
    char* mapped = static_cast<char*>(keep->table->mapped());
    const std::pair<const std::vector<uint32_t>*, uint64_t> arrays[] = {
        {&v.host_indptr, v.indptr_offset},
        {&v.host_indices, v.indices_offset},
        {&v.host_last_page_len, v.last_page_len_offset},
        {&v.host_first_slot, v.first_slot_offset}};
    for (const auto& [a, offset] : arrays)
        if (!a->empty()) std::memcpy(mapped + offset, a->data(), bytes(*a));
    v.table = keep->table->handle();
    const VkDeviceAddress base = keep->table->address();
    v.indptr = base + v.indptr_offset;
    v.indices = base + v.indices_offset;
    v.last_page_len = base + v.last_page_len_offset;
    v.first_slot = base + v.first_slot_offset;
    v.keep = std::move(keep);
    return v;
}

}  // namespace pagedkv
