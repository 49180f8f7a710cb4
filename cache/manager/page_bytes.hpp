// Page bytes: the one way host code reads and writes the contents of a pool's pages, in the
// canonical single-device page layout (PageFormat), whatever store holds them. Snapshots and
// sequence transfer both go through here, so a pool split over several devices only has to
// assemble (and split) the canonical bytes in these functions.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace pagedkv::detail {

struct PoolState;

// The bytes of these blocks, block_bytes() each, in the order given (any order, repeats
// allowed). Waits for the GPU work that writes pages; throws InvalidArgument while a caller's
// command buffer that writes them is still recording or unfinished.
std::vector<uint8_t> read_pages(const PoolState& ps, std::span<const uint32_t> blocks);

// Writes block_bytes() bytes into each block, in the order given. Waits for all GPU work on
// the pool first (a page just given back may still be read by a batch in flight).
void write_pages(PoolState& ps, std::span<const uint32_t> blocks, std::span<const uint8_t> bytes);

// Where the host can read these blocks' bytes in place (a pool whose pages live in
// host-visible memory, on one device): one span per run of consecutive blocks, in the order
// given, after waiting as read_pages does. Empty when the pages are not host-visible (then
// read_pages copies them out through a staging buffer). The spans stay valid while the caller
// holds the device's call lock and nothing writes the pages.
std::vector<std::span<const uint8_t>> mapped_pages(const PoolState& ps,
                                                   std::span<const uint32_t> blocks);

}  // namespace pagedkv::detail
