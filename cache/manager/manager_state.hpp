// ManagerState: a KVManager's sequences (a block table and a length each), and StepState: what
// begin_step built for one step, on the host and in one device-readable buffer.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "allocator/block_table.hpp"
#include "cache/manager/pool_state.hpp"
#include "pagedkv/kv_manager.hpp"
#include "shaders/kernels/row_copy.hpp"
#include "shaders/vulkan/buffer.hpp"

namespace pagedkv::detail {

struct Sequence {
    BlockTable table;
    int64_t length = 0;  // tokens; slots past it in the table are reserved
};

struct ManagerState {
    ManagerState(std::shared_ptr<PoolState> pool, ManagerOptions o)
        : owner(std::move(pool)), ps(owner.get()), options(o) {}

    std::shared_ptr<PoolState> owner;  // outlives the BlockPool object when it must
    PoolState* ps;
    ManagerOptions options;
    std::map<SeqId, Sequence> seqs;
    SeqId next_id = 1;
    // Bumped by every change of the sequences' pages or lengths: a step made at another
    // generation is stale.
    uint64_t generation = 0;
    bool alive = true;  // false once the KVManager is destroyed (steps may outlive it)
};

struct StepState {
    std::shared_ptr<ManagerState> manager;
    uint64_t generation = 0;
    std::vector<SeqId> seqs;
    std::vector<uint32_t> new_tokens;
    std::vector<int64_t> first_pos;
    uint32_t total = 0;
    uint32_t max_len = 0;  // the longest attention row (a sequence's length after the step)

    // Host copies of what the buffer holds.
    std::vector<uint32_t> slot_mapping;  // [total]
    std::vector<RowEntry> entries;       // [total]: (token * kv_heads, slot), for write()
    std::vector<uint32_t> rows;          // attention's row table: pack_row_table's words
    std::vector<uint32_t> indptr, indices, last_page_len, first_slot;  // the CSR table
    std::vector<int64_t> lengths;  // each sequence's length after the step

    std::shared_ptr<PoolState> pool;  // keeps the pages alive with the buffer
    std::shared_ptr<Buffer> buffer;   // host-visible, written once by begin_step
    uint64_t entries_offset = 0, rows_offset = 0, slot_mapping_offset = 0, indptr_offset = 0,
             indices_offset = 0, last_page_len_offset = 0, first_slot_offset = 0;
};

}  // namespace pagedkv::detail
