#include "cache/snapshot/detailed_stats.hpp"

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <utility>

namespace pagedkv {

std::vector<uint32_t> slots_in_use(const SnapshotData& s) {
    const uint64_t bs = s.layout.block_size;
    // Intervals of covered slots per block, merged at the end: rows sharing a page, and the
    // layers of one row, cover the same slots.
    std::unordered_map<uint32_t, std::vector<std::pair<uint64_t, uint64_t>>> covered;
    // Layer groups: each layer's tokens are in its group's table (checked data only).
    const LayerGroups groups = s.groups();
    for (const SnapshotCache& c : s.caches)
        for (size_t l = 0; l < c.len.size(); ++l)
            for (size_t row = 0; row < c.rows.size() && row < c.len[l].size(); ++row) {
                const int64_t len = c.len[l][row];
                if (len <= 0) continue;
                const uint32_t g = l < groups.group_of.size() ? groups.group_of[l] : 0;
                if (g > 0 && (row >= c.more.size() || g - 1 >= c.more[row].size())) continue;
                const std::vector<BlockId>& table = c.table(row, g);
                const uint64_t first = uint64_t(c.start[l][row]), end = first + uint64_t(len);
                for (uint64_t bi = first / bs; bi * bs < end && bi < table.size(); ++bi) {
                    const uint64_t lo = std::max(first, bi * bs) - bi * bs;
                    const uint64_t hi = std::min(end, (bi + 1) * bs) - bi * bs;
                    covered[index(table[bi])].emplace_back(lo, hi);
                }
            }
    std::vector<uint32_t> out(s.allocator.refcounts.size(), 0);
    for (auto& [block, iv] : covered) {
        std::sort(iv.begin(), iv.end());
        uint64_t reach = 0;
        for (auto [lo, hi] : iv) {
            lo = std::max(lo, reach);
            if (hi > lo && block < out.size()) out[block] += uint32_t(hi - lo);
            reach = std::max(reach, hi);
        }
    }
    return out;
}

DetailedStats compute_detailed_stats(const SnapshotData& s) {
    DetailedStats d;
    const auto& rc = s.allocator.refcounts;
    const uint64_t bs = s.layout.block_size;
    d.num_blocks = rc.size();
    d.peak_used_blocks = s.allocator.peak_used_blocks;
    std::vector<uint8_t> cached(rc.size(), 0);
    for (BlockId b : s.allocator.cached)
        if (index(b) < cached.size()) cached[index(b)] = 1;
    d.prefix_entries = s.prefix.size();
    uint64_t run = 0;
    for (size_t b = 0; b < rc.size(); ++b) {
        const uint32_t r = rc[b];
        if (r >= d.refcount_histogram.size()) d.refcount_histogram.resize(size_t(r) + 1, 0);
        ++d.refcount_histogram[r];
        d.references += r;
        if (cached[b]) ++(r == 0 ? d.cached_blocks : d.cached_held_blocks);
        if (r == 0 && cached[b]) {
            run = 0;  // evictable: not free
        } else if (r == 0) {
            ++d.free_blocks;
            if (run++ == 0) ++d.free_runs;
            d.largest_free_run = std::max(d.largest_free_run, run);
        } else {
            run = 0;
            ++d.used_blocks;
            d.shared_blocks += r > 1;
        }
    }
    d.slots_held = d.used_blocks * bs;

    for (const SnapshotCache& c : s.caches) {
        ++d.caches;
        d.rows += c.rows.size();
    }
    for (uint32_t n : slots_in_use(s))
        d.tokens_stored += n;
    d.waste_slots = d.slots_held - d.tokens_stored;
    return d;
}

}  // namespace pagedkv
