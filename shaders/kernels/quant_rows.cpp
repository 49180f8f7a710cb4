#include "shaders/kernels/quant_rows.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

namespace {

constexpr uint32_t kQuantRows[] = {
#include "spirv/quant_rows_main.inc"
};

// Params of quant_rows.comp.
struct PushConstants {
    uint64_t tensor;
    uint64_t entries;
    uint64_t tensor2;
    uint64_t page_offset;
    uint64_t page_offset2;
    uint64_t scales;
    uint64_t scales2;
    PageAddressing pages;
    uint32_t num_entries;
    uint32_t heads;
    uint32_t dim;
    uint32_t dim2;
    uint32_t head_stride;
    uint32_t gather;
    uint32_t tensor_type;
    uint32_t quant_type;
};
static_assert(sizeof(PushConstants) <= 128, "push constants must fit the guaranteed 128 bytes");

constexpr uint32_t kMaxGroups = 65535;

}  // namespace

void record_quant_rows(Device& dev, PageSlabs& pages, const QuantRowCopy& op) {
    const PageFormat& f = pages.format();
    if (!is_quantized(f.dtype))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("quant_rows: the pool holds {}, not a quantized dtype",
                                to_string(f.dtype)));
    if (!is_float_dtype(op.tensor_dtype))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("quant_rows: tensors of {} (f32, f16 or bf16 only)",
                                to_string(op.tensor_dtype)));
    if (op.entries.empty() || op.heads == 0) return;
    if (op.dim % 4 != 0 || (op.tensor2 && op.dim2 % 4 != 0))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("quant_rows: rows of {} elements are not a multiple of 4",
                                op.tensor2 && op.dim2 % 4 != 0 ? op.dim2 : op.dim));
    const uint32_t members = op.tensor2 ? 2 : 1;
    const uint64_t threads = uint64_t(op.entries.size()) * members * op.heads;
    const uint32_t widest = std::max(op.dim, op.tensor2 ? op.dim2 : 0u);
    // The shader's largest element index: (tensor_row + (heads - 1) * head_stride + 1) * dim,
    // over the entries' tensor rows (a tensor of more than 2^32 elements, not every copy of
    // many rows: a (1, H, S, D) gather has S entries and head_stride S).
    uint64_t last_row = 0;
    for (const RowEntry& e : op.entries)
        if (e.tensor_row != kNone) last_row = std::max<uint64_t>(last_row, e.tensor_row);
    if (threads > UINT32_MAX ||
        (last_row + uint64_t(op.heads - 1) * op.head_stride + 1) * widest > UINT32_MAX)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("one quantized copy of {} rows exceeds the shader's 32-bit "
                                "indexing",
                                threads));
    const Device::Pipeline& pipe = dev.pipeline("quant_rows", kQuantRows, sizeof(PushConstants));
    Batches& batches = dev.batches();
    PushConstants pc{};
    if (op.entries_buffer) {
        pc.entries = op.entries_buffer->address() + op.entries_offset;
        batches.keep_alive(op.entries_buffer->shared_from_this());
    } else {
        pc.entries = batches.upload(op.entries.data(), op.entries.size_bytes());
    }
    pc.tensor = op.tensor->address();
    pc.tensor2 = op.tensor2 ? op.tensor2->address() : 0;
    pc.page_offset = op.page_offset;
    pc.page_offset2 = op.page_offset2;
    pc.scales = op.page_offset + f.scales_offset(op.value);
    pc.scales2 = op.page_offset2 + f.scales_offset(true);
    pc.pages = pages.addressing();
    pc.num_entries = uint32_t(op.entries.size());
    pc.heads = op.heads;
    pc.dim = op.dim;
    pc.dim2 = op.dim2;
    pc.head_stride = op.head_stride;
    pc.gather = op.gather ? 1 : 0;
    pc.tensor_type = static_cast<uint32_t>(op.tensor_dtype);
    pc.quant_type = static_cast<uint32_t>(f.dtype);

    VkCommandBuffer cmd;
    if (op.gather)
        cmd = op.tensor2 ? batches.record({&pages}, {op.tensor, op.tensor2})
                         : batches.record({&pages}, {op.tensor});
    else
        cmd = op.tensor2 ? batches.record({op.tensor, op.tensor2}, {&pages})
                         : batches.record({op.tensor}, {&pages});
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe.pipeline);
    vkCmdPushConstants(cmd, pipe.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(pc), &pc);
    const uint64_t groups =
        std::min<uint64_t>((threads + dev.workgroup_size() - 1) / dev.workgroup_size(), kMaxGroups);
    vkCmdDispatch(cmd, uint32_t(groups), 1, 1);
    ++dev.counters().dispatches;
}

}  // namespace pagedkv::detail
