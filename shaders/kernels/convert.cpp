#include "shaders/kernels/convert.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pagedkv/error.hpp"
#include "shaders/kernels/quant_rows.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

namespace {

constexpr uint32_t kConvertWords[] = {
#include "spirv/convert_word32.inc"
};
constexpr uint32_t kConvertStorage16[] = {
#include "spirv/convert_storage16.inc"
};

// Params of convert.comp.
struct PushConstants {
    uint64_t src;
    uint64_t dst;
    uint32_t count;
    uint32_t src_type;
    uint32_t dst_type;
};
static_assert(sizeof(PushConstants) <= 128, "push constants must fit the guaranteed 128 bytes");

constexpr uint32_t kMaxGroups = 65535;

// The kernel's type code; quantized dtypes are refused (their rows have scales).
uint32_t code(DType t) {
    if (!known_dtype(t))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("convert: unknown dtype {}", static_cast<unsigned>(t)));
    if (is_quantized(t))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("convert: {} is a pool dtype, not an element-wise one "
                                "(quantized rows are written by the quantize kernel)",
                                to_string(t)));
    return shader_dtype_code(t);
}

}  // namespace

void check_convert(uint64_t count, const char* op) {
    if (count > UINT32_MAX - 1)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("{}: converting {} elements exceeds the convert shader's 32-bit "
                                "indexing",
                                op, count));
}

void record_convert(Device& dev, Buffer& src, DType from, Buffer& dst, DType to, uint64_t count) {
    PushConstants pc{};
    pc.src_type = code(from);
    pc.dst_type = code(to);
    if (count == 0) return;
    check_convert(count, "convert");
    // Whole words reach one 16-bit element past an odd count: element-wise 16-bit access then.
    const bool narrow = dtype_size(from) == 2 || dtype_size(to) == 2;
    const bool storage16 = narrow && count % 2 != 0;
    if (storage16 && !dev.has_16bit_storage())
        throw Error(ErrorCode::Unsupported,
                    fmt::format("convert: {} {} elements to {} need storageBuffer16BitAccess, "
                                "which this device lacks (use an even element count)",
                                count, to_string(from), to_string(to)));
    const Device::Pipeline& pipe =
        storage16 ? dev.pipeline("convert_storage16", kConvertStorage16, sizeof(PushConstants))
                  : dev.pipeline("convert_word32", kConvertWords, sizeof(PushConstants));
    pc.src = src.address();
    pc.dst = dst.address();
    pc.count = uint32_t(count);
    VkCommandBuffer cmd = dev.batches().record({&src}, {&dst});
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe.pipeline);
    vkCmdPushConstants(cmd, pipe.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(pc), &pc);
    const uint64_t pairs = (count + 1) / 2;
    const uint64_t groups =
        std::min<uint64_t>((pairs + dev.workgroup_size() - 1) / dev.workgroup_size(), kMaxGroups);
    vkCmdDispatch(cmd, uint32_t(groups), 1, 1);
    ++dev.counters().dispatches;
}

}  // namespace pagedkv::detail
