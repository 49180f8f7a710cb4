// Records whole-block copies (every layer's K and V) for copy-on-write: one vkCmdCopyBuffer per
// pair of slabs involved, one region per block.
#pragma once

#include <cstdint>
#include <span>
#include <utility>

#include "shaders/kernels/page_slabs.hpp"

namespace pagedkv::detail {

class Device;

// Each pair is (source block, destination block).
void record_page_copies(Device& dev, PageSlabs& pages,
                        std::span<const std::pair<uint32_t, uint32_t>> copies);

}  // namespace pagedkv::detail
