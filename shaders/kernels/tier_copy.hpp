// Records page moves between two page stores (device <-> host tier): copy commands in the open
// batch, not a CPU copy through a read-back. The one place a page crosses tiers.
#pragma once

#include <cstdint>
#include <span>
#include <utility>

#include "shaders/kernels/page_slabs.hpp"

namespace pagedkv::detail {

class Device;

// Each pair is (block of `from`, block of `to`); both stores have the same PageFormat and live
// on dev. Runs of pairs whose source and destination blocks are both consecutive (and stay in
// one slab each) become one region; one vkCmdCopyBuffer per (source slab, destination slab).
// Returns the number of regions recorded. Throws InvalidArgument for a block out of range or
// stores of different formats, before recording anything.
uint64_t record_tier_copies(Device& dev, const PageSlabs& from, const PageSlabs& to,
                            std::span<const std::pair<uint32_t, uint32_t>> copies);

}  // namespace pagedkv::detail
