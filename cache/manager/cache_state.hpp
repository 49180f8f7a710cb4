// CacheState: the rows of one paged cache: a block table per batch row and, per layer and row,
// how many tokens it holds and where its first token sits in the row's first page.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "allocator/block_table.hpp"
#include "cache/manager/access.hpp"
#include "cache/manager/cache_policy.hpp"
#include "cache/manager/manager_state.hpp"
#include "cache/manager/pool_state.hpp"
#include "cache/manager/update_plan.hpp"
#include "pagedkv/error.hpp"
#include "shaders/kernels/row_copy.hpp"

namespace pagedkv::detail {

struct CacheState {
    CacheState(BlockPool& p, std::unique_ptr<const CachePolicy> kind)
        : owner(Access::shared_pool(p)),
          ps(owner.get()),
          policy(std::move(kind)),
          name(policy->name()),
          manager(std::make_shared<ManagerState>(owner, ManagerOptions{0.0, false})) {}

    // The pool's state lives as long as a cache refers to it: a cache outliving its BlockPool
    // (a misuse) gets errors from its calls and still returns its pages when destroyed.
    std::shared_ptr<PoolState> owner;
    PoolState* ps;
    std::unique_ptr<const CachePolicy> policy;  // the cache kind
    const char* name;                           // the kind's class name, for error messages
    // The cache is a view over a manager's sequences: batch row r is sequence ids[r] (rows[r]
    // points at it). Each row's layers hold their own lengths: update() writes one layer at a
    // time, and crop and sliding windows move a layer's start.
    std::shared_ptr<ManagerState> manager;
    uint32_t batch = 0;  // 0 until the first update
    std::vector<SequenceId> ids;
    std::vector<Sequence*> rows;
    // A reserved cache's tables not in use as rows (after selecting fewer rows).
    std::vector<BlockTable> spare;

    // Storage a write reuses from call to call (under the cache's lock), so that a decode step
    // allocates nothing on the host once warm: the plan, the pages it takes, the entries of the
    // scatter.
    struct WriteScratch {
        UpdatePlan plan;
        std::vector<BlockId> fresh;
        std::vector<std::pair<uint32_t, uint32_t>> copies;
        std::vector<RowEntry> entries;
        std::vector<uint8_t> written;
    } scratch;

    BlockTable& table(uint32_t row) { return rows[row]->table; }
    const BlockTable& table(uint32_t row) const { return rows[row]->table; }
    // The table of a layer's group (PoolConfig::layer_windows; the one table without).
    BlockTable& table(uint32_t row, uint32_t layer) {
        return rows[row]->group(ps->groups.group_of[layer]);
    }
    const BlockTable& table(uint32_t row, uint32_t layer) const {
        return rows[row]->group(ps->groups.group_of[layer]);
    }
    // Tokens a layer's sliding window (layer_windows) let go of a row, and the tokens it has
    // seen (held + those).
    int64_t dropped(uint32_t layer, uint32_t row) const {
        const auto& d = rows[row]->dropped;
        return d.empty() ? 0 : d[layer];
    }
    void set_dropped(uint32_t layer, uint32_t row, int64_t n) {
        auto& d = rows[row]->dropped;
        if (d.empty()) {
            if (n == 0) return;
            d.assign(num_layers(), 0);
        }
        d[layer] = n;
    }
    int64_t seen(uint32_t layer, uint32_t row) const {
        return len(layer, row) + dropped(layer, row);
    }
    // The most tokens a layer's rows keep: the cache kind's limit, and the layer's window.
    int64_t keep_limit(uint32_t layer) const {
        const int64_t w = ps->groups.window_of(layer);
        return w > 0 ? std::min(policy->keep_limit(), w) : policy->keep_limit();
    }
    int64_t& len(uint32_t layer, uint32_t row) { return rows[row]->len[layer]; }
    int64_t len(uint32_t layer, uint32_t row) const { return rows[row]->len[layer]; }
    int64_t& start(uint32_t layer, uint32_t row) { return rows[row]->start[layer]; }
    int64_t start(uint32_t layer, uint32_t row) const { return rows[row]->start[layer]; }
    // Every row's length in one layer (tokens seen: held ones and those a layer window let go),
    // and the longest held.
    std::vector<int64_t> lengths(uint32_t layer) const {
        std::vector<int64_t> out;
        out.reserve(batch);
        for (uint32_t r = 0; r < batch; ++r)
            out.push_back(seen(layer, r));
        return out;
    }
    int64_t longest_seen(uint32_t layer) const {
        int64_t m = 0;
        for (uint32_t r = 0; r < batch; ++r)
            m = std::max(m, seen(layer, r));
        return m;
    }
    int64_t longest(uint32_t layer) const {
        int64_t m = 0;
        for (uint32_t r = 0; r < batch; ++r)
            m = std::max(m, len(layer, r));
        return m;
    }

    // Makes these sequences the rows, in order (the old rows' sequences end). All or nothing:
    // the new sequences are added first (each a map node: the allocations that can fail, and
    // on a failure they move back into `fresh`), and only then do the old rows go.
    void set_rows(std::vector<Sequence>&& fresh) {
        std::vector<SequenceId> new_ids;
        std::vector<Sequence*> new_rows;
        new_ids.reserve(fresh.size());
        new_rows.reserve(fresh.size());
        try {
            for (Sequence& s : fresh) {
                new_ids.push_back(manager->seqs.add(std::move(s)));
                new_rows.push_back(manager->seqs.find(new_ids.back()));
            }
        } catch (...) {
            for (size_t i = 0; i < new_ids.size(); ++i) {
                fresh[i] = std::move(*new_rows[i]);
                manager->seqs.erase(new_ids[i]);
            }
            throw;
        }
        for (SequenceId id : ids)
            manager->seqs.erase(id);
        ids = std::move(new_ids);
        rows = std::move(new_rows);
        batch = uint32_t(rows.size());
    }
    // Appends one row made of s.
    void push_row(Sequence&& s) {
        ids.reserve(ids.size() + 1);
        rows.reserve(rows.size() + 1);
        ids.push_back(manager->seqs.add(std::move(s)));
        rows.push_back(manager->seqs.find(ids.back()));
        ++batch;
    }
    // Row r becomes s (its old sequence ends).
    void replace_row(uint32_t r, Sequence&& s) {
        const SequenceId id = manager->seqs.add(std::move(s));
        manager->seqs.erase(ids[r]);
        ids[r] = id;
        rows[r] = manager->seqs.find(id);
    }
    void clear_rows() { set_rows({}); }
    // An empty sequence of this pool's layers.
    Sequence empty_sequence() const {
        return Sequence(ps->allocator, num_layers(), ps->groups.num_groups());
    }

    // The pool, or InvalidArgument when it was destroyed before this cache.
    BlockPool& pool() const { return ps->live_pool(name, "the caches"); }
    uint32_t block_size() const { return ps->config.block_size; }
    // The page slot (block * block_size + slot) of slot s of the pages of a layer's row.
    uint32_t slot_at(uint32_t row, uint32_t layer, int64_t s) const {
        return index(table(row, layer)[size_t(s / block_size())]) * block_size() +
               uint32_t(s % block_size());
    }
    // The page slot of token t of a layer's row.
    uint32_t slot_of(uint32_t layer, uint32_t row, int64_t t) const {
        return slot_at(row, layer, start(layer, row) + t);
    }
    uint32_t num_layers() const { return ps->config.num_layers; }
    // Throws InvalidArgument naming op when layer is not one of the pool's.
    void check_layer(uint32_t layer, const char* op) const {
        ps->check_layer(layer, op, "layer_idx");
    }

    // Gives back the first `lead` pages of a layer group's table of a row (Sequence).
    void release_leading(uint32_t row, uint32_t group, size_t lead) {
        rows[row]->release_leading(group, ps->groups.layers[group], lead, block_size());
    }
    // Slots the row needs: the furthest any layer reaches.
    int64_t extent(uint32_t row) const { return rows[row]->extent(); }
};

// The device lock for one call on a cache; throws when the cache's pool is gone.
struct CacheLock : PoolLock {
    explicit CacheLock(const CacheState& st) : PoolLock(*st.ps, st.name, "the caches") {}
};

}  // namespace pagedkv::detail
