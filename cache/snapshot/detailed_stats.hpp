// Walks a snapshot's reference counts, free list and tables into DetailedStats (the second,
// computed tier of statistics); the dump tool and pagedkv::detailed_stats() share it.
#pragma once

#include "cache/snapshot/snapshot_data.hpp"
#include "pagedkv/detailed_stats.hpp"

namespace pagedkv {

// s must pass check_snapshot (block ids in range, lengths inside their rows' pages).
DetailedStats compute_detailed_stats(const SnapshotData& s);

// Per block, how many of its block_size slots hold a token of some row and layer (a slot that
// several rows share, or several layers use, counts once). Same precondition.
std::vector<uint32_t> slots_in_use(const SnapshotData& s);

}  // namespace pagedkv
