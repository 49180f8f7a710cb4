#include "shaders/kernels/row_copy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"
#include "shaders/vulkan/gpu_timer.hpp"

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

// Params of copy_rows.comp.
struct PushConstants {
    uint64_t tensor;
    uint64_t entries;
    uint64_t tensor2;
    uint64_t page_offset;
    uint64_t page_offset2;
    PageAddressing pages;
    uint32_t num_entries;
    uint32_t heads;
    uint32_t row_words;
    uint32_t head_stride;
    uint32_t gather;
    uint32_t chunk_words;
    uint32_t chunks;
    uint32_t units;
    uint32_t chunk_shift;
    uint32_t unit_shift;
    uint32_t block_shift;
};
static_assert(sizeof(PushConstants) <= 128, "push constants must fit the guaranteed 128 bytes");

constexpr uint32_t kMaxGroups = 65535;
constexpr uint32_t kNoShift = 0xFFFFFFFFu;

uint32_t log2_or_none(uint32_t v) {
    if (v == 0 || (v & (v - 1)) != 0) return kNoShift;
    uint32_t s = 0;
    while ((1u << s) < v)
        ++s;
    return s;
}

}  // namespace

uint64_t entries_address(Batches& batches, std::span<const RowEntry> entries,
                         Buffer* entries_buffer, uint64_t entries_offset) {
    if (!entries_buffer) return batches.upload(entries.data(), entries.size_bytes());
    batches.keep_alive(entries_buffer->shared_from_this());
    return entries_buffer->address() + entries_offset;
}

VkCommandBuffer record_rows(Batches& batches, PageSlabs& pages, Buffer* tensor, Buffer* tensor2,
                            bool gather) {
    if (gather)
        return tensor2 ? batches.record({&pages}, {tensor, tensor2})
                       : batches.record({&pages}, {tensor});
    return tensor2 ? batches.record({tensor, tensor2}, {&pages})
                   : batches.record({tensor}, {&pages});
}

void record_row_copy_shader(Device& dev, PageSlabs& pages, const RowCopy& op) {
    if (op.entries.empty() || op.heads == 0 || op.row_bytes == 0) return;
    const PageFormat& layout = pages.format();
    // The widest word that divides every stride keeps the shader's loads aligned.
    // (A wrapped tensor may start at any multiple of 4 bytes into its VkBuffer.)
    uint64_t word = 16;
    for (uint64_t v : {op.row_bytes, op.page_offset, op.page_offset2, layout.block_bytes(),
                       op.tensor->offset(), op.tensor2 ? op.tensor2->offset() : 0})
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
    const uint32_t members = op.tensor2 ? 2 : 1;
    const uint64_t total = uint64_t(op.entries.size()) * members * op.heads * (op.row_bytes / word);
    if (total > UINT32_MAX)
        throw Error(
            ErrorCode::CapacityExceeded,
            fmt::format("one copy of {} words exceeds the shader's 32-bit indexing", total));

    Batches& batches = dev.batches();
    PushConstants pc{};
    pc.entries = entries_address(batches, op.entries, op.entries_buffer, op.entries_offset);
    pc.tensor = op.tensor->address();
    pc.tensor2 = op.tensor2 ? op.tensor2->address() : 0;
    pc.page_offset2 = op.page_offset2;
    pc.pages = pages.addressing();
    pc.num_entries = uint32_t(op.entries.size());
    pc.heads = op.heads;
    pc.row_words = uint32_t(op.row_bytes / word);
    pc.head_stride = op.head_stride;
    pc.page_offset = op.page_offset;
    pc.gather = op.gather ? 1 : 0;
    // One word per thread (coalesced on GPUs) or a whole row per thread (CPU SIMD lanes).
    pc.chunk_words = dev.byte_paths().whole_rows ? pc.row_words : 1;
    pc.chunks = pc.row_words / pc.chunk_words;
    pc.units = members * op.heads * pc.chunks;
    pc.chunk_shift = log2_or_none(pc.chunks);
    pc.unit_shift = log2_or_none(pc.units);
    pc.block_shift = log2_or_none(layout.block_size);
    const uint64_t threads = uint64_t(op.entries.size()) * pc.units;

    VkCommandBuffer cmd = record_rows(batches, pages, op.tensor, op.tensor2, op.gather);
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe->pipeline);
    vkCmdPushConstants(cmd, pipe->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(pc), &pc);
    const uint64_t groups =
        std::min<uint64_t>((threads + dev.workgroup_size() - 1) / dev.workgroup_size(), kMaxGroups);
    vkCmdDispatch(cmd, uint32_t(groups), 1, 1);
    ++dev.counters().dispatches;
}

void record_row_copy_commands(Device& dev, PageSlabs& pages, const RowCopy& op) {
    if (op.entries.empty() || op.heads == 0 || op.row_bytes == 0) return;
    if (op.row_bytes % 4 != 0)
        throw Error(ErrorCode::Unsupported,
                    fmt::format("copy commands need rows of whole 4-byte words, got {} bytes",
                                op.row_bytes));
    const PageFormat& layout = pages.format();
    const uint32_t bs = layout.block_size;
    // Runs of entries whose tensor rows and page slots both advance by one inside one page:
    // each becomes one region per head in head-major pages (a head's tokens are adjacent there
    // and in the tensor), one per (token, head) in token-major pages, merged below where the
    // tensor's heads are adjacent too.
    struct Run {
        uint32_t row, slot, len;
    };
    std::vector<Run> runs;
    runs.reserve(op.entries.size());
    for (const RowEntry& e : op.entries) {
        if (!runs.empty()) {
            Run& r = runs.back();
            const bool rows_follow = e.tensor_row == kNone
                                         ? r.row == kNone
                                         : r.row != kNone && e.tensor_row == r.row + r.len;
            const bool slots_follow = e.page_slot == kNone
                                          ? r.slot == kNone
                                          : r.slot != kNone && e.page_slot == r.slot + r.len &&
                                                r.slot / bs == e.page_slot / bs;
            if (rows_follow && slots_follow) {
                ++r.len;
                continue;
            }
        }
        runs.push_back({e.tensor_row, e.page_slot, 1});
    }
    // Regions keyed by (tensor, slab), the first tensor's first: one copy command per key.
    struct Keyed {
        uint64_t key;  // member << 32 | slab
        VkBufferCopy region;
    };
    std::vector<Keyed> regions;
    regions.reserve(runs.size() * op.heads * (op.tensor2 ? 2 : 1));
    struct Fill {
        VkBuffer buffer;
        VkDeviceSize offset, size;
    };
    std::vector<Fill> fills;
    const uint64_t rb = op.row_bytes;
    const bool token_major = layout.layout == PageLayout::TokenMajor;
    const std::pair<Buffer*, uint64_t> members[] = {{op.tensor, op.page_offset},
                                                    {op.tensor2, op.page_offset2}};
    // Adds the region of `size` bytes between tensor byte t and slab byte p of one member. A
    // region that continues the previous one on both sides extends it: one region wherever the
    // layouts make the bytes contiguous (head-major: the next head of a whole page when the
    // tensor's heads are a page apart too, or the next run; token-major: the next head of a
    // token when the tensor's heads are adjacent, as in a decode step or an NHD tensor).
    auto add = [&](int m, uint32_t block, uint64_t t, uint64_t p, uint64_t size) {
        const Keyed k{uint64_t(m) << 32 | (block >> pages.slab_shift()),
                      op.gather ? VkBufferCopy{p, t, size} : VkBufferCopy{t, p, size}};
        if (!regions.empty()) {
            Keyed& last = regions.back();
            if (last.key == k.key &&
                last.region.srcOffset + last.region.size == k.region.srcOffset &&
                last.region.dstOffset + last.region.size == k.region.dstOffset) {
                last.region.size += k.region.size;
                return;
            }
        }
        regions.push_back(k);
    };
    for (int m = 0; m < 2; ++m) {
        const auto [tensor, page_offset] = members[m];
        if (!tensor) continue;
        for (const Run& r : runs) {
            const uint64_t base = tensor->offset();  // (a lambda may not name a binding in C++20)
            auto tensor_at = [&](uint32_t i, uint32_t h) {
                return base + (uint64_t(r.row) + i + uint64_t(h) * op.head_stride) * rb;
            };
            if (r.slot == kNone) {  // gather past a row's end: zero padding
                for (uint32_t h = 0; h < op.heads; ++h)
                    fills.push_back({tensor->handle(), tensor_at(0, h), uint64_t(r.len) * rb});
                continue;
            }
            const uint32_t block = r.slot / bs, slot = r.slot % bs;
            const uint64_t page = pages.offset_of(block) + page_offset;
            if (r.row == kNone) {  // a hole in a row: zeros into the page
                VkBuffer slab = pages.slab_of(block).handle();
                if (token_major)  // a token's heads are adjacent
                    for (uint32_t i = 0; i < r.len; ++i)
                        fills.push_back({slab, page + layout.row_offset(slot + i, 0, rb),
                                         uint64_t(op.heads) * rb});
                else  // a head's tokens are
                    for (uint32_t h = 0; h < op.heads; ++h)
                        fills.push_back(
                            {slab, page + layout.row_offset(slot, h, rb), uint64_t(r.len) * rb});
                continue;
            }
            if (token_major) {
                for (uint32_t i = 0; i < r.len; ++i)
                    for (uint32_t h = 0; h < op.heads; ++h)
                        add(m, block, tensor_at(i, h), page + layout.row_offset(slot + i, h, rb),
                            rb);
            } else {
                for (uint32_t h = 0; h < op.heads; ++h)
                    add(m, block, tensor_at(0, h), page + layout.row_offset(slot, h, rb),
                        uint64_t(r.len) * rb);
            }
        }
    }
    dev.counters().copy_regions += regions.size();
    Batches& batches = dev.batches();
    VkCommandBuffer cmd = record_rows(batches, pages, op.tensor, op.tensor2, op.gather);
    // Regions go in chunks: the validation layer checks the regions of one call against each
    // other, so one call with thousands of regions costs it quadratic time.
    constexpr size_t kRegionsPerCall = 128;
    auto by_key = [](const Keyed& a, const Keyed& b) { return a.key < b.key; };
    if (!std::is_sorted(regions.begin(), regions.end(), by_key))
        std::stable_sort(regions.begin(), regions.end(), by_key);
    std::vector<VkBufferCopy> call;
    call.reserve(kRegionsPerCall);
    for (size_t i = 0; i < regions.size();) {
        const uint64_t key = regions[i].key;
        VkBuffer s = pages.slabs()[uint32_t(key)]->handle();
        VkBuffer tensor = members[key >> 32].first->handle();
        VkBuffer src = op.gather ? s : tensor;
        VkBuffer dst = op.gather ? tensor : s;
        call.clear();
        for (; i < regions.size() && regions[i].key == key; ++i) {
            call.push_back(regions[i].region);
            if (call.size() == kRegionsPerCall) {
                vkCmdCopyBuffer(cmd, src, dst, uint32_t(call.size()), call.data());
                ++dev.counters().copies;
                call.clear();
            }
        }
        if (!call.empty()) {
            vkCmdCopyBuffer(cmd, src, dst, uint32_t(call.size()), call.data());
            ++dev.counters().copies;
        }
    }
    for (const Fill& f : fills) {
        vkCmdFillBuffer(cmd, f.buffer, f.offset, f.size, 0);
        ++dev.counters().copies;
    }
}

void record_row_copy(Device& dev, PageSlabs& pages, const RowCopy& op) {
    const BytePath path = op.gather ? dev.byte_paths().gather : dev.byte_paths().scatter;
    if (path == BytePath::CopyCommands && op.row_bytes % 4 == 0)
        record_row_copy_commands(dev, pages, op);
    else
        record_row_copy_shader(dev, pages, op);
}

}  // namespace pagedkv::detail
