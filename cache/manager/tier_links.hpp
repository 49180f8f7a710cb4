// TierLinks: which device block and which host block hold the same bytes, so that a page that
// several sequences share crosses tiers once (swap_out of the second sharer finds the host
// copy the first one made; swap_in of the second finds the device page the first one got).
// Pure bookkeeping: no Vulkan.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include <fmt/format.h>

#include "allocator/block_allocator.hpp"

namespace pagedkv::detail {

// A link holds while both blocks are in use and neither was written since it was made: the
// manager unlinks a device page its steps write or allocate afresh, and prune() drops links
// whose device or host block is no longer in use (so a freed block never keeps a link).
class TierLinks {
  public:
    // The host block holding device block d's bytes, or -1.
    int64_t host_of(uint32_t d) const {
        auto it = to_host_.find(d);
        return it == to_host_.end() ? -1 : int64_t(it->second);
    }
    int64_t device_of(uint32_t h) const {
        auto it = to_device_.find(h);
        return it == to_device_.end() ? -1 : int64_t(it->second);
    }
    // Links d and h (dropping any link either had). May throw bad_alloc before changing anything.
    void link(uint32_t d, uint32_t h) {
        to_host_.reserve(to_host_.size() + 1);
        to_device_.reserve(to_device_.size() + 1);
        unlink_device(d);
        unlink_host(h);
        to_host_.emplace(d, h);
        to_device_.emplace(h, d);
    }
    void unlink_device(uint32_t d) noexcept {
        auto it = to_host_.find(d);
        if (it == to_host_.end()) return;
        to_device_.erase(it->second);
        to_host_.erase(it);
    }
    void unlink_host(uint32_t h) noexcept {
        auto it = to_device_.find(h);
        if (it == to_device_.end()) return;
        to_host_.erase(it->second);
        to_device_.erase(it);
    }
    // Drops the links of blocks no longer in use.
    void prune(const BlockAllocator& device, const BlockAllocator* host) noexcept {
        for (auto it = to_host_.begin(); it != to_host_.end();) {
            if (device.refcount(BlockId{it->first}) == 0 || !host ||
                host->refcount(BlockId{it->second}) == 0) {
                to_device_.erase(it->second);
                it = to_host_.erase(it);
            } else {
                ++it;
            }
        }
    }
    void clear() noexcept {
        to_host_.clear();
        to_device_.clear();
    }
    size_t size() const noexcept { return to_host_.size(); }
    bool empty() const noexcept { return to_host_.empty(); }

    // The links' invariants: one-to-one, both blocks in range and in use. "" when they hold.
    std::string check(const BlockAllocator& device, const BlockAllocator* host) const {
        if (to_host_.size() != to_device_.size())
            return fmt::format("tier links: {} device->host but {} host->device", to_host_.size(),
                               to_device_.size());
        for (auto [d, h] : to_host_) {
            auto it = to_device_.find(h);
            if (it == to_device_.end() || it->second != d)
                return fmt::format("tier links: device {} -> host {} has no way back", d, h);
            if (!host) return "tier links without a host tier";
            if (d >= device.num_blocks() || h >= host->num_blocks())
                return fmt::format("tier links: device {} / host {} out of range", d, h);
            if (device.refcount(BlockId{d}) == 0 || host->refcount(BlockId{h}) == 0)
                return fmt::format("tier links: device {} / host {} not in use", d, h);
        }
        return {};
    }

  private:
    std::unordered_map<uint32_t, uint32_t> to_host_, to_device_;
};

}  // namespace pagedkv::detail
