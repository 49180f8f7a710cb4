#include "shaders/kernels/attention.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "pagedkv/error.hpp"
#include "shaders/kernels/quant_rows.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::detail {

namespace {

constexpr uint32_t k_f32_paged[] = {
#include "spirv/paged_attention_f32_paged.inc"
};
constexpr uint32_t k_f32_paged_subgroup[] = {
#include "spirv/paged_attention_f32_paged_subgroup.inc"
};
constexpr uint32_t k_f32_contiguous[] = {
#include "spirv/paged_attention_f32_contiguous.inc"
};
constexpr uint32_t k_f32_contiguous_subgroup[] = {
#include "spirv/paged_attention_f32_contiguous_subgroup.inc"
};
constexpr uint32_t k_f32_reduce[] = {
#include "spirv/paged_attention_f32_reduce.inc"
};
constexpr uint32_t k_f16_paged[] = {
#include "spirv/paged_attention_f16_paged.inc"
};
constexpr uint32_t k_f16_paged_subgroup[] = {
#include "spirv/paged_attention_f16_paged_subgroup.inc"
};
constexpr uint32_t k_f16_contiguous[] = {
#include "spirv/paged_attention_f16_contiguous.inc"
};
constexpr uint32_t k_f16_contiguous_subgroup[] = {
#include "spirv/paged_attention_f16_contiguous_subgroup.inc"
};
constexpr uint32_t k_f16_reduce[] = {
#include "spirv/paged_attention_f16_reduce.inc"
};
constexpr uint32_t k_bf16_paged[] = {
#include "spirv/paged_attention_bf16_paged.inc"
};
constexpr uint32_t k_bf16_paged_subgroup[] = {
#include "spirv/paged_attention_bf16_paged_subgroup.inc"
};
constexpr uint32_t k_bf16_contiguous[] = {
#include "spirv/paged_attention_bf16_contiguous.inc"
};
constexpr uint32_t k_bf16_contiguous_subgroup[] = {
#include "spirv/paged_attention_bf16_contiguous_subgroup.inc"
};
constexpr uint32_t k_bf16_reduce[] = {
#include "spirv/paged_attention_bf16_reduce.inc"
};
constexpr uint32_t k_int8_paged[] = {
#include "spirv/paged_attention_int8_paged.inc"
};
constexpr uint32_t k_int8_paged_subgroup[] = {
#include "spirv/paged_attention_int8_paged_subgroup.inc"
};
constexpr uint32_t k_fp8_paged[] = {
#include "spirv/paged_attention_fp8_paged.inc"
};
constexpr uint32_t k_fp8_paged_subgroup[] = {
#include "spirv/paged_attention_fp8_paged_subgroup.inc"
};

// Limits of paged_attention.comp (MAX_WORDS, MAX_G, Q_FLOATS, K_S_WORDS, the workgroup size).
constexpr uint32_t kMaxWords = 256;
constexpr uint32_t kQuantMaxWords = 64;  // quantized pages: 4 codes a word, head dims <= 256
constexpr uint32_t kMaxGroupHeads = 8;
constexpr uint32_t kQFloats = 2048;
constexpr uint32_t kKSharedWords = 4160;
constexpr uint32_t kTile = 64;
constexpr uint32_t kSharedBytes =
    (kQFloats + kKSharedWords + 2 * kMaxGroupHeads * kTile) * 4 + kTile * 8;
// Quantized pages also stage each tile token's K and V scales; FP8 adds its 256-entry table.
constexpr uint32_t kQuantSharedBytes = kSharedBytes + 2 * kTile * 4 + 256 * 4;
constexpr uint32_t kMaxGroups = 65535;

// The split rule (flash-decoding): a decode step of few rows x kv heads leaves most of a GPU
// idle, so when fewer than kSplitBelow workgroups would run and the longest row has at least
// kMinSplitTokens tokens, each row is cut into chunks of at least kMinChunkTokens tokens
// (a multiple of kTile), enough of them for about kTargetGroups workgroups in all; a second
// dispatch combines the chunks.
constexpr uint64_t kSplitBelow = 128;
constexpr uint64_t kTargetGroups = 256;
constexpr uint32_t kMinSplitTokens = 512;
constexpr uint32_t kMinChunkTokens = 256;

struct PushConstants {
    uint64_t q;
    uint64_t out;
    uint64_t k;
    uint64_t v;
    uint64_t table;
    uint64_t scratch;
    PageAddressing pages;
    uint32_t q_heads;  // (the rows are the dispatch's y)
    uint32_t kv_heads;
    uint32_t k_words;
    uint32_t v_words;
    uint32_t max_len;
    float scale;
    uint32_t chunk;
    uint32_t tile;
    uint32_t group;
    uint32_t flags;     // bit 0: uvec4 K loads; quantized pages: the io dtype's DT_ code << 1
    uint32_t k_scales;  // quantized pages: PageFormat::scales_offset(false)
    uint32_t v_scales;  // ... and (true)
};
static_assert(sizeof(PushConstants) <= 128, "push constants must fit the guaranteed 128 bytes");

uint32_t words(uint32_t dim, DType t) {
    return uint32_t(uint64_t(dim) * dtype_size(t) / 4);
}

enum class Kind { Paged, Contiguous, Reduce };

const Device::Pipeline& pipeline(Device& dev, DType t, Kind kind) {
    const size_t size = sizeof(PushConstants);
    const bool sub = dev.has_subgroup_arithmetic() && !dev.attention_paths().no_subgroups;
    if (is_quantized(t)) {  // paged only; the reduction is the io dtype's
        if (kind != Kind::Paged)
            throw Error(ErrorCode::Unsupported,
                        fmt::format("attention: no contiguous shader for dtype {}", to_string(t)));
        if (t == DType::Int8)
            return sub ? dev.pipeline("attention_int8_paged_sg", k_int8_paged_subgroup, size)
                       : dev.pipeline("attention_int8_paged", k_int8_paged, size);
        return sub ? dev.pipeline("attention_fp8_paged_sg", k_fp8_paged_subgroup, size)
                   : dev.pipeline("attention_fp8_paged", k_fp8_paged, size);
    }
    struct Variant {
        const char* name;
        std::span<const uint32_t> spirv;
    };
    // [dtype][paged, contiguous, reduce][shared memory, subgroup]
    static const Variant variants[3][3][2] = {
        {{{"attention_f32_paged", k_f32_paged}, {"attention_f32_paged_sg", k_f32_paged_subgroup}},
         {{"attention_f32_contiguous", k_f32_contiguous},
          {"attention_f32_contiguous_sg", k_f32_contiguous_subgroup}},
         {{"attention_f32_reduce", k_f32_reduce}, {"attention_f32_reduce", k_f32_reduce}}},
        {{{"attention_f16_paged", k_f16_paged}, {"attention_f16_paged_sg", k_f16_paged_subgroup}},
         {{"attention_f16_contiguous", k_f16_contiguous},
          {"attention_f16_contiguous_sg", k_f16_contiguous_subgroup}},
         {{"attention_f16_reduce", k_f16_reduce}, {"attention_f16_reduce", k_f16_reduce}}},
        {{{"attention_bf16_paged", k_bf16_paged},
          {"attention_bf16_paged_sg", k_bf16_paged_subgroup}},
         {{"attention_bf16_contiguous", k_bf16_contiguous},
          {"attention_bf16_contiguous_sg", k_bf16_contiguous_subgroup}},
         {{"attention_bf16_reduce", k_bf16_reduce}, {"attention_bf16_reduce", k_bf16_reduce}}},
    };
    int d = 0;
    switch (t) {
        case DType::F32:
            d = 0;
            break;
        case DType::F16:
            d = 1;
            break;
        case DType::BF16:
            d = 2;
            break;
        default:
            throw Error(ErrorCode::Unsupported,
                        fmt::format("attention: no shader for dtype {}", static_cast<unsigned>(t)));
    }
    const Variant& v = variants[d][int(kind)][sub ? 1 : 0];
    return dev.pipeline(v.name, v.spirv, size);
}

// How one call runs: the workgroups along x (kv heads x slices of their query heads), the
// chunk length (0: no split) and the chunks a row is cut into.
struct Plan {
    PushConstants pc{};
    uint32_t groups_x = 0;
    uint32_t chunks = 1;
    uint64_t scratch_bytes = 0;
};

Plan plan(const Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
          uint32_t max_len) {
    const bool quant = is_quantized(s.kv.dtype);
    const uint32_t shared = quant ? kQuantSharedBytes : kSharedBytes;
    if (dev.properties().limits.maxComputeSharedMemorySize < shared)
        throw Error(ErrorCode::Unsupported,
                    fmt::format("attention: the shader needs {} bytes of shared memory, the "
                                "device offers {}",
                                shared, dev.properties().limits.maxComputeSharedMemorySize));
    Plan pl;
    PushConstants& pc = pl.pc;
    pc.q = query.address();
    pc.out = out.address();
    pc.q_heads = s.q_heads;
    pc.kv_heads = s.kv.num_kv_heads;
    pc.k_words = words(s.kv.head_dim, s.kv.dtype);
    pc.v_words = words(s.kv.v_head_dim, s.kv.dtype);
    pc.scale = s.scale;
    pc.tile = std::min(kTile, kKSharedWords / (pc.k_words + 1));
    const uint32_t per_kv = s.q_heads / s.kv.num_kv_heads;
    pc.group = std::min({per_kv, kMaxGroupHeads, kQFloats / s.kv.head_dim});
    const uint32_t slices = (per_kv + pc.group - 1) / pc.group;
    pl.groups_x = s.kv.num_kv_heads * slices;
    const uint64_t workgroups = uint64_t(pl.groups_x) * s.batch;
    uint64_t chunk = 0;
    const uint32_t forced = dev.attention_paths().chunk_tokens;
    if (forced == Device::kNoSplit) {
        chunk = 0;
    } else if (forced != 0) {
        chunk = forced;
    } else if (workgroups < kSplitBelow && max_len >= kMinSplitTokens) {
        const uint64_t want = (kTargetGroups + workgroups - 1) / workgroups;
        const uint64_t most = (max_len + kMinChunkTokens - 1) / kMinChunkTokens;
        const uint64_t splits = std::min(want, most);
        if (splits > 1) chunk = ((max_len + splits - 1) / splits + kTile - 1) / kTile * kTile;
    }
    if (chunk != 0 && max_len > 0) {
        chunk = std::max<uint64_t>(chunk, (max_len + kMaxGroups - 1) / kMaxGroups);
        pl.chunks = uint32_t((max_len + chunk - 1) / chunk);
    }
    if (chunk == 0 || pl.chunks <= 1 || max_len == 0) {
        pl.chunks = 1;
        pc.chunk = 0;
    } else {
        pc.chunk = uint32_t(chunk);
        // Partials are laid out for the reduction of the output's dtype (its words).
        pl.scratch_bytes = uint64_t(s.batch) * s.q_heads * pl.chunks *
                           (2 + 2 * uint64_t(words(s.kv.v_head_dim, s.io))) * 4;
    }
    if (quant) {
        pc.flags = shader_dtype_code(s.io) << 1;
        pc.k_scales = uint32_t(s.kv.scales_offset(false));  // check_attention_shape: fits
        pc.v_scales = uint32_t(s.kv.scales_offset(true));
    }
    return pl;
}

// The scratch buffer of a split plan, made before anything is uploaded or recorded so that a
// failed allocation leaves the batch untouched (null when not split).
std::shared_ptr<Buffer> make_scratch(Device& dev, Plan& pl) {
    if (pl.pc.chunk == 0) return nullptr;
    std::shared_ptr<Buffer> scratch = Buffer::create(dev, pl.scratch_bytes, MemoryKind::Tensor);
    pl.pc.scratch = scratch->address();
    return scratch;
}

// Records the attention dispatch and, when split, the reduction that reads scratch.
void run(Device& dev, const AttentionShape& s, Kind kind, const Plan& pl,
         const std::shared_ptr<Buffer>& scratch, std::initializer_list<Resource*> reads,
         Buffer& out) {
    const Device::Pipeline& pipe = pipeline(dev, s.kv.dtype, kind);
    const Device::Pipeline& reduce = pipeline(dev, s.io, Kind::Reduce);
    Batches& batches = dev.batches();
    VkCommandBuffer cmd = batches.record(reads, {scratch ? scratch.get() : &out});
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe.pipeline);
    vkCmdPushConstants(cmd, pipe.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(pl.pc), &pl.pc);
    vkCmdDispatch(cmd, pl.groups_x, s.batch, pl.chunks);
    ++dev.counters().dispatches;
    if (!scratch) return;
    PushConstants rc = pl.pc;
    rc.chunk = pl.chunks;                       // REDUCE: chunks per row
    rc.v_words = words(s.kv.v_head_dim, s.io);  // ... of output words
    cmd = batches.record({scratch.get()}, {&out});
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, reduce.pipeline);
    vkCmdPushConstants(cmd, reduce.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(rc), &rc);
    vkCmdDispatch(cmd, s.q_heads, s.batch, 1);
    ++dev.counters().dispatches;
}

}  // namespace

void check_attention_shape(const AttentionShape& s, const char* op) {
    if (s.kv.num_kv_heads == 0 || s.q_heads == 0 || s.q_heads % s.kv.num_kv_heads != 0)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: query has {} heads, not a multiple of the {} kv heads", op,
                                s.q_heads, s.kv.num_kv_heads));
    const bool quant = is_quantized(s.kv.dtype);
    if (!is_float_dtype(s.io) || (!quant && s.io != s.kv.dtype))
        throw Error(ErrorCode::Unsupported,
                    fmt::format("{}: the attention shader cannot read a {} query against {} K/V",
                                op, to_string(s.io), to_string(s.kv.dtype)));
    const uint64_t elem = dtype_size(s.kv.dtype);
    const uint32_t max_words = quant ? kQuantMaxWords : kMaxWords;
    for (uint32_t dim : {s.kv.head_dim, s.kv.v_head_dim}) {
        if (dim * elem % 4 != 0)
            throw Error(ErrorCode::Unsupported,
                        fmt::format("{}: the attention shader reads 32-bit words; head dim {} of "
                                    "{} is not a whole number of them (use {})",
                                    op, dim, to_string(s.kv.dtype),
                                    quant ? "a multiple of 4" : "an even head dim"));
        if (dim * elem / 4 > max_words)
            throw Error(ErrorCode::Unsupported,
                        fmt::format("{}: head dim {} of {} exceeds the shader's {} bytes a row", op,
                                    dim, to_string(s.kv.dtype), max_words * 4));
    }
    if (quant && std::max(s.kv.scales_offset(false), s.kv.scales_offset(true)) > UINT32_MAX)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("{}: a page of {} x {} rows exceeds the attention shader's 32-bit "
                                "scale offsets",
                                op, s.kv.num_kv_heads, s.kv.block_size));
    if (s.batch > kMaxGroups || s.q_heads > kMaxGroups)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("{}: {} rows x {} query heads exceed the dispatch limit of {}", op,
                                s.batch, s.q_heads, kMaxGroups));
}

void AttentionRows::pack_into(uint32_t* words, std::span<const uint32_t> indices) const noexcept {
    for (const auto* part : {&first_page, &length, &first_slot})
        words = std::copy(part->begin(), part->end(), words);
    std::copy(indices.begin(), indices.end(), words);
}

std::vector<uint32_t> AttentionRows::pack(std::span<const uint32_t> indices) const {
    std::vector<uint32_t> words(3 * first_page.size() + indices.size());
    pack_into(words.data(), indices);
    return words;
}

std::vector<uint32_t> pack_row_table(const CsrTable& table, uint32_t block_size) {
    const size_t batch = table.last_page_len.size();
    AttentionRows rows;
    rows.reserve(batch);
    for (size_t r = 0; r < batch; ++r) {
        const uint32_t n = table.indptr[r + 1] - table.indptr[r];
        rows.push(table.indptr[r],
                  n == 0 ? 0 : (n - 1) * block_size + table.last_page_len[r] - table.first_slot[r],
                  table.first_slot[r]);
    }
    return rows.pack(table.indices);
}

namespace {

// The paged plan's page numbers and the dispatch.
void run_paged(Device& dev, const AttentionShape& s, Plan& pl,
               const std::shared_ptr<Buffer>& scratch, Buffer& query, Buffer& out, PageSlabs& pages,
               uint32_t layer, Resource& table) {
    const PageFormat& lay = pages.format();
    pl.pc.pages = pages.addressing();
    pl.pc.k = lay.page_offset(layer, false);
    pl.pc.v = lay.page_offset(layer, true);
    bool quads = pl.pc.k_words % 4 == 0 && pl.pc.k % 16 == 0 && lay.block_bytes() % 16 == 0;
    for (const auto& slab : pages.slabs())
        quads = quads && slab->address() % 16 == 0;
    pl.pc.flags |= quads ? 1u : 0u;
    run(dev, s, Kind::Paged, pl, scratch, {&query, &pages, &table}, out);
}

}  // namespace

void record_paged_attention(Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
                            PageSlabs& pages, uint32_t layer, const CsrTable& table) {
    if (s.batch == 0) return;
    const std::vector<uint32_t> words = pack_row_table(table, pages.format().block_size);
    uint32_t max_len = 0;
    for (uint32_t r = 0; r < s.batch; ++r)
        max_len = std::max(max_len, words[s.batch + r]);
    Plan pl = plan(dev, s, query, out, max_len);
    const std::shared_ptr<Buffer> scratch = make_scratch(dev, pl);
    pl.pc.table = dev.batches().upload(words.data(), words.size() * sizeof(uint32_t));
    run_paged(dev, s, pl, scratch, query, out, pages, layer, pages);
}

void record_paged_attention(Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
                            PageSlabs& pages, uint32_t layer, Buffer& table, uint64_t table_offset,
                            uint32_t max_len) {
    if (s.batch == 0) return;
    Plan pl = plan(dev, s, query, out, max_len);
    const std::shared_ptr<Buffer> scratch = make_scratch(dev, pl);
    pl.pc.table = table.address() + table_offset;
    run_paged(dev, s, pl, scratch, query, out, pages, layer, table);
}

void record_contiguous_attention(Device& dev, const AttentionShape& s, Buffer& query, Buffer& out,
                                 Buffer& k, Buffer& v, uint32_t max_len,
                                 std::span<const uint32_t> lengths) {
    if (is_quantized(s.kv.dtype))
        throw Error(ErrorCode::Unsupported,
                    fmt::format("contiguous attention reads f32, f16 or bf16 K/V, not {}",
                                to_string(s.kv.dtype)));
    if (s.batch == 0) return;
    if (uint64_t(s.batch) * s.kv.num_kv_heads * max_len > UINT32_MAX)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("attention over {} rows x {} kv heads x {} tokens exceeds the "
                                "shader's 32-bit indexing",
                                s.batch, s.kv.num_kv_heads, max_len));
    uint32_t longest = 0;
    for (uint32_t n : lengths)
        longest = std::max(longest, n);
    Plan pl = plan(dev, s, query, out, longest);
    const std::shared_ptr<Buffer> scratch = make_scratch(dev, pl);
    pl.pc.k = k.address();
    pl.pc.v = v.address();
    pl.pc.table = dev.batches().upload(lengths.data(), lengths.size_bytes());
    pl.pc.max_len = max_len;
    pl.pc.flags = pl.pc.k_words % 4 == 0 && pl.pc.k % 16 == 0 ? 1u : 0u;
    run(dev, s, Kind::Contiguous, pl, scratch, {&query, &k, &v}, out);
}

}  // namespace pagedkv::detail
