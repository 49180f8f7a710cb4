#include "shaders/store/host_page_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "pagedkv/error.hpp"
#include "shaders/store/page_store.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

std::shared_ptr<HostPageStore> HostPageStore::create(Device& dev, const PageFormat& format,
                                                     uint64_t num_blocks, uint64_t max_slab_bytes) {
    StoreSlabs s = make_store_slabs(dev, format, num_blocks, max_slab_bytes, MemoryKind::HostPages,
                                    "host tier: ");
    return std::make_shared<HostPageStore>(format, num_blocks, s.shift, std::move(s.slabs),
                                           std::move(s.table));
}

const void* HostPageStore::block_bytes(uint32_t b) const {
    if (b >= num_blocks())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("host tier: block {} out of range ({} blocks)", b, num_blocks()));
    return static_cast<const char*>(slab_of(b).mapped()) + offset_of(b);
}

}  // namespace pagedkv::detail
