// KVManager's host tier: swap_out / swap_in move a sequence's pages between the pool's device
// pages and its host-visible pages (each Shard::host_pages, one BlockAllocator). A swapped
// sequence keeps its Sequence (lengths, track) with a table over the host allocator. A page
// that sequences share crosses tiers once: TierLinks remembers which device and host blocks
// hold the same bytes. The bytes move by record_tier_copies only.
#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "cache/manager/manager_state.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/kv_manager.hpp"
#include "shaders/kernels/tier_copy.hpp"

namespace pagedkv {

using detail::ManagerState;
using detail::Sequence;

namespace {

Error invalid(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

struct Lock : detail::PoolLock {
    explicit Lock(const ManagerState& m) : detail::PoolLock(*m.ps, "KVManager", "the managers") {}
};

// The sequence, checked for a move between tiers: a host tier exists, the sequence is live, on
// the tier it leaves (`swapped` says which), and in no step that has not ended.
Sequence& movable(ManagerState& m, SeqId id, bool swapped, const char* op) {
    if (!m.ps->host_allocator)
        throw invalid(
            fmt::format("{}: the pool has no host tier (PoolConfig::num_host_blocks is 0)", op));
    Sequence* s = m.seqs.find(id);
    if (!s) throw invalid(fmt::format("{}: unknown sequence {}", op, id));
    if (detail::is_swapped(m, *s) != swapped)
        throw invalid(swapped ? fmt::format("{}: sequence {} is not swapped out", op, id)
                              : fmt::format("{}: sequence {} is already swapped out", op, id));
    if (m.stepping.count(id))
        throw invalid(
            fmt::format("{}: sequence {} is in a step that has not ended (end_step or "
                        "destroy the Step first)",
                        op, id));
    return *s;
}

// Pages holding the sequence's tokens (the reservation past them is not moved).
size_t used_pages(const ManagerState& m, const Sequence& s) {
    const uint32_t bs = m.ps->config.block_size;
    return std::min(s.table.size(), size_t((uint64_t(detail::length_of(s)) + bs - 1) / bs));
}

// Moves the first `used` pages of s to the allocator `to` (the other tier): reuses a linked
// block where the bytes are already there, else takes a fresh block and records a copy.
// All or nothing: OutOfBlocks before anything changes when `to` lacks the fresh blocks.
void move_pages(ManagerState& m, SeqId id, Sequence& s, bool out, const char* op) {
    detail::PoolState& ps = *m.ps;
    BlockAllocator& to = out ? *ps.host_allocator : ps.allocator;
    const size_t used = used_pages(m, s);
    auto linked = [&](uint32_t b) { return out ? ps.links.host_of(b) : ps.links.device_of(b); };
    uint64_t fresh_needed = 0;
    for (size_t i = 0; i < used; ++i)
        if (linked(index(s.table[i])) < 0) ++fresh_needed;
    if (fresh_needed > to.available_blocks())
        throw Error(
            ErrorCode::OutOfBlocks,
            fmt::format("{}: sequence {} needs {} {} pages ({} of its {} pages are "
                        "already there), the {} has {} free{}",
                        op, id, fresh_needed, out ? "host" : "device", used - fresh_needed, used,
                        out ? "host tier" : "pool", to.available_blocks(),
                        !out && to.counters().cached_blocks ? " (evictable ones included)" : ""));
    // Everything that can fail before the sequence changes: the new table, the fresh blocks
    // (the table owns them at once), the copies and the links.
    BlockTable table(to);
    table.reserve(used);
    std::vector<BlockId> fresh;
    fresh.reserve(fresh_needed);
    std::vector<std::pair<uint32_t, uint32_t>> copies;  // (source, destination)
    copies.reserve(fresh_needed);
    to.allocate(fresh_needed, fresh);
    size_t next = 0;
    for (size_t i = 0; i < used; ++i) {
        const uint32_t from = index(s.table[i]);
        const int64_t there = linked(from);
        if (there >= 0) {
            const BlockId b{uint32_t(there)};
            to.retain(b);
            table.adopt_back(std::span(&b, 1));
        } else {
            const BlockId b = fresh[next++];
            table.adopt_back(std::span(&b, 1));
            copies.emplace_back(from, index(b));
        }
    }
    if (!out)  // fresh device pages from the free list or evicted: no stale link may name them
        for (BlockId b : fresh)
            ps.links.unlink_device(index(b));
    for (const detail::Shard& sh : ps.shards) {  // each device moves its heads
        if (out)
            detail::record_tier_copies(*sh.device, *sh.pages, *sh.host_pages, copies);
        else
            detail::record_tier_copies(*sh.device, *sh.host_pages, *sh.pages, copies);
    }
    for (auto [from, dst] : copies) {
        try {
            if (out)
                ps.links.link(from, dst);
            else
                ps.links.link(dst, from);
        } catch (...) {  // out of host memory: that page is only copied again if shared
        }
    }
    // Nothing below fails: the sequence's old table gives its pages back.
    s.table = std::move(table);
    (out ? ps.pages_swapped_out : ps.pages_swapped_in) += copies.size();
    detail::prune_links(m);
    ++m.generation;
}

}  // namespace

void KVManager::swap_out(SeqId seq) {
    ManagerState& m = *state_;
    Lock l(m);
    try {
        move_pages(m, seq, movable(m, seq, false, "swap_out"), true, "swap_out");
    } catch (const std::bad_alloc&) {
        throw Error(ErrorCode::OutOfMemory, "swap_out: out of host memory");
    }
}

void KVManager::swap_in(SeqId seq) {
    ManagerState& m = *state_;
    Lock l(m);
    try {
        move_pages(m, seq, movable(m, seq, true, "swap_in"), false, "swap_in");
    } catch (const std::bad_alloc&) {
        throw Error(ErrorCode::OutOfMemory, "swap_in: out of host memory");
    }
}

bool KVManager::is_swapped(SeqId seq) const {
    const ManagerState& m = *state_;
    Lock l(m);
    const Sequence* s = m.seqs.find(seq);
    if (!s) throw invalid(fmt::format("is_swapped: unknown sequence {}", seq));
    return detail::is_swapped(m, *s);
}

}  // namespace pagedkv
