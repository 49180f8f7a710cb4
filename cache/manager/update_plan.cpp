#include "cache/manager/update_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "pagedkv/error.hpp"

namespace pagedkv::detail {

namespace {

Error invalid(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

uint64_t ceil_div(uint64_t a, uint64_t b) {
    return (a + b - 1) / b;
}

// Positions of the new tokens, per row; throws before anything changes.
std::vector<std::vector<int64_t>> resolve_positions(const CachePosition& cp, uint32_t batch,
                                                    uint32_t seq,
                                                    const std::vector<int64_t>& old_len,
                                                    const char* op) {
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
    std::vector<std::vector<int64_t>> pos(batch, std::vector<int64_t>(seq));
    for (uint32_t b = 0; b < batch; ++b)
        for (uint32_t s = 0; s < seq; ++s)
            switch (cp.kind()) {
                case K::Append:
                    pos[b][s] = old_len[b] + s;
                    break;
                case K::Scalar:
                    pos[b][s] = cp.scalar() + s;
                    break;
                case K::Vector:
                    pos[b][s] = cp.vector()[s];
                    break;
                case K::Matrix:
                    pos[b][s] = cp.matrix()[b][s];
                    break;
            }
    for (uint32_t b = 0; b < batch; ++b)
        for (int64_t p : pos[b])
            if (p < 0 || p >= INT32_MAX)
                throw invalid(
                    fmt::format("{}: cache_position {} (row {}) is out of range", op, p, b));
    return pos;
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
    if (needed <= alloc.free_blocks() + released) return;
    throw Error(ErrorCode::OutOfBlocks,
                fmt::format("{}: out of blocks: need {} pages, {} of {} free{}", op, needed,
                            alloc.free_blocks(), alloc.num_blocks(),
                            released ? fmt::format(", and this call would release {}", released)
                                     : std::string()));
}

UpdatePlan plan_update(const RowsState& rs, const BlockAllocator& alloc, uint32_t layer,
                       uint32_t batch, uint32_t seq, const CachePosition& cp,
                       const WritePolicy& policy, const char* op) {
    if (rs.batch != 0 && batch != rs.batch)
        throw invalid(
            fmt::format("{}: key has batch {}, cache holds {} rows", op, batch, rs.batch));
    UpdatePlan plan;
    plan.layer = layer;
    plan.batch = batch;
    plan.seq = seq;
    plan.fresh_batch = rs.batch == 0;
    const std::vector<int64_t> old_len =
        plan.fresh_batch ? std::vector<int64_t>(batch, 0) : rs.len[layer];
    auto pos = resolve_positions(cp, batch, seq, old_len, op);

    const uint32_t bs = rs.block_size;
    std::unordered_map<uint32_t, uint32_t> dropped_refs;  // block -> references released
    std::vector<std::pair<uint32_t, size_t>> cow;         // (row, page) shared pages written
    plan.rows.resize(batch);
    for (uint32_t b = 0; b < batch; ++b) {
        UpdatePlan::Row& p = plan.rows[b];
        p.pos = std::move(pos[b]);
        p.old_len = p.new_len = old_len[b];
        // Within one call the last write to a position wins (as sequential writes would); the
        // earlier ones are dropped so no two shader threads write one slot.
        std::unordered_set<int64_t> seen;
        for (uint32_t s = seq; s-- > 0;)
            if (seen.insert(p.pos[s]).second) p.keep.push_back(s);
        // Back in input order, so consecutive tokens form runs (one copy region per run).
        std::reverse(p.keep.begin(), p.keep.end());
        for (int64_t q : p.pos)
            p.new_len = std::max(p.new_len, q + 1);

        // In the slot coordinates of the row's pages before this call. The oldest `drop`
        // tokens of the grown row are never written, and pages no layer reaches afterwards
        // (`lead`) go back to the pool before new ones are taken, so a sliding window decodes
        // within its own footprint.
        p.have = plan.fresh_batch ? 0 : rs.tables[b].size();
        p.drop = std::max<int64_t>(0, p.new_len - policy.keep_limit);
        const int64_t kept = p.new_len - p.drop;
        // Where the other layers of the row reach (this layer's old tokens excluded).
        int64_t first = INT64_MAX, end = 0;
        for (uint32_t l = 0; l < rs.num_layers && !plan.fresh_batch; ++l)
            if (l != layer && rs.len[l][b] > 0) {
                first = std::min(first, rs.start[l][b]);
                end = std::max(end, rs.start[l][b] + rs.len[l][b]);
            }
        if (plan.fresh_batch) {
            p.start = 0;
        } else if (p.old_len == 0 && policy.keep_limit != INT64_MAX && end > 0) {
            // A window starting empty ends where the row's other layers end: layers written
            // one after the other in a step then cover the same pages.
            p.start = std::max<int64_t>(0, end - kept) - p.drop;
        } else {
            p.start = rs.start[layer][b];
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
            ++dropped_refs[index(rs.tables[b][i])];
        if (p.have == 0) continue;
        std::unordered_set<size_t> shared;
        auto touch = [&](int64_t position) {
            const size_t bi = size_t((p.start + position) / bs);
            if (bi < p.have && alloc.refcount(rs.tables[b][bi]) > 1) shared.insert(bi);
        };
        for (uint32_t s : p.keep)
            if (p.pos[s] >= p.drop) touch(p.pos[s]);
        for (int64_t q = std::max(p.old_len, p.drop); q < p.new_len; ++q)
            touch(q);
        for (size_t bi : shared)
            cow.emplace_back(b, bi);
    }
    // When every reference to a shared page belongs to a row written now, the last of them
    // keeps the original (its sharers take copies first): r sharers cost r - 1 copies.
    std::unordered_map<uint32_t, std::vector<size_t>> writers;
    for (size_t i = 0; i < cow.size(); ++i)
        writers[index(rs.tables[cow[i].first][cow[i].second])].push_back(i);
    std::vector<uint8_t> in_place(cow.size(), 0);
    for (const auto& [block, who] : writers)
        if (who.size() == alloc.refcount(BlockId{block})) in_place[who.back()] = 1;
    for (size_t i = 0; i < cow.size(); ++i)
        if (!in_place[i]) plan.copies.push_back(cow[i]);
    plan.needed += plan.copies.size();
    for (const auto& [block, refs] : dropped_refs)
        plan.released += refs == alloc.refcount(BlockId{block});
    return plan;
}

}  // namespace pagedkv::detail
