// Shards: one call over a pool spread over several devices. Each device holds a contiguous
// share of the kv heads (PoolState::shards); an op on every head runs once per device on that
// device's share. Tensors of every head live on the first device: a device's heads reach it
// through host memory (read back, cut, uploaded), and what it gathers comes back the same way.
// With one device every helper here calls the kernels directly on the tensors.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "cache/manager/pool_state.hpp"
#include "pagedkv/tensor.hpp"
#include "shaders/kernels/row_copy.hpp"
#include "shaders/vulkan/buffer.hpp"

namespace pagedkv::detail {

// How a tensor's rows are laid out around its heads: [outer][heads][head_stride] rows of
// row_bytes (batch, heads, seq, dim: head_stride = seq; tokens, heads, dim: head_stride = 1).
struct HeadRows {
    uint32_t heads = 0;
    uint32_t head_stride = 1;
    uint64_t row_bytes = 0;
};

// The first `bytes` of src cut into shards.size() equal shares of its heads, share d in a new
// buffer on device d.
std::vector<std::shared_ptr<Buffer>> split_heads(const PoolState& ps, Buffer& src, uint64_t bytes,
                                                 const HeadRows& rows);
// The shares (one per device, as split_heads cuts them) written into the first `bytes` of dst
// on the first device.
void join_heads(const PoolState& ps, std::span<const std::shared_ptr<Buffer>> parts, Buffer& dst,
                uint64_t bytes, const HeadRows& rows);
// A buffer of bytes / shards.size() on each device (tensor memory).
std::vector<std::shared_ptr<Buffer>> per_shard_buffers(const PoolState& ps, uint64_t bytes);

// entries addressing rows laid out for `heads` heads, readdressed for a share of shard_heads.
std::vector<RowEntry> shard_entries(std::span<const RowEntry> entries, uint32_t heads,
                                    uint32_t head_stride, uint32_t shard_heads);

// Page copies (copy-on-write) on every device.
void record_page_copies(PoolState& ps, std::span<const std::pair<uint32_t, uint32_t>> copies);

// record_kv on every device, device d on ks[d] and vs[d] (on that device, holding its share of
// the heads, in dtypes[d], or dtypes[0] for every device when only one is given). entries address
// rows laid out for every head (head_stride rows a head) and are readdressed for one device's
// share; with one device, entries_buffer (optional) holds them already.
void record_kv_shards(PoolState& ps, uint32_t layer, std::span<Buffer* const> ks,
                      std::span<Buffer* const> vs, std::span<const DType> dtypes,
                      std::span<const RowEntry> entries, uint32_t head_stride, bool gather,
                      Buffer* entries_buffer = nullptr, uint64_t entries_offset = 0);

// record_kv on every device: k and v hold every head on the first device (scattered from, or
// gathered into). With one device, entries_buffer (optional) holds the entries already.
void record_kv_all(PoolState& ps, uint32_t layer, const Tensor& k, const Tensor& v,
                   std::span<const RowEntry> entries, uint32_t head_stride, bool gather,
                   Buffer* entries_buffer = nullptr, uint64_t entries_offset = 0);

// Whole blocks as a pool over one device lays them out (PoolState::format: every head in each
// page), whatever the number of devices (page_bytes.hpp's read_pages / write_pages, which
// snapshots and transfers use, wait for the devices and check the blocks first). blocks: runs
// of consecutive ids are read at once; bytes: blocks.size() * format.block_bytes().
void read_blocks(const PoolState& ps, std::span<const uint32_t> blocks, uint8_t* bytes);
void write_blocks(const PoolState& ps, std::span<const uint32_t> blocks, const uint8_t* bytes);

}  // namespace pagedkv::detail
