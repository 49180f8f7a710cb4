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

using Lock = detail::ManagerLock;

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
    // Spilled prefix pages give their host blocks up (each holds one nobody else does) before
    // swapped-out sequences go short; a swap_out that would fail anyway drops none.
    if (out && ps.host_prefix && fresh_needed <= to.available_blocks() + ps.host_prefix->size())
        while (fresh_needed > to.available_blocks() && ps.host_prefix->drop_oldest()) {
        }
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

// ---- Prefix pages spilled to the host tier

namespace detail {

HostPrefix::HostPrefix(PoolState& ps) : ps_(ps) {
    if (ps_.prefix) ps_.prefix->set_spill_listener(this);
}

HostPrefix::~HostPrefix() {
    if (ps_.prefix) ps_.prefix->set_spill_listener(nullptr);
}

void HostPrefix::spilling(BlockId b, uint64_t hash, uint64_t parent_hash, uint64_t salt,
                          std::span<const int32_t> tokens) noexcept {
    if (!ps_.host_allocator) return;
    try {
        if (by_hash_.count(hash)) {  // this page (or a colliding one) is on the host already
            find(hash, parent_hash, salt, tokens);
            return;
        }
        BlockAllocator& host = *ps_.host_allocator;
        if (host.available_blocks() == 0 && !drop_oldest()) return;  // swapped sequences win
        Entry e{parent_hash,
                salt,
                std::vector<int32_t>(tokens.begin(), tokens.end()),
                BlockTable(host),
                {}};
        std::vector<BlockId> fresh;
        host.allocate(1, fresh);
        e.table.adopt_back(fresh);  // owns it at once: a failure below gives it back
        const uint32_t h = index(fresh[0]);
        ps_.links.unlink_host(h);  // a fresh host block holds no swapped page's bytes
        // Recorded now, inside allocate(): before the page's new owner records its writes
        // (the copy marks the device pages written, so those wait for it).
        const std::pair<uint32_t, uint32_t> copy{index(b), h};
        for (const Shard& sh : ps_.shards)  // each device keeps its heads
            record_tier_copies(*sh.device, *sh.pages, *sh.host_pages, std::span(&copy, 1));
        lru_.push_back(hash);
        try {
            e.lru = std::prev(lru_.end());
            by_hash_.emplace(hash, std::move(e));
        } catch (...) {
            lru_.pop_back();
            throw;
        }
        ++spilled_;
    } catch (...) {  // best effort: the page is only not kept
    }
}

int64_t HostPrefix::find(uint64_t hash, uint64_t parent_hash, uint64_t salt,
                         std::span<const int32_t> tokens) noexcept {
    const auto it = by_hash_.find(hash);
    if (it == by_hash_.end()) return -1;
    const Entry& e = it->second;
    if (e.parent_hash != parent_hash || e.salt != salt || !std::ranges::equal(e.tokens, tokens))
        return -1;  // a collision never hands out someone else's K/V
    lru_.splice(lru_.end(), lru_, e.lru);
    return int64_t(index(e.table[0]));
}

bool HostPrefix::drop_oldest() noexcept {
    if (lru_.empty()) return false;
    by_hash_.erase(lru_.front());  // its table gives the host block back
    lru_.pop_front();
    ++dropped_;
    return true;
}

void HostPrefix::clear() noexcept {
    by_hash_.clear();
    lru_.clear();
}

std::string HostPrefix::check() const {
    if (lru_.size() != by_hash_.size())
        return fmt::format("host prefix: {} pages but {} in its LRU", by_hash_.size(), lru_.size());
    if (!ps_.host_allocator && !by_hash_.empty()) return "host prefix: pages without a host tier";
    for (const uint64_t& h : lru_) {
        const auto it = by_hash_.find(h);
        if (it == by_hash_.end()) return fmt::format("host prefix: LRU names unknown page {}", h);
        const Entry& e = it->second;
        if (&*e.lru != &h) return fmt::format("host prefix: page {} is in its LRU twice", h);
        if (e.table.size() != 1 || &e.table.allocator() != ps_.host_allocator.get())
            return fmt::format("host prefix: page {} holds {} host blocks", h, e.table.size());
        const uint32_t b = index(e.table[0]);
        if (b >= ps_.host_allocator->num_blocks())
            return fmt::format("host prefix: page {} holds host block {}, out of range", h, b);
        if (ps_.host_allocator->refcount(e.table[0]) != 1)
            return fmt::format(
                "host prefix: host block {} of a spilled page has {} references (a "
                "swapped-out sequence holds it too)",
                b, ps_.host_allocator->refcount(e.table[0]));
        if (ps_.links.device_of(b) >= 0)
            return fmt::format(
                "host prefix: host block {} of a spilled page is linked to "
                "device block {}",
                b, ps_.links.device_of(b));
        if (e.tokens.size() != ps_.config.block_size)
            return fmt::format("host prefix: page {} has {} tokens", h, e.tokens.size());
    }
    if (by_hash_.size() > ps_.host_allocator->counters().used_blocks)
        return fmt::format("host prefix: {} pages but {} host blocks in use", by_hash_.size(),
                           ps_.host_allocator->counters().used_blocks);
    return {};
}

size_t hits_from_host(ManagerState& m, BlockTable& table, std::span<const int32_t> prompt,
                      uint64_t salt, size_t max_pages) noexcept {
    PoolState& ps = *m.ps;
    HostPrefix* hp = ps.host_prefix.get();
    if (!hp || !m.index) return 0;
    const uint32_t bs = ps.config.block_size;
    size_t added = 0;
    try {
        table.reserve(max_pages);
        while (table.size() < max_pages) {
            const size_t k = table.size();
            // A parent is indexed before its child: the chain continues from an indexed page.
            if (k > 0 && !m.index->contains(table[k - 1])) break;
            const uint32_t parent = k == 0 ? PrefixEntry::kNoParent : index(table[k - 1]);
            const uint64_t ph = k == 0 ? PrefixIndex::kRootHash : m.index->hash(table[k - 1]);
            const std::span<const int32_t> tokens = prompt.subspan(k * bs, bs);
            const uint64_t h = m.index->page_hash(ph, salt, tokens);
            if (hp->find(h, ph, salt, tokens) < 0) break;
            if (ps.allocator.available_blocks() == 0) break;
            std::vector<BlockId> fresh;
            ps.allocator.allocate(1, fresh);  // may evict (and spill) other pages
            const BlockId d = fresh[0];
            try {
                const int64_t hb = hp->find(h, ph, salt, tokens);  // a spill may have dropped it
                if (hb < 0) {
                    ps.allocator.release(d);
                    break;
                }
                ps.links.unlink_device(index(d));  // a fresh page holds no host copy's bytes
                if (m.index->insert(d, parent, salt, tokens).what != PrefixIndex::Insert::Added) {
                    ps.allocator.release(d);
                    break;
                }
                const std::pair<uint32_t, uint32_t> copy{uint32_t(hb), index(d)};
                for (const Shard& sh : ps.shards)
                    record_tier_copies(*sh.device, *sh.host_pages, *sh.pages, std::span(&copy, 1));
            } catch (...) {
                if (m.index->contains(d)) m.index->remove(d);
                ps.allocator.release(d);
                break;
            }
            table.adopt_back(std::span(&d, 1));  // reserved: cannot fail
            ++added;
        }
    } catch (...) {  // best effort: the lookup stops here
    }
    return added;
}

}  // namespace detail

void KVManager::swap_out(SeqId seq) {
    ManagerState& m = *state_;
    Lock l(m);
    m.ps->refuse_hybrid("swap_out");
    try {
        move_pages(m, seq, movable(m, seq, false, "swap_out"), true, "swap_out");
    } catch (const std::bad_alloc&) {
        throw Error(ErrorCode::OutOfMemory, "swap_out: out of host memory");
    }
}

void KVManager::swap_in(SeqId seq) {
    ManagerState& m = *state_;
    Lock l(m);
    m.ps->refuse_hybrid("swap_in");
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
