#include "pagedkv/paged_kv_cache.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "cache/cache_state.hpp"
#include "pagedkv/error.hpp"
#include "shaders/page_copy.hpp"
#include "shaders/row_copy.hpp"

namespace pagedkv {

using detail::CacheState;

namespace {

Error invalid(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

detail::Device::CallLock lock(const CacheState& st) {
    return detail::Device::CallLock(*st.ps->device);
}

uint64_t ceil_div(uint64_t a, uint64_t b) {
    return (a + b - 1) / b;
}

// Checks key/value against the pool layout and returns (batch, seq_len).
std::pair<uint32_t, uint32_t> check_kv(const CacheState& st, const Tensor& key,
                                       const Tensor& value) {
    const PoolConfig& c = st.ps->config;
    auto check_one = [&](const Tensor& t, const char* what, uint32_t dim) {
        if (!t.defined()) throw invalid(fmt::format("update: {} is undefined", what));
        if (&t.device() != st.ps->device.get())
            throw invalid(fmt::format("update: {} lives on another Context than the pool", what));
        if (t.dtype() != c.dtype)
            throw invalid(fmt::format("update: {} has dtype {}, pool holds {}", what,
                                      to_string(t.dtype()), to_string(c.dtype)));
        const auto& s = t.shape();
        if (s.size() != 4)
            throw invalid(fmt::format(
                "update: {} must be (batch, kv_heads, seq_len, head_dim), got shape [{}]", what,
                fmt::join(s, ", ")));
        if (s[1] != c.num_kv_heads)
            throw invalid(fmt::format("update: {} has {} heads, pool layout has {} kv heads", what,
                                      s[1], c.num_kv_heads));
        if (s[3] != dim)
            throw invalid(
                fmt::format("update: {} has head_dim {}, pool layout has {}", what, s[3], dim));
        if (s[0] < 1 || s[0] > INT32_MAX || s[2] > INT32_MAX)
            throw invalid(fmt::format("update: {} has batch {} and seq_len {}", what, s[0], s[2]));
    };
    check_one(key, "key", c.head_dim);
    check_one(value, "value", c.v_head_dim);
    if (key.shape()[0] != value.shape()[0] || key.shape()[2] != value.shape()[2])
        throw invalid(fmt::format("update: key is [{}] but value is [{}]",
                                  fmt::join(key.shape(), ", "), fmt::join(value.shape(), ", ")));
    return {uint32_t(key.shape()[0]), uint32_t(key.shape()[2])};
}

// Positions of the new tokens, per row; throws before anything changes.
std::vector<std::vector<int64_t>> resolve_positions(const CachePosition& cp, uint32_t batch,
                                                    uint32_t seq,
                                                    const std::vector<int64_t>& old_len) {
    std::vector<std::vector<int64_t>> pos(batch, std::vector<int64_t>(seq));
    using K = CachePosition::Kind;
    switch (cp.kind()) {
        case K::Append:
            for (uint32_t b = 0; b < batch; ++b)
                for (uint32_t s = 0; s < seq; ++s)
                    pos[b][s] = old_len[b] + s;
            break;
        case K::Scalar:
            for (uint32_t b = 0; b < batch; ++b)
                for (uint32_t s = 0; s < seq; ++s)
                    pos[b][s] = cp.scalar() + s;
            break;
        case K::Vector:
            if (cp.vector().size() != seq)
                throw invalid(fmt::format("update: cache_position has {} entries, seq_len is {}",
                                          cp.vector().size(), seq));
            for (uint32_t b = 0; b < batch; ++b)
                pos[b] = cp.vector();
            break;
        case K::Matrix:
            if (cp.matrix().size() != batch)
                throw invalid(fmt::format("update: cache_position has {} rows, batch is {}",
                                          cp.matrix().size(), batch));
            for (uint32_t b = 0; b < batch; ++b) {
                if (cp.matrix()[b].size() != seq)
                    throw invalid(
                        fmt::format("update: cache_position row {} has {} entries, seq_len is {}",
                                    b, cp.matrix()[b].size(), seq));
                pos[b] = cp.matrix()[b];
            }
            break;
    }
    for (uint32_t b = 0; b < batch; ++b)
        for (int64_t p : pos[b])
            if (p < 0 || p >= INT32_MAX)
                throw invalid(
                    fmt::format("update: cache_position {} (row {}) is out of range", p, b));
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
    auto l = lock(*state_);
    state_->tables.clear();
}

void PagedKVCache::check_capacity(uint32_t, std::span<const int64_t>) const {}
void PagedKVCache::after_write(uint32_t) {}

BlockPool& PagedKVCache::pool() const noexcept {
    return *state_->pool;
}
uint32_t PagedKVCache::batch_size() const {
    auto l = lock(*state_);
    return state_->batch;
}

std::pair<Tensor, Tensor> PagedKVCache::update(const Tensor& key, const Tensor& value,
                                               uint32_t layer, const CachePosition& cp) {
    auto l = lock(*state_);
    write(key, value, layer, cp);
    return gather(layer);
}

void PagedKVCache::write(const Tensor& key, const Tensor& value, uint32_t layer,
                         const CachePosition& cp) {
    CacheState& st = *state_;
    auto l = lock(st);
    st.check_layer(layer, "update");
    const auto [B, S] = check_kv(st, key, value);
    check_capacity(B, {});
    if (st.batch != 0 && B != st.batch)
        throw invalid(fmt::format("update: key has batch {}, cache holds {} rows", B, st.batch));
    const bool fresh_batch = st.batch == 0;
    const std::vector<int64_t> old_len = fresh_batch ? std::vector<int64_t>(B, 0) : st.len[layer];
    auto pos = resolve_positions(cp, B, S, old_len);

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

    const uint32_t bs = st.block_size();
    BlockAllocator& alloc = st.ps->allocator;
    auto start_of = [&](uint32_t b) { return fresh_batch ? int64_t(0) : st.start[layer][b]; };
    // Pages to add at the end of each row, and shared pages to copy before writing them.
    std::vector<uint64_t> extra(B, 0);
    std::vector<std::pair<uint32_t, size_t>> cow;
    uint64_t needed = 0;
    for (uint32_t b = 0; b < B; ++b) {
        const size_t have = fresh_batch ? 0 : st.tables[b].size();
        int64_t reach = start_of(b) + new_len[b];
        if (!fresh_batch) reach = std::max(reach, st.extent(b));
        const uint64_t want = ceil_div(uint64_t(reach), bs);
        extra[b] = want > have ? want - have : 0;
        needed += extra[b];
        if (have == 0) continue;
        std::unordered_set<size_t> shared;
        auto touch = [&](int64_t p) {
            const size_t bi = size_t((start_of(b) + p) / bs);
            if (bi < have && alloc.refcount(st.tables[b][bi]) > 1) shared.insert(bi);
        };
        for (uint32_t s : keep[b])
            touch(pos[b][s]);
        for (int64_t p = old_len[b]; p < new_len[b]; ++p)
            touch(p);
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
    std::vector<BlockId> fresh;
    alloc.allocate(needed + cow.size(), fresh);  // throws OutOfBlocks with nothing changed

    // Nothing below fails on bad input: the change is committed.
    if (fresh_batch) {
        st.batch = B;
        for (uint32_t b = 0; b < B; ++b)
            st.tables.emplace_back(alloc);
        st.len.assign(st.num_layers(), std::vector<int64_t>(B, 0));
        st.start.assign(st.num_layers(), std::vector<int64_t>(B, 0));
    }
    size_t next = 0;
    std::vector<std::pair<uint32_t, uint32_t>> copies;
    for (auto [b, bi] : cow) {
        copies.emplace_back(index(st.tables[b][bi]), index(fresh[next]));
        st.tables[b].replace(bi, fresh[next++]);  // the old page stays with its other sharers
    }
    detail::Device& dev = *st.ps->device;
    detail::PageStorage& pages = *st.ps->pages;
    detail::record_page_copies(dev, pages, copies);
    st.ps->pages_copied += copies.size();
    for (uint32_t b = 0; b < B; ++b) {
        st.tables[b].adopt_back(std::span(fresh).subspan(next, extra[b]));
        next += extra[b];
    }

    const uint32_t H = st.ps->config.num_kv_heads;
    std::vector<detail::RowEntry> entries;
    auto slot_of = [&](uint32_t b, int64_t p) { return st.slot_of(layer, b, p); };
    for (uint32_t b = 0; b < B; ++b) {
        std::vector<uint8_t> written(size_t(new_len[b] - old_len[b]), 0);
        for (uint32_t s : keep[b]) {
            entries.push_back({b * H * S + s, slot_of(b, pos[b][s])});
            if (pos[b][s] >= old_len[b]) written[size_t(pos[b][s] - old_len[b])] = 1;
        }
        // Positions skipped over when a write lands past the end read as zeros.
        for (int64_t p = old_len[b]; p < new_len[b]; ++p)
            if (!written[size_t(p - old_len[b])]) entries.push_back({detail::kNone, slot_of(b, p)});
    }
    record_kv(dev, pages, st.ps->layout, layer, key.buffer(), value.buffer(), entries, H, S, false);
    st.len[layer] = new_len;
    after_write(layer);
}

std::pair<Tensor, Tensor> PagedKVCache::gather(uint32_t layer) const {
    const CacheState& st = *state_;
    const PoolConfig& c = st.ps->config;
    const uint32_t B = st.batch;
    const int64_t L = get_seq_length(layer);
    const auto& dev_ptr = st.ps->device;
    Tensor k = Tensor::empty(dev_ptr, {B, c.num_kv_heads, L, c.head_dim}, c.dtype);
    Tensor v = Tensor::empty(dev_ptr, {B, c.num_kv_heads, L, c.v_head_dim}, c.dtype);
    if (B == 0 || L == 0) return {k, v};
    const uint32_t H = c.num_kv_heads;
    std::vector<detail::RowEntry> entries;
    entries.reserve(size_t(B) * size_t(L));
    for (uint32_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < L; ++t) {
            uint32_t slot = detail::kNone;
            if (t < st.len[layer][b]) slot = st.slot_of(layer, b, t);
            entries.push_back({uint32_t(b * H * L + t), slot});
        }
    record_kv(*dev_ptr, *st.ps->pages, st.ps->layout, layer, k.buffer(), v.buffer(), entries, H,
              uint32_t(L), true);
    return {k, v};
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

void PagedKVCache::select_rows(std::span<const int32_t> rows, const char* op) {
    CacheState& st = *state_;
    for (size_t i = 0; i < rows.size(); ++i)
        if (rows[i] < 0 || uint32_t(rows[i]) >= st.batch)
            throw invalid(fmt::format("{}: index {} at position {} out of range, batch is {}", op,
                                      rows[i], i, st.batch));
    if (st.batch == 0) return;  // an empty cache: no index could be valid, none was given
    check_capacity(uint32_t(rows.size()), {});
    if (reserved()) return select_rows_by_copy(rows);
    std::vector<BlockTable> tables;
    tables.reserve(rows.size());
    for (int32_t r : rows)
        tables.push_back(st.tables[size_t(r)].fork());
    st.select_lengths(rows);
    st.tables = std::move(tables);  // the old tables drop their references
    st.batch = uint32_t(rows.size());
    if (st.batch == 0) reset();
}

void PagedKVCache::reorder_cache(std::span<const int32_t> beam_idx) {
    auto l = lock(*state_);
    if (beam_idx.size() != state_->batch)
        throw invalid(fmt::format("reorder_cache: {} indices for a batch of {}", beam_idx.size(),
                                  state_->batch));
    select_rows(beam_idx, "reorder_cache");
}

void PagedKVCache::batch_select_indices(std::span<const int32_t> indices) {
    auto l = lock(*state_);
    select_rows(indices, "batch_select_indices");
}

void PagedKVCache::batch_repeat_interleave(uint32_t repeats) {
    auto l = lock(*state_);
    if (repeats == 0) throw invalid("batch_repeat_interleave: repeats must be at least 1");
    std::vector<int32_t> rows;
    for (uint32_t r = 0; r < state_->batch; ++r)
        for (uint32_t j = 0; j < repeats; ++j)
            rows.push_back(int32_t(r));
    select_rows(rows, "batch_repeat_interleave");
}

void PagedKVCache::crop(int64_t max_length) {
    CacheState& st = *state_;
    auto l = lock(st);
    if (max_length < 0)
        throw invalid(fmt::format("crop: max_length must be >= 0, got {}", max_length));
    for (uint32_t layer = 0; layer < st.num_layers() && st.batch; ++layer)
        for (uint32_t b = 0; b < st.batch; ++b)
            drop_front(layer, b, st.len[layer][b] - max_length);
    if (reserved()) return compact_rows();
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
    for (int32_t r : rows)
        picked[size_t(r)] = 1;
    std::vector<BlockTable> free_tables = std::move(st.spare);
    st.spare.clear();
    for (uint32_t r = 0; r < st.batch; ++r)
        if (!picked[r]) free_tables.push_back(std::move(st.tables[r]));
    std::vector<BlockTable> out;
    std::vector<int32_t> owner(st.batch, -1);  // the new row that took old row r's table
    std::vector<std::pair<uint32_t, uint32_t>> copies;
    const uint32_t bs = st.block_size();
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
    st.select_lengths(rows);
    st.tables = std::move(out);
    st.spare = std::move(free_tables);
    st.batch = uint32_t(rows.size());
}

// Moves every row's tokens so they start at slot 0 of its first page (a gather into a scratch
// tensor, then a scatter back): a reserved cache's capacity stays max_cache_len after crop.
void PagedKVCache::compact_rows() {
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
        move_tokens(layer, from, to);
    }
}

void PagedKVCache::move_tokens(uint32_t layer, std::span<const uint32_t> from,
                               std::span<const uint32_t> to) {
    if (from.empty()) return;
    CacheState& st = *state_;
    const PoolConfig& c = st.ps->config;
    const detail::PageLayout& lay = st.ps->layout;
    const uint32_t n = uint32_t(from.size());
    std::vector<detail::RowEntry> in, out;
    for (uint32_t i = 0; i < n; ++i) {
        in.push_back({i, from[i]});
        out.push_back({i, to[i]});
    }
    detail::Device& dev = *st.ps->device;
    for (bool value : {false, true}) {
        const uint32_t dim = value ? c.v_head_dim : c.head_dim;
        const uint64_t row_bytes = value ? lay.v_row_bytes() : lay.k_row_bytes();
        Tensor scratch = Tensor::empty(st.ps->device, {1, c.num_kv_heads, n, dim}, c.dtype);
        detail::record_row_copy(dev, *st.ps->pages,
                                {&scratch.buffer(), in, c.num_kv_heads, row_bytes, n,
                                 lay.page_offset(layer, value), true});
        detail::record_row_copy(dev, *st.ps->pages,
                                {&scratch.buffer(), out, c.num_kv_heads, row_bytes, n,
                                 lay.page_offset(layer, value), false});
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
    if (reserved() || other->reserved()) {
        // A reserved cache's pages are never shared: copy the tokens, aligned at slot 0, into
        // this cache's own pages (its reservation, or fresh pages for a growing cache).
        const uint32_t bs = st.block_size();
        const int64_t longest = *std::max_element(lens.begin(), lens.end());
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
            move_tokens(layer, from, to);
        }
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
    if (lead) {
        t.release_front(lead);
        for (uint32_t l = 0; l < st.num_layers(); ++l)
            st.start[l][row] = st.len[l][row] > 0 ? st.start[l][row] - int64_t(lead) * bs : 0;
    }
    const size_t want = size_t(ceil_div(uint64_t(st.extent(row)), bs));
    if (!reserved() && t.size() > want) t.release_back(t.size() - want);
}

}  // namespace pagedkv
