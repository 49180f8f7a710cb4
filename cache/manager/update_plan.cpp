#include "cache/manager/update_plan.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pagedkv/error.hpp"

namespace pagedkv::detail {

namespace {

Error invalid(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

uint64_t ceil_div(uint64_t a, uint64_t b) {
    return (a + b - 1) / b;
}

// Positions of the new tokens into each row's pos (rows[b].pos, storage reused); throws
// before anything changes. old: the rows, whose lengths in `layer` new tokens follow (null:
// fresh rows, all empty).
void resolve_positions(const CachePosition& cp, uint32_t batch, uint32_t seq, const RowsState* old,
                       uint32_t layer, const char* op, std::vector<UpdatePlan::Row>& rows) {
    using K = CachePosition::Kind;
    // Counts first: nothing is allocated for a position list of the wrong size.
    if (cp.kind() == K::Vector && cp.vector().size() != seq)
        throw invalid(fmt::format("{}: cache_position has {} entries, seq_len is {}", op,
                                  cp.vector().size(), seq));
    if (cp.kind() == K::Matrix) {
        if (cp.matrix().size() != batch)
            throw invalid(fmt::format("{}: cache_position has {} rows, batch is {}", op,
                                      cp.matrix().size(), batch));
        for (uint32_t b = 0; b < batch; ++b)
            if (cp.matrix()[b].size() != seq)
                throw invalid(fmt::format("{}: cache_position row {} has {} entries, seq_len is {}",
                                          op, b, cp.matrix()[b].size(), seq));
    }
    // Checked before the positions are formed (scalar + s must not overflow).
    if (cp.kind() == K::Scalar && seq > 0 &&
        (cp.scalar() < 0 || cp.scalar() > int64_t(INT32_MAX) - seq))
        throw invalid(
            fmt::format("{}: cache_position {} with seq_len {} is out of range "
                        "(positions must stay below {})",
                        op, cp.scalar(), seq, INT32_MAX));
    rows.resize(batch);
    for (uint32_t b = 0; b < batch; ++b) {
        std::vector<int64_t>& pos = rows[b].pos;
        pos.resize(seq);
        for (uint32_t s = 0; s < seq; ++s)
            switch (cp.kind()) {
                case K::Append:
                    pos[s] = (old ? old->rows[b]->len[layer] : 0) + s;
                    break;
                case K::Scalar:
                    pos[s] = cp.scalar() + s;
                    break;
                case K::Vector:
                    pos[s] = cp.vector()[s];
                    break;
                case K::Matrix:
                    pos[s] = cp.matrix()[b][s];
                    break;
            }
        for (int64_t p : pos)
            if (p < 0 || p >= INT32_MAX)
                throw invalid(
                    fmt::format("{}: cache_position {} (row {}) is out of range", op, p, b));
        // A layer window (layer_windows) let go of the row's first positions: the layer's
        // tokens are numbered from the first it holds.
        const int64_t gone = old && !old->rows[b]->dropped.empty() && cp.kind() != K::Append
                                 ? old->rows[b]->dropped[layer]
                                 : 0;
        for (int64_t& p : pos) {
            if (p < gone)
                throw invalid(
                    fmt::format("{}: cache_position {} (row {}) has left the layer's "
                                "window (it holds positions from {})",
                                op, p, b, gone));
            p -= gone;
        }
    }
}

// The new tokens a row writes, in input order: within one call the last write to a position
// wins (as sequential writes would), so that no two shader threads write one slot. Positions
// that only increase (appends, prefill, decode) keep every token without sorting.
void last_writes(const std::vector<int64_t>& pos, std::vector<uint32_t>& keep) {
    keep.clear();
    const uint32_t seq = uint32_t(pos.size());
    bool increasing = true;
    for (uint32_t s = 1; s < seq && increasing; ++s)
        increasing = pos[s] > pos[s - 1];
    if (increasing) {
        for (uint32_t s = 0; s < seq; ++s)
            keep.push_back(s);
        return;
    }
    std::vector<uint32_t> order(seq);
    for (uint32_t s = 0; s < seq; ++s)
        order[s] = s;
    // By position, the last write of each position first.
    std::sort(order.begin(), order.end(),
              [&](uint32_t a, uint32_t b) { return pos[a] != pos[b] ? pos[a] < pos[b] : a > b; });
    for (size_t i = 0; i < order.size(); ++i)
        if (i == 0 || pos[order[i]] != pos[order[i - 1]]) keep.push_back(order[i]);
    // Back in input order, so consecutive tokens form runs (one copy region per run).
    std::sort(keep.begin(), keep.end());
}

}  // namespace

std::vector<int64_t> UpdatePlan::grown_lengths() const {
    std::vector<int64_t> out;
    for (const Row& r : rows)
        out.push_back(r.new_len);
    return out;
}

int64_t UpdatePlan::longest() const {
    int64_t n = 0;
    for (const Row& r : rows)  // every row of the layer is written
        n = std::max(n, r.new_len - r.drop);
    return n;
}

size_t UpdatePlan::slots_written() const {
    size_t n = 0;
    for (const Row& r : rows)
        n += r.keep.size() + size_t(std::max<int64_t>(0, r.new_len - r.old_len));
    return n;
}

void UpdatePlan::check_pages(const BlockAllocator& alloc, const char* op) const {
    if (needed <= alloc.available_blocks() + released) return;
    throw Error(ErrorCode::OutOfBlocks,
                fmt::format("{}: out of blocks: need {} pages, {} of {} free{}", op, needed,
                            alloc.available_blocks(), alloc.num_blocks(),
                            released ? fmt::format(", and this call would release {}", released)
                                     : std::string()));
}

UpdatePlan plan_update(const RowsState& rs, const BlockAllocator& alloc, uint32_t layer,
                       uint32_t batch, uint32_t seq, const CachePosition& cp,
                       const WritePolicy& policy, const char* op) {
    UpdatePlan plan;
    plan_update(rs, alloc, layer, batch, seq, cp, policy, op, plan);
    return plan;
}

void plan_update(const RowsState& rs, const BlockAllocator& alloc, uint32_t layer, uint32_t batch,
                 uint32_t seq, const CachePosition& cp, const WritePolicy& policy, const char* op,
                 UpdatePlan& plan) {
    if (rs.batch != 0 && batch != rs.batch)
        throw invalid(
            fmt::format("{}: key has batch {}, cache holds {} rows", op, batch, rs.batch));
    plan.layer = layer;
    plan.batch = batch;
    plan.seq = seq;
    plan.fresh_batch = rs.batch == 0;
    plan.copies.clear();
    plan.needed = 0;
    plan.released = 0;
    resolve_positions(cp, batch, seq, plan.fresh_batch ? nullptr : &rs, layer, op, plan.rows);

    const uint32_t bs = rs.block_size;
    std::vector<uint32_t> dropped;                 // blocks whose references leading releases drop
    std::vector<std::pair<uint32_t, size_t>> cow;  // (row, page) shared pages written
    std::vector<size_t> shared;                    // one row's shared pages written
    for (uint32_t b = 0; b < batch; ++b) {
        UpdatePlan::Row& p = plan.rows[b];
        p.old_len = p.new_len = plan.fresh_batch ? 0 : rs.rows[b]->len[layer];
        last_writes(p.pos, p.keep);
        for (int64_t q : p.pos)
            p.new_len = std::max(p.new_len, q + 1);

        // In the slot coordinates of the row's pages before this call. The oldest `drop`
        // tokens of the grown row are never written, and pages no layer reaches afterwards
        // (`lead`) go back to the pool before new ones are taken, so a sliding window decodes
        // within its own footprint.
        p.have = plan.fresh_batch ? 0 : rs.rows[b]->group(rs.group).size();
        p.drop = std::max<int64_t>(0, p.new_len - policy.keep_limit);
        const int64_t kept = p.new_len - p.drop;
        // Where the other layers of the row reach (this layer's old tokens excluded).
        int64_t first = INT64_MAX, end = 0;
        const auto other = [&](uint32_t l) {
            if (l != layer && rs.rows[b]->len[l] > 0) {
                first = std::min(first, rs.rows[b]->start[l]);
                end = std::max(end, rs.rows[b]->start[l] + rs.rows[b]->len[l]);
            }
        };
        if (!plan.fresh_batch) {
            if (rs.layers.empty())
                for (uint32_t l = 0; l < rs.num_layers; ++l)
                    other(l);
            else
                for (uint32_t l : rs.layers)
                    other(l);
        }
        if (plan.fresh_batch) {
            p.start = 0;
        } else if (p.old_len == 0 && policy.keep_limit != INT64_MAX && end > 0) {
            // A window starting empty ends where the row's other layers end: layers written
            // one after the other in a step then cover the same pages.
            p.start = std::max<int64_t>(0, end - kept) - p.drop;
        } else {
            p.start = rs.rows[b]->start[layer];
        }
        const int64_t kept_start = p.start + p.drop;
        if (kept > 0) {
            first = std::min(first, kept_start);
            end = std::max(end, kept_start + kept);
        }
        if (first == INT64_MAX) first = 0;
        p.lead = policy.reserved ? 0 : size_t(first / bs);
        const size_t want = size_t(ceil_div(uint64_t(end), bs));
        p.extra = want > std::max(p.have, p.lead) ? want - std::max(p.have, p.lead) : 0;
        plan.needed += p.extra;
        for (size_t i = 0; i < std::min(p.lead, p.have); ++i)
            dropped.push_back(index(rs.rows[b]->group(rs.group)[i]));
        if (p.have == 0) continue;
        shared.clear();
        auto touch = [&](int64_t position) {
            const size_t bi = size_t((p.start + position) / bs);
            if (bi < p.have && alloc.must_copy(rs.rows[b]->group(rs.group)[bi]))
                shared.push_back(bi);
        };
        for (uint32_t s : p.keep)
            if (p.pos[s] >= p.drop) touch(p.pos[s]);
        for (int64_t q = std::max(p.old_len, p.drop); q < p.new_len; ++q)
            touch(q);
        std::sort(shared.begin(), shared.end());
        shared.erase(std::unique(shared.begin(), shared.end()), shared.end());
        for (size_t bi : shared)
            cow.emplace_back(b, bi);
    }
    // When every reference to a shared page belongs to a row written now, the last of them
    // keeps the original (its sharers take copies first): r sharers cost r - 1 copies.
    if (!cow.empty()) {
        auto block_of = [&](size_t i) {
            return index(rs.rows[cow[i].first]->group(rs.group)[cow[i].second]);
        };
        // The writes of each shared block together, in the order they were found.
        std::vector<size_t> by_block(cow.size());
        for (size_t i = 0; i < cow.size(); ++i)
            by_block[i] = i;
        std::stable_sort(by_block.begin(), by_block.end(),
                         [&](size_t a, size_t b) { return block_of(a) < block_of(b); });
        std::vector<uint8_t> in_place(cow.size(), 0);
        for (size_t i = 0; i < by_block.size();) {
            size_t j = i + 1;
            while (j < by_block.size() && block_of(by_block[j]) == block_of(by_block[i]))
                ++j;
            // Every reference is among these writes: the last one may take the page itself,
            // unless it is cached (a prefix index names its contents: they must stay).
            const BlockId b{block_of(by_block[i])};
            if (j - i == alloc.refcount(b) && !alloc.is_cached(b)) in_place[by_block[j - 1]] = 1;
            i = j;
        }
        for (size_t i = 0; i < cow.size(); ++i)
            if (!in_place[i]) plan.copies.push_back(cow[i]);
    }
    plan.needed += plan.copies.size();
    std::sort(dropped.begin(), dropped.end());
    for (size_t i = 0; i < dropped.size();) {
        size_t j = i + 1;
        while (j < dropped.size() && dropped[j] == dropped[i])
            ++j;
        plan.released += (j - i) == alloc.refcount(BlockId{dropped[i]});
        i = j;
    }
}

}  // namespace pagedkv::detail
