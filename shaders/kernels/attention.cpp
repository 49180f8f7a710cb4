#include "shaders/kernels/attention.hpp"

#include <fmt/format.h>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

namespace {

constexpr uint32_t kF32Paged[] = {
#include "spirv/paged_attention_f32_paged.inc"
};
constexpr uint32_t kF16Paged[] = {
#include "spirv/paged_attention_f16_paged.inc"
};
constexpr uint32_t kBF16Paged[] = {
#include "spirv/paged_attention_bf16_paged.inc"
};
constexpr uint32_t kF32Contiguous[] = {
#include "spirv/paged_attention_f32_contiguous.inc"
};
constexpr uint32_t kF16Contiguous[] = {
#include "spirv/paged_attention_f16_contiguous.inc"
};
constexpr uint32_t kBF16Contiguous[] = {
#include "spirv/paged_attention_bf16_contiguous.inc"
};

constexpr uint32_t kMaxWords = 256;  // MAX_WORDS in the shader
constexpr uint32_t kMaxGroups = 65535;

struct PushConstants {
    uint64_t q;
    uint64_t out;
    uint64_t k;
    uint64_t v;
    uint64_t indptr;
    uint64_t indices;
    uint64_t last_page_len;
    uint64_t first_slot;
    uint64_t k_offset;
    uint64_t v_offset;
    PageAddressing pages;
    uint32_t q_heads;
    uint32_t kv_heads;
    uint32_t k_words;
    uint32_t v_words;
    uint32_t max_len;
    float scale;
};
static_assert(sizeof(PushConstants) <= 128, "push constants must fit the guaranteed 128 bytes");

uint32_t words(uint32_t dim, DType t) {
    return uint32_t(uint64_t(dim) * dtype_size(t) / 4);
}

const Device::Pipeline& pipeline(Device& dev, DType t, bool paged) {
    const size_t size = sizeof(PushConstants);
    switch (t) {
        case DType::F32:
            return paged ? dev.pipeline("attention_f32_paged", kF32Paged, size)
                         : dev.pipeline("attention_f32_contiguous", kF32Contiguous, size);
        case DType::F16:
            return paged ? dev.pipeline("attention_f16_paged", kF16Paged, size)
                         : dev.pipeline("attention_f16_contiguous", kF16Contiguous, size);
        case DType::BF16:
            return paged ? dev.pipeline("attention_bf16_paged", kBF16Paged, size)
                         : dev.pipeline("attention_bf16_contiguous", kBF16Contiguous, size);
    }
    throw Error(ErrorCode::Unsupported,
                fmt::format("attention: no shader for dtype {}", static_cast<unsigned>(t)));
}

PushConstants common(const AttentionShape& s, Buffer& query, Buffer& out) {
    PushConstants pc{};
    pc.q = query.address();
    pc.out = out.address();
    pc.q_heads = s.q_heads;
    pc.kv_heads = s.kv.num_kv_heads;
    pc.k_words = words(s.kv.head_dim, s.kv.dtype);
    pc.v_words = words(s.kv.v_head_dim, s.kv.dtype);
    pc.scale = s.scale;
    return pc;
}

void dispatch(Device& dev, VkCommandBuffer cmd, const AttentionShape& s, bool paged,
              const PushConstants& pc) {
    const Device::Pipeline& pipe = pipeline(dev, s.kv.dtype, paged);
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe.pipeline);
    vkCmdPushConstants(cmd, pipe.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(pc), &pc);
    vkCmdDispatch(cmd, s.q_heads, s.batch, 1);
    ++dev.counters().dispatches;
}

}  // namespace

void check_attention_shape(const AttentionShape& s, const char* op) {
    if (s.kv.num_kv_heads == 0 || s.q_heads == 0 || s.q_heads % s.kv.num_kv_heads != 0)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: query has {} heads, not a multiple of the {} kv heads", op,
                                s.q_heads, s.kv.num_kv_heads));
    const uint64_t elem = dtype_size(s.kv.dtype);
    for (uint32_t dim : {s.kv.head_dim, s.kv.v_head_dim}) {
        if (dim * elem % 4 != 0)
            throw Error(ErrorCode::Unsupported,
                        fmt::format("{}: the attention shader reads 32-bit words; head dim {} of "
                                    "{} is not a whole number of them (use an even head dim)",
                                    op, dim, to_string(s.kv.dtype)));
        if (dim * elem / 4 > kMaxWords)
            throw Error(ErrorCode::Unsupported,
                        fmt::format("{}: head dim {} of {} exceeds the shader's {} bytes a row", op,
                                    dim, to_string(s.kv.dtype), kMaxWords * 4));
    }
    if (s.batch > kMaxGroups || s.q_heads > kMaxGroups)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("{}: {} rows x {} query heads exceed the dispatch limit of {}", op,
                                s.batch, s.q_heads, kMaxGroups));
}

void record_paged_attention(Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
                            PageSlabs& pages, uint32_t layer, const CsrTable& table) {
    if (s.batch == 0) return;
    const PageFormat& lay = pages.format();
    Batches& batches = dev.batches();
    PushConstants pc = common(s, query, out);
    // Empty arrays still need a valid address: upload one word at least.
    const uint32_t zero = 0;
    auto up = [&](std::span<const uint32_t> a) {
        return a.empty() ? batches.upload(&zero, sizeof zero)
                         : batches.upload(a.data(), a.size_bytes());
    };
    pc.indptr = up(table.indptr);
    pc.indices = up(table.indices);
    pc.last_page_len = up(table.last_page_len);
    pc.first_slot = up(table.first_slot);
    pc.pages = pages.addressing();
    pc.k_offset = lay.page_offset(layer, false);
    pc.v_offset = lay.page_offset(layer, true);
    VkCommandBuffer cmd = batches.record({&query, &pages}, {&out});
    dispatch(dev, cmd, s, true, pc);
}

void record_contiguous_attention(Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
                                 Buffer& k, Buffer& v, uint32_t max_len,
                                 std::span<const uint32_t> lengths) {
    if (s.batch == 0) return;
    if (uint64_t(s.batch) * s.kv.num_kv_heads * max_len * kMaxWords > UINT32_MAX)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("attention over {} rows x {} kv heads x {} tokens exceeds the "
                                "shader's 32-bit indexing",
                                s.batch, s.kv.num_kv_heads, max_len));
    Batches& batches = dev.batches();
    PushConstants pc = common(s, query, out);
    pc.k = k.address();
    pc.v = v.address();
    pc.last_page_len = batches.upload(lengths.data(), lengths.size_bytes());
    pc.max_len = max_len;
    VkCommandBuffer cmd = batches.record({&query, &k, &v}, {&out});
    dispatch(dev, cmd, s, false, pc);
}

}  // namespace pagedkv::detail
