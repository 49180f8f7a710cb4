// Records the copy_rows shader: scatter (tensor rows -> pages) or gather (pages -> tensor rows)
// for every sequence of a step in one dispatch. The caller decides which rows go where (cache
// policy); this only moves bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "shaders/kernels/page_slabs.hpp"
#include "shaders/vulkan/buffer.hpp"

namespace pagedkv::detail {

class Device;

// One (token) row of a tensor and the page slot it pairs with.
struct RowEntry {
    uint32_t tensor_row;  // b * heads * seq + s: the row of head 0 in a (B, H, S, D) tensor,
                          // or kNone (scatter writes zeros into the page slot)
    uint32_t page_slot;   // block * block_size + slot, or kNone (gather writes zeros)
};
inline constexpr uint32_t kNone = 0xFFFFFFFFu;

struct RowCopy {
    Buffer* tensor = nullptr;
    std::span<const RowEntry> entries;
    uint32_t heads = 0;
    uint64_t row_bytes = 0;    // bytes of one (token, head) row
    uint32_t head_stride = 0;  // tensor rows between heads (= the tensor's seq length)
    uint64_t page_offset = 0;  // bytes from a block's start to the layer's K or V page
    bool gather = false;
    // Optional second tensor moved by the same entries to/from page_offset2 (a layer's V next
    // to its K, when both have rows of row_bytes): one dispatch and no barrier between them.
    Buffer* tensor2 = nullptr;
    uint64_t page_offset2 = 0;
    // The entries already in device-readable memory (a step's, written once for every layer):
    // the shader reads them there instead of an upload of `entries` (which the copy-command
    // path still reads on the host). Kept alive until the batch ends.
    Buffer* entries_buffer = nullptr;
    uint64_t entries_offset = 0;
};

class Batches;

// What the row kernels share: the device address of the entries (already in device-readable
// memory: kept alive until the batch ends; else uploaded now), and the command buffer of a copy
// between tensors and pages (a scatter reads the tensors and writes the pages, a gather the
// reverse).
uint64_t entries_address(Batches& batches, std::span<const RowEntry> entries,
                         Buffer* entries_buffer, uint64_t entries_offset);
VkCommandBuffer record_rows(Batches& batches, PageSlabs& pages, Buffer* tensor, Buffer* tensor2,
                            bool gather);

// Records op on the device's chosen byte path (shader, or copy commands where the layout
// allows: rows of a whole number of 4-byte words).
void record_row_copy(Device& dev, PageSlabs& pages, const RowCopy& op);
// The two paths, for calibration and tests.
void record_row_copy_shader(Device& dev, PageSlabs& pages, const RowCopy& op);
void record_row_copy_commands(Device& dev, PageSlabs& pages, const RowCopy& op);

}  // namespace pagedkv::detail
