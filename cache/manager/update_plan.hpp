// UpdatePlan: what writing new tokens into one layer of a cache's rows will do, decided on the
// CPU before anything changes: the positions, the tokens kept, the pages released, added and
// copied. Pure host logic over block tables and the allocator, so it is tested without a GPU.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_table.hpp"
#include "cache/manager/sequence.hpp"
#include "pagedkv/kv_cache.hpp"

namespace pagedkv::detail {

// The rows a plan reads: block tables, and per layer and row the tokens held and the page slot
// of the first one (token t at slot start + t of the row's pages).
struct RowsState {
    uint32_t block_size = 0;
    uint32_t num_layers = 0;
    uint32_t batch = 0;               // 0: no rows yet (rows is then not read)
    std::span<Sequence* const> rows;  // [row]: its table, and per layer its len and start
    // With layer groups (PoolConfig::layer_windows): the written layer's group, whose table the
    // plan reads, and the group's layers (empty: every layer, one table).
    uint32_t group = 0;
    std::span<const uint32_t> layers;
};

// A cache kind's rules for a write.
struct WritePolicy {
    // The most tokens a layer's row keeps (a sliding window's window): a write that makes a row
    // longer drops its oldest tokens, which are then never written.
    int64_t keep_limit = INT64_MAX;
    // The rows keep every page they hold (a static cache's reservation): none is released.
    bool reserved = false;
};

struct UpdatePlan {
    struct Row {
        std::vector<int64_t> pos;    // position of each new token, in input order
        std::vector<uint32_t> keep;  // the new tokens written: the last write to a position wins
        int64_t old_len = 0, new_len = 0;  // the layer's tokens before, and after growing
        // In the slot coordinates of the row's pages before the call:
        int64_t start = 0;   // slot of the layer's logical position 0
        int64_t drop = 0;    // leading positions the layer no longer keeps (keep_limit)
        size_t have = 0;     // pages the row holds now
        size_t lead = 0;     // leading pages no layer reaches afterwards (may exceed have)
        uint64_t extra = 0;  // pages added at the end
    };
    uint32_t layer = 0, batch = 0, seq = 0;
    bool fresh_batch = false;  // the rows are made by this write
    std::vector<Row> rows;
    // Shared pages written by this call, copied to fresh pages first: (row, page index).
    std::vector<std::pair<uint32_t, size_t>> copies;
    uint64_t needed = 0;    // fresh pages: every row's extra, plus the copies
    uint64_t released = 0;  // pages the leading releases give back to the free list

    // Each row's length before the policy's drop (what a capacity check limits).
    std::vector<int64_t> grown_lengths() const;
    // Tokens of the layer's longest row after the write.
    int64_t longest() const;
    // An upper bound of the page slots the scatter touches (written tokens and zero fills).
    size_t slots_written() const;
    // Throws Error(OutOfBlocks) naming op when the pool cannot give `needed` pages, counting
    // what the leading releases give back first.
    void check_pages(const BlockAllocator& alloc, const char* op) const;
};

// Plans writing `seq` new tokens into each of `batch` rows of one layer at cache_position.
// Throws Error(InvalidArgument) naming op, changing nothing, for a batch other than the rows'
// or positions that are malformed or out of range (below 0, or reaching INT32_MAX).
UpdatePlan plan_update(const RowsState& rows, const BlockAllocator& alloc, uint32_t layer,
                       uint32_t batch, uint32_t seq, const CachePosition& cache_position,
                       const WritePolicy& policy, const char* op);
// The same into `plan`, reusing its storage (a cache keeps one plan for its writes, so a decode
// step allocates nothing on the host once warm). On a throw, plan holds no meaning.
void plan_update(const RowsState& rows, const BlockAllocator& alloc, uint32_t layer, uint32_t batch,
                 uint32_t seq, const CachePosition& cache_position, const WritePolicy& policy,
                 const char* op, UpdatePlan& plan);

}  // namespace pagedkv::detail
