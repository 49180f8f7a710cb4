// ManagerState: a KVManager's sequences (a block table and a length each), and StepState: what
// begin_step built for one step, on the host and in one device-readable buffer.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <new>
#include <optional>

#include <fmt/format.h>
#include <vector>

#include "allocator/block_table.hpp"
#include "cache/manager/pool_state.hpp"
#include "cache/manager/sequence.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/kv_manager.hpp"
#include "shaders/kernels/row_copy.hpp"
#include "shaders/vulkan/buffer.hpp"

namespace pagedkv::detail {

struct ManagerState {
    ManagerState(std::shared_ptr<PoolState> pool, ManagerOptions o)
        : owner(std::move(pool)),
          ps(owner.get()),
          options(o),
          seqs(ps->allocator, ps->config.num_layers, ps->groups.num_groups()) {}

    std::shared_ptr<PoolState> owner;  // outlives the BlockPool object when it must
    PoolState* ps;
    ManagerOptions options;
    // A manager's sequences hold the same number of tokens in every layer (len[l] = length),
    // position p of layer l at slot start[l] + p of its group's table: start is 0, or minus the
    // slots a sliding group released from the front (layer_windows); pages past the length in
    // a table are reserved (allocate's lookahead).
    SequenceSet seqs;
    // Bumped by every change of the sequences' pages or lengths: a step made at another
    // generation is stale.
    uint64_t generation = 0;

    // Prefix caching (null without): the pool's index, and what it needs of each sequence.
    PrefixIndex* index = nullptr;
    struct Track {
        std::vector<int32_t> tokens;  // every token id of the sequence, when known
        uint64_t salt = 0;
        bool known = true;  // false once a step gave no ids: nothing more is registered
        // The first `written` tokens' K/V are known written (a step ended with every layer
        // written, or cached pages shared at admission); only those pages register. `epoch`
        // counts truncations: a step begun before one does not vouch for what follows it.
        size_t written = 0;
        uint64_t epoch = 0;
        // The first `anchored` full pages are in the index (as the sequence's own pages or
        // equal ones); `anchor` is the indexed block of the last of them, valid while its
        // serial is anchor_serial.
        size_t anchored = 0;
        BlockId anchor{};
        uint64_t anchor_serial = 0;
    };
    std::map<SeqId, Track> tracks;
    // Sequences in steps begun and not ended (how many each): swap_out and swap_in refuse them.
    std::map<SeqId, uint32_t> stepping;
    PrefixCacheStats lookups;     // queries, hit_tokens, query_tokens
    uint64_t evictions_base = 0;  // the pool's evictions when the counters (re)started
    uint64_t spilled_base = 0;    // the pool's spilled pages when the counters (re)started

    // Throws InvalidArgument naming op when layer is not one of the pool's.
    void check_layer(uint32_t layer, const char* op) const { ps->check_layer(layer, op, "layer"); }
};

// One call into a manager: every device's call lock; throws when the pool is gone.
struct ManagerLock : PoolLock {
    explicit ManagerLock(const ManagerState& m) : PoolLock(*m.ps, "KVManager", "the managers") {}
};

// f(), with running out of host memory turned into Error(OutOfMemory) naming op.
template <class F>
auto host_memory_guard(const char* op, F&& f) {
    try {
        return f();
    } catch (const std::bad_alloc&) {
        throw Error(ErrorCode::OutOfMemory, fmt::format("{}: out of host memory", op));
    }
}

// Whether the sequence is swapped out: its table lists host-tier blocks.
inline bool is_swapped(const ManagerState& m, const Sequence& s) noexcept {
    return &s.table.allocator() != &m.ps->allocator;
}
// Drops the tier links of blocks no longer in use (after anything that releases pages).
inline void prune_links(ManagerState& m) noexcept {
    if (!m.ps->links.empty()) m.ps->links.prune(m.ps->allocator, m.ps->host_allocator.get());
}

// A manager's sequence in layer group g: the position of its table's slot 0 (above 0 once a
// sliding group released leading pages), and the first position its layers hold (a sliding
// group of window w holds the last w tokens).
inline int64_t table_origin(const PoolState& ps, const Sequence& s, uint32_t g) {
    return -s.start[ps.groups.layers[g][0]];
}
inline int64_t first_held(const PoolState& ps, const Sequence& s, uint32_t g) {
    const int64_t w = ps.groups.window[g], n = s.len.empty() ? 0 : s.len[0];
    return w > 0 && n > w ? n - w : 0;
}
// The page slot of a position in group g (which its table holds).
inline uint32_t slot_in_group(const PoolState& ps, const Sequence& s, uint32_t g, int64_t pos) {
    const uint32_t bs = ps.config.block_size;
    const int64_t at = pos - table_origin(ps, s, g);
    return index(s.group(g)[size_t(at / bs)]) * bs + uint32_t(at % bs);
}

inline int64_t length_of(const Sequence& s) {
    return s.len.empty() ? 0 : s.len[0];
}
inline void set_length(Sequence& s, int64_t n) {
    std::fill(s.len.begin(), s.len.end(), n);
}

// One layer group's part of a step (PoolConfig::layer_windows; one group without): where the
// new tokens land in its table, and the CSR table over its pages.
struct StepTable {
    // Host copies of what the buffer holds.
    std::vector<uint32_t> slot_mapping;  // [total]
    std::vector<RowEntry> entries;       // [total]: (token * kv_heads, slot), for write()
    std::vector<uint32_t> indptr, indices, last_page_len, first_slot;  // the CSR table
    std::vector<int64_t> first_position;  // [sequence]: the position of its CSR row's first token
    uint32_t max_len = 0;                 // the longest attention row
    uint64_t entries_offset = 0, rows_offset = 0, slot_mapping_offset = 0, indptr_offset = 0,
             indices_offset = 0, last_page_len_offset = 0, first_slot_offset = 0;
};

struct StepState {
    std::shared_ptr<ManagerState> manager;
    uint64_t generation = 0;
    std::vector<SeqId> seqs;
    std::vector<uint32_t> new_tokens;
    std::vector<int64_t> first_pos;
    uint32_t total = 0;
    std::vector<int64_t> lengths;   // each sequence's length after the step
    std::vector<StepTable> tables;  // [layer group]

    // Prefix caching: the pages the step fills are registered when it ends, and only when
    // every layer's K/V was written (write(), or view() for the runtime's own kernels); a step
    // ended without them leaves its sequences unregistrable (their pages' K/V are unknown).
    bool registers = false;           // token ids were given, with prefix caching on
    std::vector<uint8_t> layer_done;  // [layer]
    std::vector<uint64_t> epochs;     // [sequence]: its track's epoch at begin_step
    bool ended = false;

    std::shared_ptr<Buffer> buffer;  // host-visible, written once by begin_step (the manager
                                     // state keeps the pool's pages alive with it)
    // A pool over several devices: the same bytes on devices 1.. (each reads its own).
    std::vector<std::shared_ptr<Buffer>> shard_buffers;
    Buffer& buffer_on(size_t device) const {
        return device == 0 ? *buffer : *shard_buffers[device - 1];
    }
    // The table of a layer's group.
    const StepTable& table_of(uint32_t layer) const {
        return tables[manager->ps->groups.group_of[layer]];
    }
};

// Adds a sequence made elsewhere (an imported one) and, with prefix caching, its track,
// registering the full pages the track vouches for: both or neither.
SeqId add_sequence_of(ManagerState& m, Sequence&& s, std::optional<ManagerState::Track> track);
// Prefix caching with a host tier: appends to table (which holds the device-cached prefix of
// prompt) the pages after it that were spilled to the host, each copied to a fresh device page
// and indexed, until max_pages, a miss, or no device page is free. Returns how many. Never
// throws.
size_t hits_from_host(ManagerState& m, BlockTable& table, std::span<const int32_t> prompt,
                      uint64_t salt, size_t max_pages) noexcept;

// Ends a step once (Step's destructor, move assignment and KVManager::end_step): with prefix
// caching, registers the pages it filled if every layer was written. Never throws.
void end_step(StepState& s) noexcept;

}  // namespace pagedkv::detail
