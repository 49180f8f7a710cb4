#include "shaders/store/host_page_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

std::shared_ptr<HostPageStore> HostPageStore::create(Device& dev, const PageFormat& format,
                                                     uint64_t num_blocks, uint64_t max_slab_bytes) {
    const uint64_t block_bytes = format.block_bytes();
    uint64_t limit = dev.max_buffer_bytes();
    if (max_slab_bytes) limit = std::min(limit, max_slab_bytes);
    if (block_bytes > limit)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("host tier: one block needs {} bytes, more than a slab may hold "
                                "({} bytes); use a smaller block_size",
                                block_bytes, limit));
    uint32_t shift = 0;
    while ((uint64_t(2) << shift) * block_bytes <= limit && (uint64_t(1) << shift) < num_blocks)
        ++shift;
    const uint64_t per_slab = uint64_t(1) << shift;
    std::vector<std::shared_ptr<Buffer>> slabs;
    std::vector<uint64_t> addresses;
    for (uint64_t first = 0; first < num_blocks; first += per_slab) {
        const uint64_t blocks = std::min(per_slab, num_blocks - first);
        slabs.push_back(Buffer::create(dev, blocks * block_bytes, MemoryKind::HostPages));
        addresses.push_back(slabs.back()->address());
    }
    auto table = Buffer::create(dev, addresses.size() * sizeof(uint64_t), MemoryKind::HostPages);
    table->write(addresses.data(), addresses.size() * sizeof(uint64_t));
    return std::make_shared<HostPageStore>(format, num_blocks, shift, std::move(slabs),
                                           std::move(table));
}

const void* HostPageStore::block_bytes(uint32_t b) const {
    if (b >= num_blocks())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("host tier: block {} out of range ({} blocks)", b, num_blocks()));
    return static_cast<const char*>(slab_of(b).mapped()) + offset_of(b);
}

}  // namespace pagedkv::detail
