#include "shaders/kernels/page_copy.hpp"

#include <map>
#include <vector>

#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

void record_page_copies(Device& dev, PageSlabs& pages,
                        std::span<const std::pair<uint32_t, uint32_t>> copies) {
    if (copies.empty()) return;
    const uint64_t bytes = pages.format().block_bytes();
    std::map<std::pair<uint32_t, uint32_t>, std::vector<VkBufferCopy>> by_slabs;
    for (auto [src, dst] : copies)
        by_slabs[{src >> pages.slab_shift(), dst >> pages.slab_shift()}].push_back(
            VkBufferCopy{pages.offset_of(src), pages.offset_of(dst), bytes});
    // Page storage is one resource to the hazard tracker: a barrier before, none between.
    VkCommandBuffer cmd = dev.batches().record({&pages}, {&pages});
    for (auto& [slabs, regions] : by_slabs) {
        vkCmdCopyBuffer(cmd, pages.slabs()[slabs.first]->handle(),
                        pages.slabs()[slabs.second]->handle(), uint32_t(regions.size()),
                        regions.data());
        ++dev.counters().copies;
    }
}

}  // namespace pagedkv::detail
