// PoolState: what a BlockPool is made of: the allocator's decisions (allocator/) and the
// device pages they index (shaders/). Caches in this folder reach both through it.
#pragma once

#include <memory>

#include "allocator/block_allocator.hpp"
#include "pagedkv/block_pool.hpp"
#include "shaders/device.hpp"
#include "shaders/page_storage.hpp"

namespace pagedkv::detail {

struct PoolState {
    PoolState(std::shared_ptr<Device> dev, const PoolConfig& cfg, const PageLayout& layout);

    std::shared_ptr<Device> device;
    // The BlockPool made of this state; null once it is destroyed (caches may outlive it).
    BlockPool* pool = nullptr;
    PoolConfig config;
    PageLayout layout;
    BlockAllocator allocator;
    std::shared_ptr<PageStorage> pages;
    uint64_t pages_copied = 0;
};

}  // namespace pagedkv::detail
