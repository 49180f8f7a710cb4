#include "shaders/kernels/page_copy.hpp"

#include <algorithm>
#include <vector>

#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

void record_page_copies(Device& dev, PageSlabs& pages,
                        std::span<const std::pair<uint32_t, uint32_t>> copies) {
    if (copies.empty()) return;
    const uint64_t bytes = pages.format().block_bytes();
    // One copy command per (source slab, destination slab).
    struct Keyed {
        uint64_t key;  // source slab << 32 | destination slab
        VkBufferCopy region;
    };
    std::vector<Keyed> regions;
    regions.reserve(copies.size());
    for (auto [src, dst] : copies)
        regions.push_back({uint64_t(src >> pages.slab_shift()) << 32 | (dst >> pages.slab_shift()),
                           VkBufferCopy{pages.offset_of(src), pages.offset_of(dst), bytes}});
    std::stable_sort(regions.begin(), regions.end(),
                     [](const Keyed& a, const Keyed& b) { return a.key < b.key; });
    std::vector<VkBufferCopy> call;
    // Page storage is one resource to the hazard tracker: a barrier before, none between.
    VkCommandBuffer cmd = dev.batches().record({&pages}, {&pages});
    for (size_t i = 0; i < regions.size();) {
        const uint64_t key = regions[i].key;
        call.clear();
        for (; i < regions.size() && regions[i].key == key; ++i)
            call.push_back(regions[i].region);
        vkCmdCopyBuffer(cmd, pages.slabs()[uint32_t(key >> 32)]->handle(),
                        pages.slabs()[uint32_t(key)]->handle(), uint32_t(call.size()), call.data());
        ++dev.counters().copies;
    }
}

}  // namespace pagedkv::detail
