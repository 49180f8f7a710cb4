// Page bytes through the pool's page store: a run of consecutive blocks inside one slab is one
// buffer range, read or written at once.
#include "cache/manager/page_bytes.hpp"

#include <fmt/format.h>

#include "cache/manager/pool_state.hpp"
#include "pagedkv/error.hpp"
#include "shaders/vulkan/batch.hpp"

namespace pagedkv::detail {

namespace {

void check_blocks(const PoolState& ps, std::span<const uint32_t> blocks, const char* op) {
    const uint64_t n = ps.pages->num_blocks();
    for (uint32_t b : blocks)
        if (b >= n)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: block {} out of range, the pool has {}", op, b, n));
}

// Every write recorded so far has finished (refusing pages a caller's unfinished command
// buffer writes): slabs are not tracked one by one, PageSlabs is.
void wait_for_writes(const PoolState& ps) {
    ps.device->batches().require_finished(ps.pages->last_write_serial);
    ps.device->synchronize();
}

}  // namespace

std::vector<uint8_t> read_pages(const PoolState& ps, std::span<const uint32_t> blocks) {
    check_blocks(ps, blocks, "read_pages");
    const uint64_t bb = ps.format.block_bytes();
    std::vector<uint8_t> out(blocks.size() * bb);
    if (blocks.empty()) return out;
    wait_for_writes(ps);
    const PageSlabs& pages = *ps.pages;
    pages.for_each_run(blocks, [&](uint32_t first, size_t index, size_t count) {
        pages.slab_of(first).read(out.data() + index * bb, count * bb, pages.offset_of(first));
    });
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
    const PageSlabs& pages = *ps.pages;
    pages.for_each_run(blocks, [&](uint32_t first, size_t index, size_t count) {
        pages.slab_of(first).write(bytes.data() + index * bb, count * bb, pages.offset_of(first));
    });
}

std::vector<std::span<const uint8_t>> mapped_pages(const PoolState& ps,
                                                   std::span<const uint32_t> blocks) {
    check_blocks(ps, blocks, "mapped_pages");
    std::vector<std::span<const uint8_t>> out;
    const PageSlabs& pages = *ps.pages;
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
