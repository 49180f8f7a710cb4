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
    uint32_t lanes;
};
static_assert(sizeof(PushConstants) <= 128, "push constants must fit the guaranteed 128 bytes");

constexpr uint32_t kMaxGroups = 65535;
constexpr uint32_t kWorkgroup = 64;  // local_size_x of quant_rows.comp

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
    // The shader indexes tensor elements in 32 bits: the last row an entry reaches must fit.
    uint64_t rows = 0;
    for (const RowEntry& e : op.entries)
        if (e.tensor_row != kNone) rows = std::max<uint64_t>(rows, e.tensor_row + 1);
    rows += uint64_t(op.heads - 1) * op.head_stride;
    const uint32_t widest = std::max(op.dim, op.tensor2 ? op.dim2 : 0u);
    if (threads > UINT32_MAX || rows * widest > UINT32_MAX)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("one quantized copy of {} rows exceeds the shader's 32-bit "
                                "indexing",
                                threads));
    const Device::Pipeline& pipe = dev.pipeline("quant_rows", kQuantRows, sizeof(PushConstants));
    Batches& batches = dev.batches();
    PushConstants pc{};
    pc.entries = entries_address(batches, op.entries, op.entries_buffer, op.entries_offset);
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
    pc.tensor_type = shader_dtype_code(op.tensor_dtype);
    pc.quant_type = shader_dtype_code(f.dtype);
    // Threads per row (a word of 4 codes each), as many rows a workgroup as fit; on a device
    // whose threads are SIMD lanes of a CPU (copy_rows' whole_rows), one thread a row.
    pc.lanes = dev.byte_paths().whole_rows ? 1 : std::min<uint32_t>(kWorkgroup, widest / 4);
    const uint64_t per_group = kWorkgroup / pc.lanes;

    VkCommandBuffer cmd = record_rows(batches, pages, op.tensor, op.tensor2, op.gather);
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe.pipeline);
    vkCmdPushConstants(cmd, pipe.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(pc), &pc);
    const uint64_t groups = std::min<uint64_t>((threads + per_group - 1) / per_group, kMaxGroups);
    vkCmdDispatch(cmd, uint32_t(groups), 1, 1);
    ++dev.counters().dispatches;
}

}  // namespace pagedkv::detail
