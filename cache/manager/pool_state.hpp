// PoolState: what a BlockPool is made of: the allocator's decisions (allocator/) and the
// device pages they index (shaders/). Caches in this folder reach both through it.
#pragma once

#include <memory>
#include <vector>

#include <fmt/format.h>

#include "allocator/block_allocator.hpp"
#include "allocator/layer_groups.hpp"
#include "allocator/page_format.hpp"
#include "allocator/prefix_index.hpp"
#include "cache/manager/host_prefix.hpp"
#include "cache/manager/tier_links.hpp"
#include "pagedkv/block_pool.hpp"
#include "pagedkv/error.hpp"
#include "shaders/kernels/page_slabs.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

// One device's share of a pool: its kv heads [first_head, first_head + format.num_kv_heads) of
// every page, in its own page store. A pool over one device has one shard holding every head.
struct Shard {
    std::shared_ptr<Device> device;
    PageFormat format;
    uint32_t first_head = 0;
    std::shared_ptr<PageSlabs> pages;
    // The host tier's pages of this device's heads (null without PoolConfig::num_host_blocks),
    // in host-visible memory of this device.
    std::shared_ptr<PageSlabs> host_pages;
};

struct PoolState {
    // devices: one or more, each holding cfg.num_kv_heads / devices.size() heads.
    PoolState(std::vector<std::shared_ptr<Device>> devices, const PoolConfig& cfg);

    // The first device: its call lock guards the pool's state, and the all-heads calls take and
    // return tensors on it.
    std::shared_ptr<Device> device;
    // The BlockPool made of this state; null once it is destroyed (caches may outlive it).
    BlockPool* pool = nullptr;
    PoolConfig config;
    // The layer groups of config.layer_windows (one holding every layer without windows).
    LayerGroups groups;
    // Of cfg: every head (what the allocator, snapshots and transfers see), and the layers of one
    // group (groups.per_page: every layer without windows).
    PageFormat format;
    BlockAllocator allocator;
    // The prefix index, made by the first KVManager with prefix caching (declared after the
    // allocator: destroyed first).
    std::unique_ptr<PrefixIndex> prefix;
    std::vector<Shard> shards;  // in device order; shards[0].device == device
    uint64_t pages_copied = 0;
    // The host tier (null without PoolConfig::num_host_blocks): its allocator (swapped-out
    // sequences' tables are registered with it; its pages are each shard's host_pages), which
    // device and host blocks hold the same bytes (a shared page moves once), and the pages
    // moved each way.
    std::unique_ptr<BlockAllocator> host_allocator;
    TierLinks links;
    uint64_t pages_swapped_out = 0, pages_swapped_in = 0;
    // Prefix pages spilled to the host tier on eviction (null without both a host tier and
    // prefix caching; made with the first KVManager with prefix caching). Declared after the
    // host allocator (its pages hold host blocks): destroyed first.
    std::unique_ptr<HostPrefix> host_prefix;

    bool sharded() const noexcept { return shards.size() > 1; }
    bool hybrid() const noexcept { return groups.hybrid(); }
    // The layer slot of a page that holds layer's K/V (what the kernels address pages by).
    uint32_t page_layer(uint32_t layer) const { return groups.slot_of[layer]; }
    // NotImplemented naming op when the pool has layer groups (layer_windows) and op does not
    // handle them yet.
    void refuse_hybrid(const char* op) const {
        if (hybrid())
            throw Error(ErrorCode::NotImplemented,
                        fmt::format("{}: not implemented for a pool with layer_windows (hybrid "
                                    "sliding + full layers)",
                                    op));
    }

    // The BlockPool, or InvalidArgument when it was destroyed before `who` (a cache or a
    // manager, "the caches" / "the managers" in the message).
    BlockPool& live_pool(const char* who, const char* made_over) const {
        if (!pool)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: the BlockPool it was made over has been destroyed (a "
                                    "pool must outlive {} made over it)",
                                    who, made_over));
        return *pool;
    }
    // InvalidArgument naming op and the argument (`what`) when layer is not one of the pool's.
    void check_layer(uint32_t layer, const char* op, const char* what) const {
        if (layer >= config.num_layers)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: {} {} out of range, pool has {} layers", op, what, layer,
                                    config.num_layers));
    }
};

// One call into the library over a pool: the call lock of each of its devices (the first one
// first, the others in order), taken before checking that the pool still exists.
struct PoolLock : Device::CallLock {
    PoolLock(const PoolState& ps, const char* who, const char* made_over)
        : Device::CallLock(*ps.device) {
        for (size_t i = 1; i < ps.shards.size(); ++i)
            others_.push_back(std::make_unique<Device::CallLock>(*ps.shards[i].device));
        ps.live_pool(who, made_over);
    }
    ~PoolLock() {
        while (!others_.empty())
            others_.pop_back();  // the last taken released first
    }

  private:
    std::vector<std::unique_ptr<Device::CallLock>> others_;
};

// The public PoolConfig as the allocator's PoolShape (what the checks, the page stores and
// snapshots use), and back.
// (With layer_windows, a page holds one group's layers: the shape's num_layers is theirs.)
inline PoolShape pool_shape(const PoolConfig& c) {
    const uint32_t layers = c.layer_windows.empty()
                                ? c.num_layers
                                : LayerGroups::make(c.num_layers, c.layer_windows).per_page;
    return {{layers, c.num_kv_heads, c.head_dim, c.v_head_dim, c.block_size, c.dtype, c.layout},
            c.num_blocks,
            c.max_slab_bytes};
}
inline PoolConfig pool_config(const PoolShape& l) {
    PoolConfig c;
    c.num_layers = l.num_layers;
    c.num_kv_heads = l.num_kv_heads;
    c.head_dim = l.head_dim;
    c.v_head_dim = l.v_head_dim;
    c.block_size = l.block_size;
    c.dtype = l.dtype;
    c.layout = l.layout;
    c.num_blocks = l.num_blocks;
    c.max_slab_bytes = l.max_slab_bytes;
    return c;
}

}  // namespace pagedkv::detail
