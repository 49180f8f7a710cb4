// Page stores: where a pool's pages live. DevicePageStore puts them in device-local slabs, as
// large as the device's storage-buffer range allows; a host tier or a pool spread over several
// devices is another store here, and the kernels (which take PageSlabs) stay as they are.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "allocator/page_format.hpp"
#include "shaders/kernels/page_slabs.hpp"

namespace pagedkv::detail {

class Device;

// The slabs of a store of num_blocks pages of format in memory of `kind`: a power of two of
// blocks per slab, as many as max_slab_bytes (0: the device's buffer limit) allows, and the
// table of their addresses. Throws CapacityExceeded (its message starting with `what`) when one
// block does not fit a slab.
struct StoreSlabs {
    uint32_t shift = 0;
    std::vector<std::shared_ptr<Buffer>> slabs;
    std::shared_ptr<Buffer> table;
};
StoreSlabs make_store_slabs(Device& dev, const PageFormat& format, uint64_t num_blocks,
                            uint64_t max_slab_bytes, MemoryKind kind, const char* what);

class DevicePageStore : public PageSlabs {
  public:
    using PageSlabs::PageSlabs;

    // max_slab_bytes: 0 for the device limit; smaller values make many slabs (for tests).
    // Throws CapacityExceeded when one block does not fit a slab.
    static std::shared_ptr<DevicePageStore> create(Device& dev, const PageFormat& format,
                                                   uint64_t num_blocks, uint64_t max_slab_bytes);
};

// Resolves BytePath::Auto for scatter and gather by timing both byte paths of the kernels on
// pages of this store (once; a device without timestamps uses copy commands on CPUs and
// shaders elsewhere).
void resolve_byte_paths(Device& dev);

// The layout PageLayout::Auto stands for on this device, measured once (after
// resolve_byte_paths: it times a decode-like scatter on the scatter path into head-major and
// into token-major pages) and kept on the device; TokenMajor on a device without timestamps.
PageLayout resolve_page_layout(Device& dev);

}  // namespace pagedkv::detail
