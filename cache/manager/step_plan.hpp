// StepPlan: what growing sequences by some new tokens takes from the pool, decided on the CPU
// before anything changes: pages appended past each table, and the shared pages the new
// tokens land in, which are copied first (copy-on-write). Pure host logic over block tables
// and the allocator, tested without a GPU; KVManager::allocate and begin_step commit it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_table.hpp"

namespace pagedkv::detail {

struct GrowthPlan {
    struct Seq {
        uint64_t extra = 0;          // pages appended at the end of the table
        std::vector<size_t> copies;  // indices of shared pages to copy before writing them
    };
    std::vector<Seq> seqs;
    uint64_t needed = 0;  // fresh pages in all: every extra and every copy
};

// Plans growing each table (holding lengths[i] tokens) by new_tokens[i] + lookahead slots.
// Pages past the table are appended; pages the new slots reach that are shared with another
// table (reference count above one) or cached (prefix caching: the cached copy stays) are copied.
GrowthPlan plan_growth(std::span<const BlockTable* const> tables, std::span<const int64_t> lengths,
                       std::span<const uint32_t> new_tokens, uint32_t lookahead,
                       uint32_t block_size, const BlockAllocator& alloc);

}  // namespace pagedkv::detail
