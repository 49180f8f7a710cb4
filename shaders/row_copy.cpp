#include "shaders/row_copy.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pagedkv/error.hpp"
#include "shaders/batch.hpp"
#include "shaders/device.hpp"

namespace pagedkv::detail {

namespace {

constexpr uint32_t kCopyRowsU16[] = {
#include "spirv/copy_rows_u16.inc"
};
constexpr uint32_t kCopyRowsU32[] = {
#include "spirv/copy_rows_u32.inc"
};
constexpr uint32_t kCopyRowsU128[] = {
#include "spirv/copy_rows_u128.inc"
};

struct PushConstants {
    uint64_t tensor;
    uint64_t entries;
    uint64_t slabs;
    uint32_t num_entries;
    uint32_t heads;
    uint32_t row_words;
    uint32_t head_stride;
    uint32_t block_words;
    uint32_t page_offset;
    uint32_t block_size;
    uint32_t slab_shift;
    uint32_t gather;
};
static_assert(sizeof(PushConstants) <= 128, "push constants must fit the guaranteed 128 bytes");

constexpr uint32_t kMaxGroups = 65535;

}  // namespace

void record_row_copy(Device& dev, PageStorage& pages, const RowCopy& op) {
    if (op.entries.empty() || op.heads == 0 || op.row_bytes == 0) return;
    const PageLayout& layout = pages.layout();
    // The widest word that divides every stride keeps the shader's loads aligned.
    uint64_t word = 16;
    for (uint64_t v : {op.row_bytes, op.page_offset, layout.block_bytes()})
        while (v % word)
            word /= 2;
    const Device::Pipeline* pipe = nullptr;
    switch (word) {
        case 16:
            pipe = &dev.pipeline("copy_rows_u128", kCopyRowsU128, sizeof(PushConstants));
            break;
        case 8:
        case 4:
            word = 4;
            pipe = &dev.pipeline("copy_rows_u32", kCopyRowsU32, sizeof(PushConstants));
            break;
        case 2:
            if (!dev.has_16bit_storage())
                throw Error(ErrorCode::Unsupported,
                            fmt::format("rows of {} bytes need storageBuffer16BitAccess, which "
                                        "this device lacks; use an even head_dim",
                                        op.row_bytes));
            pipe = &dev.pipeline("copy_rows_u16", kCopyRowsU16, sizeof(PushConstants));
            break;
        default:
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("row of {} bytes is not a whole number of 16-bit elements",
                                    op.row_bytes));
    }
    const uint64_t total = uint64_t(op.entries.size()) * op.heads * (op.row_bytes / word);
    if (total > UINT32_MAX || layout.block_bytes() / word > UINT32_MAX)
        throw Error(
            ErrorCode::CapacityExceeded,
            fmt::format("one copy of {} words exceeds the shader's 32-bit indexing", total));

    Batches& batches = dev.batches();
    PushConstants pc{};
    pc.entries = batches.upload(op.entries.data(), op.entries.size_bytes());
    pc.tensor = op.tensor->address();
    pc.slabs = pages.slab_table().address();
    pc.num_entries = uint32_t(op.entries.size());
    pc.heads = op.heads;
    pc.row_words = uint32_t(op.row_bytes / word);
    pc.head_stride = op.head_stride;
    pc.block_words = uint32_t(layout.block_bytes() / word);
    pc.page_offset = uint32_t(op.page_offset / word);
    pc.block_size = layout.block_size;
    pc.slab_shift = pages.slab_shift();
    pc.gather = op.gather ? 1 : 0;

    VkCommandBuffer cmd =
        op.gather ? batches.record({&pages}, {op.tensor}) : batches.record({op.tensor}, {&pages});
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe->pipeline);
    vkCmdPushConstants(cmd, pipe->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(pc), &pc);
    const uint64_t groups =
        std::min<uint64_t>((total + dev.workgroup_size() - 1) / dev.workgroup_size(), kMaxGroups);
    vkCmdDispatch(cmd, uint32_t(groups), 1, 1);
    ++dev.counters().dispatches;
}

}  // namespace pagedkv::detail
