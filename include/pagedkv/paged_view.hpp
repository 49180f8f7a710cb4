// PagedView: one layer of a paged cache as a runtime's own attention kernels read it, without
// a gather: where the pages are, and a device-side block table in FlashInfer's CSR form.
#pragma once

#include <vulkan/vulkan_core.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "pagedkv/dtype.hpp"
#include "pagedkv/page_layout.hpp"

namespace pagedkv {

// Made by PagedKVCache::paged_view(layer) (a row is a batch row) and Step::view(layer) (a row
// is one of the step's sequences, in order). Token t (0 <= t < len) of batch row r lives in
//   page  indices[indptr[r] + (first_slot[r] + t) / block_size]
//   slot  (first_slot[r] + t) % block_size
// where len = (pages - 1) * block_size + last_page_len[r] - first_slot[r] for a row of
// pages = indptr[r + 1] - indptr[r] > 0 pages, and 0 for a row without pages. first_slot is
// the one addition to FlashInfer's form: crop and sliding windows drop leading tokens by
// moving a row's start instead of moving bytes, so the first page may begin part-way.
//
// Page b is in slab b >> slab_shift at byte (b & ((1 << slab_shift) - 1)) * block_bytes;
// within it, this layer's K page starts at k_offset and its V page at v_offset, each
// [kv_heads][block_size][head_dim] (layout HeadMajor) or [block_size][kv_heads][head_dim]
// (TokenMajor, vLLM / FlashInfer "NHD") of dtype elements, v_head_dim for V: the row of
// (slot, head) is at page byte (head * block_size + slot) * row_bytes, or
// (slot * kv_heads + head) * row_bytes, with row_bytes = head_dim * element size. A slab is
// as large as the device allows a buffer to be, which may exceed maxStorageBufferRange: read
// pages through the addresses (slab_addresses, slab_table), not through a descriptor binding.
//
// A view is a snapshot: any later call that changes the cache (update, write, crop, reorder,
// ...) may move tokens to other pages (copy-on-write) or free pages; take a new view after
// it. Keep the view alive until the GPU work that reads through it has finished (it keeps
// the pages and its table buffer alive). The table is in host-visible memory.
//
// Outside a recording, paged_view() submits the work recorded so far; that submission ends
// with a barrier that makes its writes visible to compute and transfer commands submitted
// later to the same queue, so a command buffer of the caller's submitted afterwards reads the
// pages as they are. Inside a recording the barriers of Context::begin_recording apply.
struct PagedView {
    uint32_t layer = 0;
    uint32_t batch = 0;
    uint32_t kv_heads = 0;
    uint32_t head_dim = 0;
    uint32_t v_head_dim = 0;
    uint32_t block_size = 0;
    DType dtype = DType::F16;
    PageLayout layout = PageLayout::HeadMajor;  // the pool's, resolved: never Auto

    // Page storage.
    std::vector<VkBuffer> slabs;
    std::vector<VkDeviceAddress> slab_addresses;
    VkDeviceAddress slab_table = 0;  // a device array of the slab addresses (uint64 each)
    uint32_t slab_shift = 0;
    uint64_t block_bytes = 0;
    uint64_t k_offset = 0;
    uint64_t v_offset = 0;
    // Quantized pages (dtype Int8 or FP8E4M3; elements are then 1-byte codes): one f32 scale per
    // (token, head) row, scale_bytes = 4 (0 for other dtypes, whose pages have no scales). This
    // layer's K scales start k_scales_offset bytes from a block's start (V: v_scales_offset), in
    // the pages' row order: the scale of row (slot, head) is at byte (head * block_size + slot)
    // * 4 (HeadMajor) or (slot * kv_heads + head) * 4 (TokenMajor) from there. An element's
    // value is code * scale (Int8 codes are two's complement, -127..127; FP8 codes are OCP
    // E4M3FN). Without scales both offsets are 0.
    uint32_t scale_bytes = 0;
    uint64_t k_scales_offset = 0;
    uint64_t v_scales_offset = 0;

    // The block table on the device: uint32 arrays, all in one buffer, at these offsets.
    VkBuffer table = VK_NULL_HANDLE;
    uint64_t indptr_offset = 0;         // batch + 1 entries
    uint64_t indices_offset = 0;        // indptr[batch] entries
    uint64_t last_page_len_offset = 0;  // batch entries
    uint64_t first_slot_offset = 0;     // batch entries
    VkDeviceAddress indptr = 0;         // the same arrays by device address
    VkDeviceAddress indices = 0;
    VkDeviceAddress last_page_len = 0;
    VkDeviceAddress first_slot = 0;

    // A step's view (Step::view) also has the page slot (block * block_size + slot) of each of
    // the step's new tokens, in order (vLLM's slot_mapping), in the same buffer; a cache's view
    // has none (num_tokens 0).
    uint32_t num_tokens = 0;
    uint64_t slot_mapping_offset = 0;
    VkDeviceAddress slot_mapping = 0;
    std::vector<uint32_t> host_slot_mapping;

    // The same table on the host, and each row's length.
    std::vector<uint32_t> host_indptr;
    std::vector<uint32_t> host_indices;
    std::vector<uint32_t> host_last_page_len;
    std::vector<uint32_t> host_first_slot;
    std::vector<int64_t> lengths;
    // Hybrid models (PoolConfig::layer_windows): the layer's sliding window (0: full attention),
    // and per row the position of its table's first token. A step's row of a sliding layer may
    // start before the window of its first new token (what the step's earlier tokens of a
    // prefill need): a token at position p attends to positions (p - window, p]; row token j is
    // position first_positions[row] + j (a step's view; a cache's leaves it empty, its rows'
    // tokens numbered from the first held). Without windows every first position is 0.
    uint32_t window = 0;
    std::vector<int64_t> first_positions;

    // What keeps the pages and the table alive.
    std::shared_ptr<const void> keep;
};

}  // namespace pagedkv
