// BlockPool: device memory for num_blocks pages of every layer's K and V, and the bookkeeping
// of which pages are free and who shares them. Caches made over a pool draw pages from it;
// the pool must outlive them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "pagedkv/block_counts.hpp"
#include "pagedkv/context.hpp"
#include "pagedkv/dtype.hpp"
#include "pagedkv/export.h"
#include "pagedkv/page_layout.hpp"

namespace pagedkv {

namespace detail {
struct PoolState;
struct Access;
}  // namespace detail

struct PoolConfig {
    uint32_t num_layers = 0;
    uint32_t num_kv_heads = 0;
    uint32_t head_dim = 0;
    uint32_t v_head_dim = 0;  // 0: same as head_dim
    uint32_t block_size = 16;
    // What the pages hold: F32, F16, BF16, or quantized Int8 / FP8E4M3 (one f32 scale per token
    // per kv head beside the values; writes quantize on the device).
    DType dtype = DType::F16;
    uint64_t num_blocks = 0;
    // Largest slab (one VkBuffer) in bytes; 0 for the device's maxStorageBufferRange (capped
    // at 1 GiB). Smaller values spread a pool over many slabs.
    uint64_t max_slab_bytes = 0;
    // How a page orders its (token, head) rows. Auto is resolved when the pool is made (per
    // device, by measurement); config().layout is then HeadMajor or TokenMajor.
    PageLayout layout = PageLayout::Auto;
    // The dtype of the tensors get / update / gathers return and attention computes in (F32,
    // F16 or BF16). Unset: the pool's dtype, or F16 for a quantized pool; config() reports it
    // resolved.
    std::optional<DType> compute_dtype;
    // The host tier: pages in host-visible memory that KVManager::swap_out moves sequences to
    // (and swap_in brings back from), with their own allocator. 0: no host tier.
    uint64_t num_host_blocks = 0;
    // Hybrid models (Gemma 2/3, Mistral, gpt-oss): empty, every layer full attention; else one
    // entry per layer, 0 for full attention, w > 0 for a sliding window of w tokens. Layers with
    // the same window are grouped (each group at most as many layers as the smallest kind has);
    // a page holds one group's layers, and each sequence has one block table per group, so a
    // sliding group's pages that left its window go back to the pool while full layers keep
    // their context. block_bytes and num_blocks then count pages of one group's layers.
    std::vector<uint32_t> layer_windows;
};

// Counters kept as the pool is used (cheap to read).
// The counters of the pool's blocks (shared_blocks: pages referenced by more than one row), and
// its bytes.
struct PoolStats : BlockCounts {
    uint64_t pages_copied = 0;  // copy-on-write page copies so far
    uint64_t block_bytes = 0;   // bytes of one block (all layers, or one group's, K and V)
    uint64_t total_bytes = 0;   // on every device together
    uint64_t num_slabs = 0;     // on every device together
    // The host tier (all 0 without one): its blocks, those swapped-out sequences hold, its
    // bytes, and the pages copied device -> host (swap_out) and host -> device (swap_in) so
    // far (a page shared by several sequences is copied once).
    uint64_t host_blocks = 0;
    uint64_t used_host_blocks = 0;
    uint64_t host_bytes = 0;
    uint64_t pages_swapped_out = 0;
    uint64_t pages_swapped_in = 0;
};

class PAGEDKV_API BlockPool {
  public:
    BlockPool(Context& ctx, PoolConfig config);
    // A pool over several devices (tensor parallelism): device d holds kv heads
    // [d * num_kv_heads / n, (d + 1) * num_kv_heads / n) of every page, in its own memory, and
    // the pool keeps one allocator and one block table per sequence for all. num_kv_heads must
    // divide evenly; each Context at most once. KVManager's write / gather / attention take and
    // return every head on the first device (moving each device's share through host memory);
    // write_shards / gather_shards / attention_shards take one tensor per device. A call over
    // the pool takes every device's call lock, the first device's first: pools that share
    // devices must list them in the same order. The pool keeps the devices alive.
    BlockPool(std::span<Context* const> devices, PoolConfig config);
    ~BlockPool();
    BlockPool(const BlockPool&) = delete;
    BlockPool& operator=(const BlockPool&) = delete;

    // The configuration with defaults filled in (v_head_dim, layout and compute_dtype resolved).
    const PoolConfig& config() const noexcept;
    // The devices the pool's heads are split over (1 for a pool made on one Context).
    uint32_t num_devices() const noexcept;
    PoolStats stats() const;
    // Every invariant: free + used = total, refcounts equal the references held by the
    // caches' block tables, no block both free and referenced.
    bool validate() const;
    // The first violated invariant in words, or "" when validate() holds.
    std::string check() const;

  private:
    friend struct detail::Access;
    PAGEDKV_LOCAL void init(std::span<Context* const> devices, PoolConfig config);
    std::shared_ptr<detail::PoolState> state_;
};

}  // namespace pagedkv
