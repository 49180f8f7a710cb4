// HostPageStore: a pool's host tier, pages in host-visible memory with the same PageFormat and
// PageSlabs addressing as the device pages, so copies (and kernels) reach them the same way.
// Where a page lives is this store's business; which pages move is the cache layer's.
#pragma once

#include <cstdint>
#include <memory>

#include "allocator/page_format.hpp"
#include "shaders/kernels/page_slabs.hpp"

namespace pagedkv::detail {

class Device;

class HostPageStore : public PageSlabs {
  public:
    using PageSlabs::PageSlabs;

    // num_blocks pages of format in host-visible, coherent slabs of at most max_slab_bytes
    // (0: the device's buffer limit). Throws CapacityExceeded when one block does not fit a
    // slab, Error(Vulkan) when the memory cannot be had.
    static std::shared_ptr<HostPageStore> create(Device& dev, const PageFormat& format,
                                                 uint64_t num_blocks, uint64_t max_slab_bytes);

    // The bytes of block b, mapped (for tests and tools, after the copies that wrote it have
    // finished).
    const void* block_bytes(uint32_t b) const;
};

}  // namespace pagedkv::detail
