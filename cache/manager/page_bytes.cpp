// Page bytes through the pool's page store: a run of consecutive blocks inside one slab is one
// buffer range, read or written at once.
#include "cache/manager/page_bytes.hpp"

#include <fmt/format.h>

#include "cache/manager/pool_state.hpp"
#include "cache/manager/shards.hpp"
#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"

namespace pagedkv::detail {

namespace {

void check_blocks(const PoolState& ps, std::span<const uint32_t> blocks, const char* op) {
    const uint64_t n = ps.config.num_blocks;
    for (uint32_t b : blocks)
        if (b >= n)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: block {} out of range, the pool has {}", op, b, n));
}

// Every write recorded so far has finished, on every device (refusing pages a caller's
// unfinished command buffer writes): slabs are not tracked one by one, PageSlabs is.
void wait_for_writes(const PoolState& ps) {
    for (const Shard& sh : ps.shards) {
        sh.device->batches().require_finished(sh.pages->last_write_serial);
        sh.device->synchronize();
    }
}

}  // namespace

std::vector<uint8_t> read_pages(const PoolState& ps, std::span<const uint32_t> blocks) {
    check_blocks(ps, blocks, "read_pages");
    const uint64_t bb = ps.format.block_bytes();
    std::vector<uint8_t> out(blocks.size() * bb);
    if (blocks.empty()) return out;
    wait_for_writes(ps);
    read_blocks(ps, blocks, out.data());  // each device's heads into the one-device layout
    return out;
}

void write_pages(PoolState& ps, std::span<const uint32_t> blocks, std::span<const uint8_t> bytes) {
    check_blocks(ps, blocks, "write_pages");
    const uint64_t bb = ps.format.block_bytes();
    if (bytes.size() != blocks.size() * bb)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("write_pages: {} bytes for {} blocks of {} bytes", bytes.size(),
                                blocks.size(), bb));
    if (blocks.empty()) return;
    wait_for_writes(ps);
    write_blocks(ps, blocks, bytes.data());  // each device gets its heads
}

std::vector<std::span<const uint8_t>> mapped_pages(const PoolState& ps,
                                                   std::span<const uint32_t> blocks) {
    check_blocks(ps, blocks, "mapped_pages");
    std::vector<std::span<const uint8_t>> out;
    if (ps.sharded()) return out;  // the one-device layout exists only once assembled
    const PageSlabs& pages = *ps.shards[0].pages;
    for (const auto& slab : pages.slabs())
        if (!slab->mapped()) return out;
    if (blocks.empty()) return out;
    wait_for_writes(ps);
    const uint64_t bb = ps.format.block_bytes();
    pages.for_each_run(blocks, [&](uint32_t first, size_t, size_t count) {
        const auto* base = static_cast<const uint8_t*>(pages.slab_of(first).mapped());
        out.emplace_back(base + pages.offset_of(first), count * bb);
    });
    return out;
}

}  // namespace pagedkv::detail
