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
          name(policy->name()) {}

    // The pool's state lives as long as a cache refers to it: a cache outliving its BlockPool
    // (a misuse) gets errors from its calls and still returns its pages when destroyed.
    std::shared_ptr<PoolState> owner;
    PoolState* ps;
    std::unique_ptr<const CachePolicy> policy;  // the cache kind
    const char* name;                           // the kind's class name, for error messages
    uint32_t batch = 0;                         // 0 until the first update
    std::vector<BlockTable> tables;
    // A reserved cache's tables not in use as rows (after selecting fewer rows).
    std::vector<BlockTable> spare;
    // [layer][row]. Token t of a row/layer lives at slot start + t of the row's pages; start
    // moves forward when crop or a sliding window drops leading tokens without moving bytes.
    std::vector<std::vector<int64_t>> len;
    std::vector<std::vector<int64_t>> start;

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

    // The pool, or InvalidArgument when it was destroyed before this cache.
    BlockPool& pool() const {
        if (!ps->pool)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: the BlockPool it was made over has been destroyed (a "
                                    "pool must outlive the caches made over it)",
                                    name));
        return *ps->pool;
    }
    uint32_t block_size() const { return ps->config.block_size; }
    // The page slot (block * block_size + slot) of slot s of a row's pages.
    uint32_t slot_at(uint32_t row, int64_t s) const {
        return index(tables[row][size_t(s / block_size())]) * block_size() +
               uint32_t(s % block_size());
    }
    // The page slot of token t of a layer's row.
    uint32_t slot_of(uint32_t layer, uint32_t row, int64_t t) const {
        return slot_at(row, start[layer][row] + t);
    }
    uint32_t num_layers() const { return ps->config.num_layers; }
    // Throws InvalidArgument naming op when layer is not one of the pool's.
    void check_layer(uint32_t layer, const char* op) const {
        if (layer >= num_layers())
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("{}: layer_idx {} out of range, pool has {} layers", op, layer,
                                    num_layers()));
    }
    // Every layer's lengths and start slots as they become when the rows are `rows` (old row
    // indices, in order). Built aside, so that running out of host memory changes nothing.
    struct Lengths {
        std::vector<std::vector<int64_t>> len, start;
    };
    Lengths selected_lengths(std::span<const int32_t> rows) const {
        Lengths out;
        for (auto [from, to] : {std::pair{&len, &out.len}, std::pair{&start, &out.start}})
            for (const auto& v : *from) {
                std::vector<int64_t>& picked = to->emplace_back();
                picked.reserve(rows.size());
                for (int32_t r : rows)
                    picked.push_back(v[size_t(r)]);
            }
        return out;
    }

    // Gives back the row's first `lead` pages (those of them it holds) and moves every layer's
    // start back by as many slots. An empty layer starts at slot 0: a start past the row's
    // pages would make the next write reach for pages it does not need.
    void release_leading(uint32_t row, size_t lead) {
        tables[row].release_front(std::min(lead, tables[row].size()));
        const int64_t shift = int64_t(lead) * block_size();
        for (uint32_t l = 0; l < num_layers(); ++l)
            start[l][row] = len[l][row] > 0 ? start[l][row] - shift : 0;
    }

    // Slots the row needs: the furthest any layer reaches.
    int64_t extent(uint32_t row) const {
        int64_t e = 0;
        for (uint32_t l = 0; l < num_layers(); ++l)
            if (len[l][row] > 0 && start[l][row] + len[l][row] > e) e = start[l][row] + len[l][row];
        return e;
    }
};

// The device lock for one call on a cache; throws when the cache's pool is gone.
struct CacheLock : Device::CallLock {
    explicit CacheLock(const CacheState& st) : Device::CallLock(*st.ps->device) { st.pool(); }
};

}  // namespace pagedkv::detail
