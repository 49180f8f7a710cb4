#include "shaders/page_storage.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pagedkv/error.hpp"
#include "shaders/device.hpp"

namespace pagedkv::detail {

std::shared_ptr<PageStorage> PageStorage::create(Device& dev, const PageLayout& layout,
                                                 uint64_t num_blocks, uint64_t max_slab_bytes) {
    const uint64_t block_bytes = layout.block_bytes();
    uint64_t limit = std::min<uint64_t>(dev.max_buffer_bytes(), uint64_t(1) << 30);
    if (max_slab_bytes) limit = std::min(limit, max_slab_bytes);
    if (block_bytes > limit)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("one block needs {} bytes ({} layers x K+V pages), more than a "
                                "slab may hold ({} bytes); use a smaller block_size",
                                block_bytes, layout.num_layers, limit));
    uint32_t shift = 0;
    while ((uint64_t(2) << shift) * block_bytes <= limit && (uint64_t(1) << shift) < num_blocks)
        ++shift;
    auto s = std::make_shared<PageStorage>();
    s->layout_ = layout;
    s->num_blocks_ = num_blocks;
    s->slab_shift_ = shift;
    const uint64_t per_slab = uint64_t(1) << shift;
    std::vector<uint64_t> addresses;
    for (uint64_t first = 0; first < num_blocks; first += per_slab) {
        const uint64_t blocks = std::min(per_slab, num_blocks - first);
        s->slabs_.push_back(Buffer::create(dev, blocks * block_bytes, MemoryKind::DeviceLocal));
        addresses.push_back(s->slabs_.back()->address());
    }
    s->slab_table_ =
        Buffer::create(dev, addresses.size() * sizeof(uint64_t), MemoryKind::DeviceLocal);
    s->slab_table_->write(addresses.data(), addresses.size() * sizeof(uint64_t));
    return s;
}

}  // namespace pagedkv::detail
