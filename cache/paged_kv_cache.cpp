#include "pagedkv/paged_kv_cache.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "cache/cache_state.hpp"
#include "pagedkv/error.hpp"
#include "shaders/batch.hpp"
#include "shaders/page_copy.hpp"
#include "shaders/row_copy.hpp"

namespace pagedkv {

using detail::CacheState;

namespace {

Error invalid(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

detail::CacheLock lock(const CacheState& st) {
    return detail::CacheLock(st);
}

uint64_t ceil_div(uint64_t a, uint64_t b) {
    return (a + b - 1) / b;
}

// The most rows a cache holds (each is a block table): far beyond any batch, and a bound that
// turns a mistaken batch_repeat_interleave(50'000'000) into an error instead of gigabytes.
constexpr uint64_t kMaxRows = uint64_t(1) << 24;

// Runs f, turning std::bad_alloc into Error(OutOfMemory) naming the call.
template <class F>
void host_memory_guard(const char* op, F&& f) {
    try {
        f();
    } catch (const std::bad_alloc&) {
        throw Error(ErrorCode::OutOfMemory, fmt::format("{}: out of host memory", op));
    }
}

// Checks key/value against the pool layout and returns (batch, seq_len).
std::pair<uint32_t, uint32_t> check_kv(const CacheState& st, const Tensor& key, const Tensor& value,
                                       const char* op) {
    const PoolConfig& c = st.ps->config;
    auto check_one = [&](const Tensor& t, const char* what, uint32_t dim) {
        if (!t.defined()) throw invalid(fmt::format("{}: {} is undefined", op, what));
        if (&t.device() != st.ps->device.get())
            throw invalid(fmt::format("{}: {} lives on another Context than the pool", op, what));
        if (t.dtype() != c.dtype)
            throw invalid(fmt::format("{}: {} has dtype {}, pool holds {}", op, what,
                                      to_string(t.dtype()), to_string(c.dtype)));
        const auto& s = t.shape();
        if (s.size() != 4)
            throw invalid(
                fmt::format("{}: {} must be (batch, kv_heads, seq_len, head_dim), got shape [{}]",
                            op, what, fmt::join(s, ", ")));
        if (s[1] != c.num_kv_heads)
            throw invalid(fmt::format("{}: {} has {} heads, pool layout has {} kv heads", op, what,
                                      s[1], c.num_kv_heads));
        if (s[3] != dim)
            throw invalid(
                fmt::format("{}: {} has head_dim {}, pool layout has {}", op, what, s[3], dim));
        if (s[0] < 1 || s[0] > INT32_MAX || s[2] > INT32_MAX)
            throw invalid(fmt::format("{}: {} has batch {} and seq_len {}", op, what, s[0], s[2]));
    };
    check_one(key, "key", c.head_dim);
    check_one(value, "value", c.v_head_dim);
    if (key.shape()[0] != value.shape()[0] || key.shape()[2] != value.shape()[2])
        throw invalid(fmt::format("{}: key is [{}] but value is [{}]", op,
                                  fmt::join(key.shape(), ", "), fmt::join(value.shape(), ", ")));
    return {uint32_t(key.shape()[0]), uint32_t(key.shape()[2])};
}

// Positions of the new tokens, per row; throws before anything changes.
std::vector<std::vector<int64_t>> resolve_positions(const CachePosition& cp, uint32_t batch,
                                                    uint32_t seq,
                                                    const std::vector<int64_t>& old_len,
                                                    const char* op) {
    std::vector<std::vector<int64_t>> pos(batch, std::vector<int64_t>(seq));
    using K = CachePosition::Kind;
    switch (cp.kind()) {
        case K::Append:
            for (uint32_t b = 0; b < batch; ++b)
                for (uint32_t s = 0; s < seq; ++s)
                    pos[b][s] = old_len[b] + s;
            break;
        case K::Scalar:
            // Checked before the positions are formed (scalar + s must not overflow).
            if (seq > 0 && (cp.scalar() < 0 || cp.scalar() > int64_t(INT32_MAX) - seq))
                throw invalid(
                    fmt::format("{}: cache_position {} with seq_len {} is out of range "
                                "(positions must stay below {})",
                                op, cp.scalar(), seq, INT32_MAX));
            for (uint32_t b = 0; b < batch; ++b)
                for (uint32_t s = 0; s < seq; ++s)
                    pos[b][s] = cp.scalar() + s;
            break;
        case K::Vector:
            if (cp.vector().size() != seq)
                throw invalid(fmt::format("{}: cache_position has {} entries, seq_len is {}", op,
                                          cp.vector().size(), seq));
            for (uint32_t b = 0; b < batch; ++b)
                pos[b] = cp.vector();
            break;
        case K::Matrix:
            if (cp.matrix().size() != batch)
                throw invalid(fmt::format("{}: cache_position has {} rows, batch is {}", op,
                                          cp.matrix().size(), batch));
            for (uint32_t b = 0; b < batch; ++b) {
                if (cp.matrix()[b].size() != seq)
                    throw invalid(
                        fmt::format("{}: cache_position row {} has {} entries, seq_len is {}", op,
                                    b, cp.matrix()[b].size(), seq));
                pos[b] = cp.matrix()[b];
            }
            break;
    }
    for (uint32_t b = 0; b < batch; ++b)
        for (int64_t p : pos[b])
            if (p < 0 || p >= INT32_MAX)
                throw invalid(
                    fmt::format("{}: cache_position {} (row {}) is out of range", op, p, b));
    return pos;
}

// Records the scatter (or gather) of one layer's K and V for the same entries: one op for both
// when their rows are the same size (one dispatch, no barrier between them), else one each.
void record_kv(detail::Device& dev, detail::PageStorage& pages, const detail::PageLayout& lay,
               uint32_t layer, detail::Buffer& k, detail::Buffer& v,
               std::span<const detail::RowEntry> entries, uint32_t heads, uint32_t head_stride,
               bool gather) {
    detail::RowCopy op{
        &k, entries, heads, lay.k_row_bytes(), head_stride, lay.page_offset(layer, false), gather};
    if (lay.k_row_bytes() == lay.v_row_bytes()) {
        op.tensor2 = &v;
        op.page_offset2 = lay.page_offset(layer, true);
        detail::record_row_copy(dev, pages, op);
        return;
    }
    detail::record_row_copy(dev, pages, op);
    detail::record_row_copy(
        dev, pages,
        {&v, entries, heads, lay.v_row_bytes(), head_stride, lay.page_offset(layer, true), gather});
}

}  // namespace

PagedKVCache::PagedKVCache(BlockPool& pool, const char* name)
    : state_(std::make_unique<CacheState>(pool, name)) {}

PagedKVCache::~PagedKVCache() {
    if (!state_) return;
    // Under the device lock: the tables give their pages back, spare ones included (another
    // thread may be allocating from the same pool).
    detail::Device::CallLock l(*state_->ps->device);
    state_->tables.clear();
    state_->spare.clear();
}

void PagedKVCache::check_capacity(uint32_t, std::span<const int64_t>) const {}

BlockPool& PagedKVCache::pool() const {
    return state_->pool();
}
uint32_t PagedKVCache::batch_size() const {
    auto l = lock(*state_);
    return state_->batch;
}

std::pair<Tensor, Tensor> PagedKVCache::update(const Tensor& key, const Tensor& value,
                                               uint32_t layer, const CachePosition& cp) {
    auto l = lock(*state_);
    std::pair<Tensor, Tensor> out;
    host_memory_guard("update", [&] { write_rows(key, value, layer, cp, "update", &out); });
    return out;
}

void PagedKVCache::write(const Tensor& key, const Tensor& value, uint32_t layer,
                         const CachePosition& cp) {
    auto l = lock(*state_);
    host_memory_guard("write", [&] { write_rows(key, value, layer, cp, "write", nullptr); });
}

void PagedKVCache::write_rows(const Tensor& key, const Tensor& value, uint32_t layer,
                              const CachePosition& cp, const char* op,
                              std::pair<Tensor, Tensor>* out) {
    CacheState& st = *state_;
    st.check_layer(layer, op);
    const auto [B, S] = check_kv(st, key, value, op);
    check_capacity(B, {});
    if (st.batch != 0 && B != st.batch)
        throw invalid(fmt::format("{}: key has batch {}, cache holds {} rows", op, B, st.batch));
    const bool fresh_batch = st.batch == 0;
    const std::vector<int64_t> old_len = fresh_batch ? std::vector<int64_t>(B, 0) : st.len[layer];
    auto pos = resolve_positions(cp, B, S, old_len, op);

    // Within one update the last write to a position wins (as sequential writes would); drop
    // the earlier ones so no two shader threads write one slot.
    std::vector<std::vector<uint32_t>> keep(B);
    std::vector<int64_t> new_len = old_len;
    for (uint32_t b = 0; b < B; ++b) {
        std::unordered_set<int64_t> seen;
        for (uint32_t s = S; s-- > 0;)
            if (seen.insert(pos[b][s]).second) keep[b].push_back(s);
        // Back in input order, so consecutive tokens form runs (one copy region per run).
        std::reverse(keep[b].begin(), keep[b].end());
        for (int64_t p : pos[b])
            new_len[b] = std::max(new_len[b], p + 1);
    }
    check_capacity(B, new_len);

    // The plan of each row, in the slot coordinates of its pages before this call. A layer
    // keeps at most keep_limit() tokens: the oldest `drop` of the row after the write are
    // never written, and pages no layer reaches afterwards (`lead`) go back to the pool before
    // new ones are taken, so a sliding window decodes within its own footprint.
    const uint32_t bs = st.block_size();
    const int64_t limit = keep_limit();
    BlockAllocator& alloc = st.ps->allocator;
    struct RowPlan {
        int64_t start = 0;   // slot of the layer's logical position 0
        int64_t drop = 0;    // leading positions the layer no longer keeps
        size_t have = 0;     // pages the row holds now
        size_t lead = 0;     // leading pages released (may exceed have)
        uint64_t extra = 0;  // pages added at the end
    };
    std::vector<RowPlan> plan(B);
    std::vector<std::pair<uint32_t, size_t>> cow;         // (row, page) shared pages written
    std::unordered_map<uint32_t, uint32_t> dropped_refs;  // block -> references released
    uint64_t needed = 0;
    for (uint32_t b = 0; b < B; ++b) {
        RowPlan& p = plan[b];
        p.have = fresh_batch ? 0 : st.tables[b].size();
        p.drop = std::max<int64_t>(0, new_len[b] - limit);
        const int64_t kept = new_len[b] - p.drop;
        // Where the other layers of the row reach (this layer's old tokens excluded).
        int64_t first = INT64_MAX, end = 0;
        for (uint32_t l = 0; l < st.num_layers() && !fresh_batch; ++l)
            if (l != layer && st.len[l][b] > 0) {
                first = std::min(first, st.start[l][b]);
                end = std::max(end, st.start[l][b] + st.len[l][b]);
            }
        if (fresh_batch) {
            p.start = 0;
        } else if (old_len[b] == 0 && limit != INT64_MAX && end > 0) {
            // A window starting empty ends where the row's other layers end: layers written
            // one after the other in a step then cover the same pages.
            p.start = std::max<int64_t>(0, end - kept) - p.drop;
        } else {
            p.start = st.start[layer][b];
        }
        const int64_t kept_start = p.start + p.drop;
        if (kept > 0) {
            first = std::min(first, kept_start);
            end = std::max(end, kept_start + kept);
        }
        if (first == INT64_MAX) first = 0;
        p.lead = reserved() ? 0 : size_t(first / bs);
        const size_t want = size_t(ceil_div(uint64_t(end), bs));
        p.extra = want > std::max(p.have, p.lead) ? want - std::max(p.have, p.lead) : 0;
        needed += p.extra;
        for (size_t i = 0; i < std::min(p.lead, p.have); ++i)
            ++dropped_refs[index(st.tables[b][i])];
        if (p.have == 0) continue;
        std::unordered_set<size_t> shared;
        auto touch = [&](int64_t position) {
            const size_t bi = size_t((p.start + position) / bs);
            if (bi < p.have && alloc.refcount(st.tables[b][bi]) > 1) shared.insert(bi);
        };
        for (uint32_t s : keep[b])
            if (pos[b][s] >= p.drop) touch(pos[b][s]);
        for (int64_t q = std::max(old_len[b], p.drop); q < new_len[b]; ++q)
            touch(q);
        for (size_t bi : shared)
            cow.emplace_back(b, bi);
    }
    // When every reference to a shared page belongs to a row written now, the last of them
    // keeps the original (its sharers take copies first): r sharers cost r - 1 copies.
    std::unordered_map<uint32_t, std::vector<size_t>> writers;
    for (size_t i = 0; i < cow.size(); ++i)
        writers[index(st.tables[cow[i].first][cow[i].second])].push_back(i);
    std::vector<uint8_t> in_place(cow.size(), 0);
    for (const auto& [block, who] : writers)
        if (who.size() == alloc.refcount(BlockId{block})) in_place[who.back()] = 1;
    std::vector<std::pair<uint32_t, size_t>> copy_first;
    for (size_t i = 0; i < cow.size(); ++i)
        if (!in_place[i]) copy_first.push_back(cow[i]);
    cow = std::move(copy_first);
    needed += cow.size();
    uint64_t released = 0;  // pages the leading releases return to the free list
    for (const auto& [block, refs] : dropped_refs)
        released += refs == alloc.refcount(BlockId{block});
    if (needed > alloc.free_blocks() + released)
        throw Error(ErrorCode::OutOfBlocks,
                    fmt::format("{}: out of blocks: need {} pages, {} of {} free{}", op, needed,
                                alloc.free_blocks(), alloc.num_blocks(),
                                released ? fmt::format(", and this call would release {}", released)
                                         : std::string()));
    // What update() returns, and the upload space for the scatter's and gather's entries (one
    // upload per op, two ops at most each), are allocated before anything changes: running out
    // of memory for them leaves the cache as it was.
    using detail::Batches;
    size_t writes = 0;
    for (uint32_t b = 0; b < B; ++b)
        writes += keep[b].size() + size_t(std::max<int64_t>(0, new_len[b] - old_len[b]));
    size_t upload = 2 * Batches::upload_bytes(writes * sizeof(detail::RowEntry));
    if (out) {
        int64_t longest = 0;
        for (uint32_t b = 0; b < B; ++b)  // every row of the layer is written
            longest = std::max(longest, new_len[b] - plan[b].drop);
        *out = empty_kv(B, longest);
        upload += 2 * Batches::upload_bytes(size_t(B) * size_t(longest) * sizeof(detail::RowEntry));
    }
    st.ps->device->batches().reserve_upload(upload);

    // Nothing below fails on bad input: the change is committed.
    if (fresh_batch) {
        st.batch = B;
        for (uint32_t b = 0; b < B; ++b)
            st.tables.emplace_back(alloc);
        st.len.assign(st.num_layers(), std::vector<int64_t>(B, 0));
        st.start.assign(st.num_layers(), std::vector<int64_t>(B, 0));
    }
    // Leading pages first, so that the pages they free can be taken again below.
    for (uint32_t b = 0; b < B; ++b) {
        RowPlan& p = plan[b];
        if (p.lead == 0) continue;
        st.tables[b].release_front(std::min(p.lead, p.have));
        const int64_t shift = int64_t(p.lead) * bs;
        for (uint32_t l = 0; l < st.num_layers(); ++l)
            if (l != layer) st.start[l][b] = st.len[l][b] > 0 ? st.start[l][b] - shift : 0;
        p.start -= shift;
    }
    std::vector<BlockId> fresh;
    alloc.allocate(needed, fresh);  // cannot fail: checked above
    size_t next = 0;
    std::vector<std::pair<uint32_t, uint32_t>> copies;
    for (auto [b, bi] : cow) {
        const size_t at = bi - plan[b].lead;
        copies.emplace_back(index(st.tables[b][at]), index(fresh[next]));
        st.tables[b].replace(at, fresh[next++]);  // the old page stays with its other sharers
    }
    detail::Device& dev = *st.ps->device;
    detail::PageStorage& pages = *st.ps->pages;
    detail::record_page_copies(dev, pages, copies);
    st.ps->pages_copied += copies.size();
    for (uint32_t b = 0; b < B; ++b) {
        st.tables[b].adopt_back(std::span(fresh).subspan(next, plan[b].extra));
        next += plan[b].extra;
    }

    const uint32_t H = st.ps->config.num_kv_heads;
    std::vector<detail::RowEntry> entries;
    for (uint32_t b = 0; b < B; ++b) {
        const RowPlan& p = plan[b];
        auto slot_of = [&](int64_t position) {
            const int64_t s = p.start + position;
            return index(st.tables[b][size_t(s / bs)]) * bs + uint32_t(s % bs);
        };
        const int64_t from = std::max(old_len[b], p.drop);
        std::vector<uint8_t> written(size_t(std::max<int64_t>(0, new_len[b] - from)), 0);
        for (uint32_t s : keep[b]) {
            if (pos[b][s] < p.drop) continue;
            entries.push_back({b * H * S + s, slot_of(pos[b][s])});
            if (pos[b][s] >= from) written[size_t(pos[b][s] - from)] = 1;
        }
        // Positions skipped over when a write lands past the end read as zeros.
        for (int64_t q = from; q < new_len[b]; ++q)
            if (!written[size_t(q - from)]) entries.push_back({detail::kNone, slot_of(q)});
        st.start[layer][b] = new_len[b] > p.drop ? p.start + p.drop : 0;
        st.len[layer][b] = new_len[b] - p.drop;
    }
    record_kv(dev, pages, st.ps->layout, layer, key.buffer(), value.buffer(), entries, H, S, false);
    if (out) gather_into(layer, *out);
}

std::pair<Tensor, Tensor> PagedKVCache::empty_kv(uint32_t batch, int64_t tokens) const {
    const PoolConfig& c = state_->ps->config;
    const auto& dev = state_->ps->device;
    return {Tensor::empty(dev, {batch, c.num_kv_heads, tokens, c.head_dim}, c.dtype),
            Tensor::empty(dev, {batch, c.num_kv_heads, tokens, c.v_head_dim}, c.dtype)};
}

std::pair<Tensor, Tensor> PagedKVCache::gather(uint32_t layer) const {
    std::pair<Tensor, Tensor> kv = empty_kv(state_->batch, get_seq_length(layer));
    gather_into(layer, kv);
    return kv;
}

void PagedKVCache::gather_into(uint32_t layer, std::pair<Tensor, Tensor>& kv) const {
    const CacheState& st = *state_;
    const uint32_t B = st.batch;
    const int64_t L = kv.first.shape()[2];
    if (B == 0 || L == 0) return;
    const uint32_t H = st.ps->config.num_kv_heads;
    std::vector<detail::RowEntry> entries;
    entries.reserve(size_t(B) * size_t(L));
    for (uint32_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < L; ++t) {
            uint32_t slot = detail::kNone;
            if (t < st.len[layer][b]) slot = st.slot_of(layer, b, t);
            entries.push_back({uint32_t(b * H * L + t), slot});
        }
    record_kv(*st.ps->device, *st.ps->pages, st.ps->layout, layer, kv.first.buffer(),
              kv.second.buffer(), entries, H, uint32_t(L), true);
}

std::optional<std::pair<Tensor, Tensor>> PagedKVCache::get(uint32_t layer) const {
    auto l = lock(*state_);
    state_->check_layer(layer, "get");
    if (get_seq_length(layer) == 0) return std::nullopt;
    return gather(layer);
}

int64_t PagedKVCache::get_seq_length(uint32_t layer) const {
    auto l = lock(*state_);
    state_->check_layer(layer, "get_seq_length");
    if (state_->batch == 0) return 0;
    const auto& len = state_->len[layer];
    return *std::max_element(len.begin(), len.end());
}

std::vector<int64_t> PagedKVCache::seq_lengths(uint32_t layer) const {
    auto l = lock(*state_);
    state_->check_layer(layer, "seq_lengths");
    if (state_->batch == 0) return {};
    return state_->len[layer];
}

std::vector<uint32_t> PagedKVCache::block_table(uint32_t row) const {
    auto l = lock(*state_);
    if (row >= state_->batch)
        throw invalid(
            fmt::format("block_table: row {} out of range, batch is {}", row, state_->batch));
    std::vector<uint32_t> out;
    for (BlockId b : state_->tables[row].blocks())
        out.push_back(index(b));
    return out;
}

uint64_t PagedKVCache::pages_held() const {
    auto l = lock(*state_);
    std::unordered_set<uint32_t> s;
    for (const auto& t : state_->tables)
        for (BlockId b : t.blocks())
            s.insert(index(b));
    return s.size();
}

std::vector<int32_t> PagedKVCache::rows_for_select(std::span<const int32_t> indices,
                                                   const char* op) const {
    const CacheState& st = *state_;
    if (indices.size() > kMaxRows)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("{}: {} rows, more than the {} a cache holds", op, indices.size(),
                                kMaxRows));
    std::vector<int32_t> rows(indices.begin(), indices.end());
    for (size_t i = 0; i < rows.size(); ++i) {
        // Python semantics: -1 is the last row.
        const int64_t r = rows[i] < 0 ? int64_t(rows[i]) + st.batch : int64_t(rows[i]);
        if (st.batch == 0)
            throw invalid(fmt::format("{}: index {} at position {}, but the cache has no rows", op,
                                      rows[i], i));
        if (r < 0 || r >= int64_t(st.batch))
            throw invalid(
                fmt::format("{}: index {} at position {} out of range for a batch of {} "
                            "(valid: -{} to {})",
                            op, rows[i], i, st.batch, st.batch, int64_t(st.batch) - 1));
        rows[i] = int32_t(r);
    }
    if (st.batch != 0) check_capacity(uint32_t(rows.size()), {});
    return rows;
}

std::vector<int32_t> PagedKVCache::rows_for_reorder(std::span<const int32_t> beam_idx) const {
    if (beam_idx.size() != state_->batch)
        throw invalid(fmt::format("reorder_cache: {} indices for a batch of {}", beam_idx.size(),
                                  state_->batch));
    return rows_for_select(beam_idx, "reorder_cache");
}

std::vector<int32_t> PagedKVCache::rows_for_repeat(uint32_t repeats) const {
    const uint32_t batch = state_->batch;
    if (repeats == 0) throw invalid("batch_repeat_interleave: repeats must be at least 1");
    if (uint64_t(batch) * repeats > kMaxRows)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("batch_repeat_interleave: {} rows x {} repeats = {} rows, more "
                                "than the {} a cache holds",
                                batch, repeats, uint64_t(batch) * repeats, kMaxRows));
    std::vector<int32_t> rows;
    rows.reserve(size_t(batch) * repeats);
    for (uint32_t r = 0; r < batch; ++r)
        for (uint32_t j = 0; j < repeats; ++j)
            rows.push_back(int32_t(r));
    if (batch != 0) check_capacity(uint32_t(rows.size()), {});
    return rows;
}

void PagedKVCache::select_rows(std::span<const int32_t> rows) {
    CacheState& st = *state_;
    if (st.batch == 0) return;  // an empty cache: no index could be valid, none was given
    if (reserved()) return select_rows_by_copy(rows);
    std::vector<BlockTable> tables;  // built aside: running out of host memory changes nothing
    tables.reserve(rows.size());
    for (int32_t r : rows)
        tables.push_back(st.tables[size_t(r)].fork());
    CacheState::Lengths lengths = st.selected_lengths(rows);
    st.len = std::move(lengths.len);
    st.start = std::move(lengths.start);
    st.tables = std::move(tables);  // the old tables drop their references
    st.batch = uint32_t(rows.size());
    if (st.batch == 0) reset();
}

void PagedKVCache::reorder_cache(std::span<const int32_t> beam_idx) {
    auto l = lock(*state_);
    host_memory_guard("reorder_cache", [&] { select_rows(rows_for_reorder(beam_idx)); });
}

void PagedKVCache::batch_select_indices(std::span<const int32_t> indices) {
    auto l = lock(*state_);
    host_memory_guard("batch_select_indices",
                      [&] { select_rows(rows_for_select(indices, "batch_select_indices")); });
}

void PagedKVCache::batch_repeat_interleave(uint32_t repeats) {
    auto l = lock(*state_);
    host_memory_guard("batch_repeat_interleave", [&] { select_rows(rows_for_repeat(repeats)); });
}

void PagedKVCache::crop(int64_t max_length) {
    CacheState& st = *state_;
    auto l = lock(st);
    if (max_length < 0)
        throw invalid(fmt::format("crop: max_length must be >= 0, got {}", max_length));
    // A reserved cache moves the kept tokens: the scratch space for that comes first, so
    // that running out of memory for it changes nothing.
    std::pair<Tensor, Tensor> scratch;
    if (reserved() && st.batch) {
        int64_t most = 0;
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
            int64_t kept = 0;
            for (uint32_t b = 0; b < st.batch; ++b)
                kept += std::min(st.len[layer][b], max_length);
            most = std::max(most, kept);
        }
        scratch = empty_kv(1, most);
    }
    for (uint32_t layer = 0; layer < st.num_layers() && st.batch; ++layer)
        for (uint32_t b = 0; b < st.batch; ++b)
            drop_front(layer, b, st.len[layer][b] - max_length);
    if (reserved()) return compact_rows(scratch);
    for (uint32_t b = 0; b < st.batch; ++b)
        trim_pages(b);
}

void PagedKVCache::truncate(int64_t length) {
    CacheState& st = *state_;
    auto l = lock(st);
    for (uint32_t layer = 0; layer < st.num_layers() && st.batch; ++layer)
        for (int64_t& n : st.len[layer])
            n = length >= 0 ? std::min(n, length) : std::max<int64_t>(0, n + length);
    for (uint32_t b = 0; b < st.batch; ++b)
        trim_pages(b);
}

void PagedKVCache::reset() {
    CacheState& st = *state_;
    auto l = lock(st);
    if (reserved()) {  // the reservation stays; the rows become empty
        for (auto& v : st.len)
            std::fill(v.begin(), v.end(), 0);
        for (auto& v : st.start)
            std::fill(v.begin(), v.end(), 0);
        return;
    }
    st.tables.clear();
    st.len.clear();
    st.start.clear();
    st.batch = 0;
}

void PagedKVCache::select_rows_by_copy(std::span<const int32_t> rows) {
    CacheState& st = *state_;
    // The first row to pick an old row takes its table; a repeat gets a table no row picked
    // (or a spare) and a copy of the pages. Sources are never overwritten: they are picked.
    std::vector<uint8_t> picked(st.batch, 0);
    size_t distinct = 0;
    for (int32_t r : rows)
        distinct += picked[size_t(r)] ? 0 : (picked[size_t(r)] = 1);
    // Rows plus spare tables are the whole reservation (restore checks it), so the tables no
    // row picks are enough for the repeats; checked anyway before anything moves.
    if (rows.size() - distinct > st.spare.size() + (st.batch - distinct))
        throw Error(
            ErrorCode::CapacityExceeded,
            fmt::format("{}: {} repeated rows but only {} reserved tables are free", st.name,
                        rows.size() - distinct, st.spare.size() + (st.batch - distinct)));
    CacheState::Lengths lengths = st.selected_lengths(rows);
    std::vector<BlockTable> free_tables, out;
    free_tables.reserve(st.spare.size() + st.batch);
    out.reserve(rows.size());
    std::vector<int32_t> owner(st.batch, -1);  // the new row that took old row r's table
    std::vector<std::pair<uint32_t, uint32_t>> copies;
    const uint32_t bs = st.block_size();
    size_t pages = 0;
    for (size_t i = 0; i < rows.size(); ++i)
        pages += size_t(ceil_div(uint64_t(st.extent(uint32_t(rows[i]))), bs));
    copies.reserve(pages);
    // Nothing below allocates host memory.
    for (auto& t : st.spare)
        free_tables.push_back(std::move(t));
    st.spare.clear();
    for (uint32_t r = 0; r < st.batch; ++r)
        if (!picked[r]) free_tables.push_back(std::move(st.tables[r]));
    for (size_t i = 0; i < rows.size(); ++i) {
        const uint32_t r = uint32_t(rows[i]);
        if (owner[r] < 0) {
            owner[r] = int32_t(i);
            out.push_back(std::move(st.tables[r]));
            continue;
        }
        BlockTable t = std::move(free_tables.back());
        free_tables.pop_back();
        const BlockTable& src = out[size_t(owner[r])];
        const size_t n = size_t(ceil_div(uint64_t(st.extent(r)), bs));
        for (size_t b = 0; b < n; ++b)
            copies.emplace_back(index(src[b]), index(t[b]));
        out.push_back(std::move(t));
    }
    detail::record_page_copies(*st.ps->device, *st.ps->pages, copies);
    st.ps->pages_copied += copies.size();
    st.len = std::move(lengths.len);
    st.start = std::move(lengths.start);
    st.tables = std::move(out);
    st.spare = std::move(free_tables);
    st.batch = uint32_t(rows.size());
}

// Moves every row's tokens so they start at slot 0 of its first page (a gather into a scratch
// tensor, then a scatter back): a reserved cache's capacity stays max_cache_len after crop.
void PagedKVCache::compact_rows(std::pair<Tensor, Tensor>& scratch) {
    CacheState& st = *state_;
    for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
        std::vector<uint32_t> from, to;
        for (uint32_t b = 0; b < st.batch; ++b) {
            if (st.start[layer][b] == 0) continue;
            for (int64_t t = 0; t < st.len[layer][b]; ++t)
                from.push_back(st.slot_of(layer, b, t));
            st.start[layer][b] = 0;
            for (int64_t t = 0; t < st.len[layer][b]; ++t)
                to.push_back(st.slot_of(layer, b, t));
        }
        move_tokens(layer, from, to, scratch);
    }
}

void PagedKVCache::move_tokens(uint32_t layer, std::span<const uint32_t> from,
                               std::span<const uint32_t> to, std::pair<Tensor, Tensor>& scratch) {
    if (from.empty()) return;
    CacheState& st = *state_;
    const PoolConfig& c = st.ps->config;
    const detail::PageLayout& lay = st.ps->layout;
    const uint32_t n = uint32_t(from.size());
    const auto stride = uint32_t(scratch.first.shape()[2]);  // at least n
    std::vector<detail::RowEntry> in, out;
    for (uint32_t i = 0; i < n; ++i) {
        in.push_back({i, from[i]});
        out.push_back({i, to[i]});
    }
    detail::Device& dev = *st.ps->device;
    for (bool value : {false, true}) {
        const uint64_t row_bytes = value ? lay.v_row_bytes() : lay.k_row_bytes();
        detail::Buffer& buf = value ? scratch.second.buffer() : scratch.first.buffer();
        detail::record_row_copy(
            dev, *st.ps->pages,
            {&buf, in, c.num_kv_heads, row_bytes, stride, lay.page_offset(layer, value), true});
        detail::record_row_copy(
            dev, *st.ps->pages,
            {&buf, out, c.num_kv_heads, row_bytes, stride, lay.page_offset(layer, value), false});
    }
}

void PagedKVCache::insert(const KVCache& other_base, uint32_t other_row, uint32_t slot) {
    CacheState& st = *state_;
    auto l = lock(st);
    const auto* other = dynamic_cast<const PagedKVCache*>(&other_base);
    if (!other || other->state_->ps != st.ps)
        throw invalid("insert: the other cache must be a paged cache over the same pool");
    if (other == this) throw invalid("insert: a cache cannot insert its own row");
    const CacheState& os = *other->state_;
    if (other_row >= os.batch)
        throw invalid(fmt::format("insert: other_row {} out of range, the other cache has {} rows",
                                  other_row, os.batch));
    if (slot > st.batch)
        throw invalid(fmt::format("insert: slot {} out of range, batch is {} (use {} to append)",
                                  slot, st.batch, st.batch));
    if (reserved() && slot >= st.batch)
        throw Error(
            ErrorCode::CapacityExceeded,
            fmt::format("insert: slot {} is past this cache's batch_size {}", slot, st.batch));
    std::vector<int64_t> lens;
    for (uint32_t layer = 0; layer < st.num_layers(); ++layer)
        lens.push_back(os.len[layer][other_row]);
    check_capacity(slot == st.batch ? st.batch + 1 : st.batch, lens);
    // A sliding window keeps its window of the inserted row (the rest goes back to the pool).
    auto keep_window = [&] {
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer)
            drop_front(layer, slot, st.len[layer][slot] - keep_limit());
        if (!reserved()) trim_pages(slot);
    };
    if (reserved() || other->reserved()) {
        // A reserved cache's pages are never shared: copy the tokens, aligned at slot 0, into
        // this cache's own pages (its reservation, or fresh pages for a growing cache).
        const uint32_t bs = st.block_size();
        const int64_t longest = *std::max_element(lens.begin(), lens.end());
        std::pair<Tensor, Tensor> scratch = empty_kv(1, longest);  // before anything changes
        BlockTable target(st.ps->allocator);
        if (!reserved()) {
            std::vector<BlockId> fresh;
            st.ps->allocator.allocate(ceil_div(uint64_t(longest), bs), fresh);
            target.adopt_back(fresh);
        }
        if (st.batch == 0) {
            st.len.assign(st.num_layers(), {});
            st.start.assign(st.num_layers(), {});
        }
        if (slot == st.batch) {
            st.tables.push_back(std::move(target));
            for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
                st.len[layer].push_back(0);
                st.start[layer].push_back(0);
            }
            ++st.batch;
        } else if (!reserved()) {
            st.tables[slot] = std::move(target);
        }
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
            st.start[layer][slot] = 0;
            st.len[layer][slot] = lens[layer];
            std::vector<uint32_t> from, to;
            for (int64_t t = 0; t < lens[layer]; ++t) {
                from.push_back(os.slot_of(layer, other_row, t));
                to.push_back(st.slot_of(layer, slot, t));
            }
            move_tokens(layer, from, to, scratch);
        }
        keep_window();
        return;
    }
    BlockTable shared = os.tables[other_row].fork();
    if (st.batch == 0) {
        st.len.assign(st.num_layers(), {});
        st.start.assign(st.num_layers(), {});
    }
    if (slot == st.batch) {
        st.tables.push_back(std::move(shared));
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
            st.len[layer].push_back(os.len[layer][other_row]);
            st.start[layer].push_back(os.start[layer][other_row]);
        }
        ++st.batch;
    } else {
        st.tables[slot] = std::move(shared);
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
            st.len[layer][slot] = os.len[layer][other_row];
            st.start[layer][slot] = os.start[layer][other_row];
        }
    }
    keep_window();
}

void PagedKVCache::drop_front(uint32_t layer, uint32_t row, int64_t n) {
    CacheState& st = *state_;
    if (n <= 0) return;
    n = std::min(n, st.len[layer][row]);
    st.start[layer][row] += n;
    st.len[layer][row] -= n;
}

void PagedKVCache::trim_pages(uint32_t row) {
    CacheState& st = *state_;
    const uint32_t bs = st.block_size();
    BlockTable& t = st.tables[row];
    // Leading pages no layer reaches any more go back to the pool.
    int64_t first = INT64_MAX;
    for (uint32_t l = 0; l < st.num_layers(); ++l)
        if (st.len[l][row] > 0) first = std::min(first, st.start[l][row]);
    if (first == INT64_MAX) {  // the row is empty in every layer
        for (uint32_t l = 0; l < st.num_layers(); ++l)
            st.start[l][row] = 0;
        first = 0;
    }
    const size_t lead = reserved() ? 0 : std::min(t.size(), size_t(first / bs));
    if (lead) t.release_front(lead);
    // An empty layer starts at slot 0 (restore checks it: a start past the row's pages would
    // make the next write reach for pages it does not need).
    for (uint32_t l = 0; l < st.num_layers(); ++l)
        st.start[l][row] = st.len[l][row] > 0 ? st.start[l][row] - int64_t(lead) * bs : 0;
    const size_t want = size_t(ceil_div(uint64_t(st.extent(row)), bs));
    if (!reserved() && t.size() > want) t.release_back(t.size() - want);
}

}  // namespace pagedkv
