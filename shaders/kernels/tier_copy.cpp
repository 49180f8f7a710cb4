#include "shaders/kernels/tier_copy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

uint64_t record_tier_copies(Device& dev, const PageSlabs& from, const PageSlabs& to,
                            std::span<const std::pair<uint32_t, uint32_t>> copies) {
    if (copies.empty()) return 0;
    if (from.format().block_bytes() != to.format().block_bytes())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("record_tier_copies: blocks of {} and {} bytes",
                                from.format().block_bytes(), to.format().block_bytes()));
    for (auto [src, dst] : copies)
        if (src >= from.num_blocks() || dst >= to.num_blocks())
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("record_tier_copies: block pair ({}, {}) out of range ({} "
                                    "and {} blocks)",
                                    src, dst, from.num_blocks(), to.num_blocks()));
    const uint64_t bytes = from.format().block_bytes();
    std::vector<std::pair<uint32_t, uint32_t>> sorted(copies.begin(), copies.end());
    std::sort(sorted.begin(), sorted.end());
    // Runs: source and destination both consecutive, each inside one slab.
    struct Keyed {
        uint64_t key;  // source slab << 32 | destination slab
        VkBufferCopy region;
    };
    std::vector<Keyed> regions;
    for (size_t i = 0; i < sorted.size();) {
        const auto [src, dst] = sorted[i];
        size_t j = i + 1;
        while (j < sorted.size() && sorted[j].first == src + (j - i) &&
               sorted[j].second == dst + (j - i) &&
               (sorted[j].first >> from.slab_shift()) == (src >> from.slab_shift()) &&
               (sorted[j].second >> to.slab_shift()) == (dst >> to.slab_shift()))
            ++j;
        regions.push_back({uint64_t(src >> from.slab_shift()) << 32 | (dst >> to.slab_shift()),
                           VkBufferCopy{from.offset_of(src), to.offset_of(dst), (j - i) * bytes}});
        i = j;
    }
    std::stable_sort(regions.begin(), regions.end(),
                     [](const Keyed& a, const Keyed& b) { return a.key < b.key; });
    // Each store is one resource to the hazard tracker: a barrier before, none between. The
    // source counts as written too: the tracker orders only what follows a write, and the
    // pages a swap frees are written next by their new owner (write after read).
    auto& src_res = const_cast<PageSlabs&>(from);
    auto& dst_res = const_cast<PageSlabs&>(to);
    VkCommandBuffer cmd = dev.batches().record({&src_res}, {&src_res, &dst_res});
    std::vector<VkBufferCopy> call;
    for (size_t i = 0; i < regions.size();) {
        const uint64_t key = regions[i].key;
        call.clear();
        for (; i < regions.size() && regions[i].key == key; ++i)
            call.push_back(regions[i].region);
        vkCmdCopyBuffer(cmd, from.slabs()[uint32_t(key >> 32)]->handle(),
                        to.slabs()[uint32_t(key)]->handle(), uint32_t(call.size()), call.data());
        ++dev.counters().copies;
    }
    return regions.size();
}

}  // namespace pagedkv::detail
