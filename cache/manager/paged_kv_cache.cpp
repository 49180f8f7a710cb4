#include "pagedkv/paged_kv_cache.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <mutex>
#include <unordered_set>

#include "cache/manager/cache_state.hpp"
#include "cache/manager/converted.hpp"
#include "cache/manager/kv_copy.hpp"
#include "cache/manager/shards.hpp"
#include "cache/manager/update_plan.hpp"
#include "pagedkv/error.hpp"
#include "shaders/kernels/convert.hpp"
#include "shaders/kernels/page_copy.hpp"
#include "shaders/kernels/row_copy.hpp"
#include "shaders/vulkan/batch.hpp"

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
        if (&detail::Access::device(t) != st.ps->device.get())
            throw invalid(fmt::format("{}: {} lives on another Context than the pool", op, what));
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

}  // namespace

PagedKVCache::PagedKVCache(BlockPool& pool, std::unique_ptr<const detail::CachePolicy> policy)
    : state_(std::make_unique<CacheState>(pool, std::move(policy))) {
    // A reserved cache (static) keeps one reservation per row: not built for layer groups.
    if (state_->policy->reserved()) state_->ps->refuse_hybrid(state_->name);
}

PagedKVCache::~PagedKVCache() {
    if (!state_) return;
    // Under the device lock: the tables give their pages back, spare ones included (another
    // thread may be allocating from the same pool).
    detail::Device::CallLock l(*state_->ps->device);
    state_->clear_rows();
    state_->spare.clear();
}

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
    st.policy->check_capacity(B, {});
    BlockAllocator& alloc = st.ps->allocator;
    const uint32_t group = st.ps->groups.group_of[layer];
    const detail::RowsState rows{st.block_size(),
                                 st.num_layers(),
                                 st.batch,
                                 st.rows,
                                 group,
                                 st.ps->hybrid()
                                     ? std::span<const uint32_t>(st.ps->groups.layers[group])
                                     : std::span<const uint32_t>()};
    detail::UpdatePlan& plan = st.scratch.plan;
    detail::plan_update(rows, alloc, layer, B, S, cp, {st.keep_limit(layer), st.policy->reserved()},
                        op, plan);
    st.policy->check_capacity(B, plan.grown_lengths());
    plan.check_pages(alloc, op);
    // Inputs of another float dtype than the pool's (a quantized pool's: than the key's) are
    // converted on the device first, before anything changes (the conversion writes only its
    // own new tensors).
    const DType in = detail::kv_tensor_dtype(st.ps->format, key.dtype());
    const Tensor k = detail::converted(key, in);
    const Tensor v = detail::converted(value, in);
    // What update() returns, and the upload space for the scatter's and gather's entries (one
    // upload per op, two ops at most each), are allocated before anything changes: running out
    // of memory for them leaves the cache as it was.
    // So is the compute-dtype copy of it (an unquantized pool with another compute dtype), and
    // the kernels' limits are checked first.
    const PoolConfig& c = st.ps->config;
    detail::check_kv_rows(
        st.ps->format,
        uint64_t(B) * c.num_kv_heads * uint64_t(std::max<int64_t>(S, out ? plan.longest() : 0)),
        op);
    using detail::Batches;
    size_t upload = 2 * Batches::upload_bytes(plan.slots_written() * sizeof(detail::RowEntry));
    std::pair<Tensor, Tensor> in_compute;
    if (out) {
        *out = empty_kv(B, plan.longest());
        upload += 2 * Batches::upload_bytes(size_t(B) * size_t(plan.longest()) *
                                            sizeof(detail::RowEntry));
        if (out->first.dtype() != *c.compute_dtype) {
            detail::check_convert(uint64_t(std::max(out->first.numel(), out->second.numel())), op);
            const auto& dev = st.ps->device;
            in_compute = {detail::Access::empty_tensor(dev, out->first.shape(), *c.compute_dtype),
                          detail::Access::empty_tensor(dev, out->second.shape(), *c.compute_dtype)};
        }
    }
    st.ps->device->batches().reserve_upload(upload);
    apply(plan, k, v);
    if (out) {
        gather_into(layer, *out);
        if (in_compute.first.defined()) {
            for (auto [from, to] : {std::pair{&out->first, &in_compute.first},
                                    std::pair{&out->second, &in_compute.second}})
                detail::record_convert(*st.ps->device, detail::Access::buffer(*from), from->dtype(),
                                       detail::Access::buffer(*to), to->dtype(),
                                       uint64_t(from->numel()));
            *out = std::move(in_compute);
        }
    }
}

void PagedKVCache::apply(detail::UpdatePlan& plan, const Tensor& key, const Tensor& value) {
    // Nothing below fails on bad input: the change is committed.
    CacheState& st = *state_;
    BlockAllocator& alloc = st.ps->allocator;
    const uint32_t bs = st.block_size(), B = plan.batch, S = plan.seq, layer = plan.layer;
    if (plan.fresh_batch) {
        std::vector<detail::Sequence> fresh_rows;
        fresh_rows.reserve(B);
        for (uint32_t b = 0; b < B; ++b)
            fresh_rows.push_back(st.empty_sequence());
        st.set_rows(std::move(fresh_rows));
    }
    // Leading pages first, so that the pages they free can be taken again below. (This layer's
    // start moves too; it is set from the plan below.)
    const uint32_t group = st.ps->groups.group_of[layer];
    for (uint32_t b = 0; b < B; ++b) {
        detail::UpdatePlan::Row& p = plan.rows[b];
        if (p.lead == 0) continue;
        st.release_leading(b, group, p.lead);
        p.start -= int64_t(p.lead) * bs;
    }
    std::vector<BlockId>& fresh = st.scratch.fresh;
    fresh.clear();
    alloc.allocate(plan.needed, fresh);  // cannot fail: check_pages
    size_t next = 0;
    std::vector<std::pair<uint32_t, uint32_t>>& copies = st.scratch.copies;
    copies.clear();
    for (auto [b, bi] : plan.copies) {
        const size_t at = bi - plan.rows[b].lead;
        copies.emplace_back(index(st.table(b, layer)[at]), index(fresh[next]));
        st.table(b, layer).replace(at, fresh[next++]);  // the old page stays with its sharers
    }
    detail::record_page_copies(*st.ps, copies);
    st.ps->pages_copied += copies.size();
    for (uint32_t b = 0; b < B; ++b) {
        st.table(b, layer).adopt_back(std::span(fresh).subspan(next, plan.rows[b].extra));
        next += plan.rows[b].extra;
    }

    const uint32_t H = st.ps->config.num_kv_heads;
    std::vector<detail::RowEntry>& entries = st.scratch.entries;
    entries.clear();
    std::vector<uint8_t>& written = st.scratch.written;
    for (uint32_t b = 0; b < B; ++b) {
        const detail::UpdatePlan::Row& p = plan.rows[b];
        auto slot_of = [&](int64_t position) { return st.slot_at(b, layer, p.start + position); };
        const int64_t from = std::max(p.old_len, p.drop);
        written.assign(size_t(std::max<int64_t>(0, p.new_len - from)), 0);
        for (uint32_t s : p.keep) {
            if (p.pos[s] < p.drop) continue;
            entries.push_back({b * H * S + s, slot_of(p.pos[s])});
            if (p.pos[s] >= from) written[size_t(p.pos[s] - from)] = 1;
        }
        // Positions skipped over when a write lands past the end read as zeros.
        for (int64_t q = from; q < p.new_len; ++q)
            if (!written[size_t(q - from)]) entries.push_back({detail::kNone, slot_of(q)});
        st.start(layer, b) = p.new_len > p.drop ? p.start + p.drop : 0;
        st.len(layer, b) = p.new_len - p.drop;
        if (p.drop > 0 && st.ps->hybrid())  // tokens seen stay counted (get_seq_length)
            st.set_dropped(layer, b, st.dropped(layer, b) + p.drop);
    }
    detail::record_kv_all(*st.ps, layer, key, value, entries, S, false);
}

std::pair<Tensor, Tensor> PagedKVCache::empty_kv(uint32_t batch, int64_t tokens) const {
    const PoolConfig& c = state_->ps->config;
    const auto& dev = state_->ps->device;
    // What the pages gather into: the compute dtype for quantized pages, else the pool's.
    const DType t = detail::kv_tensor_dtype(state_->ps->format, *c.compute_dtype);
    return {detail::Access::empty_tensor(dev, {batch, c.num_kv_heads, tokens, c.head_dim}, t),
            detail::Access::empty_tensor(dev, {batch, c.num_kv_heads, tokens, c.v_head_dim}, t)};
}

std::pair<Tensor, Tensor> PagedKVCache::gather(uint32_t layer) const {
    std::pair<Tensor, Tensor> kv = empty_kv(state_->batch, state_->longest(layer));
    gather_into(layer, kv);
    return detail::converted(kv, *state_->ps->config.compute_dtype);
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
            if (t < st.len(layer, b)) slot = st.slot_of(layer, b, t);
            entries.push_back({uint32_t(b * H * L + t), slot});
        }
    detail::record_kv_all(*st.ps, layer, kv.first, kv.second, entries, uint32_t(L), true);
}

std::optional<std::pair<Tensor, Tensor>> PagedKVCache::get(uint32_t layer) const {
    auto l = lock(*state_);
    state_->check_layer(layer, "get");
    if (state_->longest(layer) == 0) return std::nullopt;
    return gather(layer);
}

int64_t PagedKVCache::get_seq_length(uint32_t layer) const {
    auto l = lock(*state_);
    state_->check_layer(layer, "get_seq_length");
    return state_->longest_seen(layer);
}

std::vector<int64_t> PagedKVCache::seq_lengths(uint32_t layer) const {
    auto l = lock(*state_);
    state_->check_layer(layer, "seq_lengths");
    return state_->lengths(layer);
}

std::vector<uint32_t> PagedKVCache::block_table(uint32_t row) const {
    auto l = lock(*state_);
    if (row >= state_->batch)
        throw invalid(
            fmt::format("block_table: row {} out of range, batch is {}", row, state_->batch));
    std::vector<uint32_t> out;
    for (BlockId b : state_->table(row).blocks())
        out.push_back(index(b));
    return out;
}

uint64_t PagedKVCache::pages_held() const {
    auto l = lock(*state_);
    std::unordered_set<uint32_t> s;
    for (uint32_t r = 0; r < state_->batch; ++r)
        for (uint32_t g = 0; g < state_->rows[r]->num_groups(); ++g)
            for (BlockId b : state_->rows[r]->group(g).blocks())
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
    if (st.batch != 0) st.policy->check_capacity(uint32_t(rows.size()), {});
    return rows;
}

std::vector<int32_t> PagedKVCache::rows_for_reorder(std::span<const int32_t> beam_idx) const {
    if (beam_idx.size() != state_->batch)
        throw invalid(fmt::format("reorder_cache: {} indices for a batch of {}", beam_idx.size(),
                                  state_->batch));
    return rows_for_select(beam_idx, "reorder_cache");
}

std::vector<int32_t> PagedKVCache::rows_for_repeat(uint32_t repeats) const {
    const CacheState& st = *state_;
    const uint32_t batch = st.batch;
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
    if (batch != 0) st.policy->check_capacity(uint32_t(rows.size()), {});
    return rows;
}

void PagedKVCache::select_rows(std::span<const int32_t> rows) {
    CacheState& st = *state_;
    if (st.batch == 0) return;  // an empty cache: no index could be valid, none was given
    if (st.policy->reserved()) return select_rows_by_copy(rows);
    // The new rows are forks of the old (built aside: running out of host memory changes
    // nothing), then the old rows' sequences end and drop their references.
    std::vector<detail::Sequence> forks;
    forks.reserve(rows.size());
    for (int32_t r : rows)
        forks.push_back(st.rows[size_t(r)]->fork());
    st.set_rows(std::move(forks));
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
    if (st.policy->reserved() && st.batch) {
        int64_t most = 0;
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
            int64_t kept = 0;
            for (uint32_t b = 0; b < st.batch; ++b)
                kept += std::min(st.len(layer, b), max_length);
            most = std::max(most, kept);
        }
        scratch = empty_kv(1, most);
    }
    for (uint32_t layer = 0; layer < st.num_layers() && st.batch; ++layer)
        for (uint32_t b = 0; b < st.batch; ++b) {
            // A layer window's row keeps what it holds of the last max_length tokens seen.
            const int64_t seen = std::min(st.seen(layer, b), max_length);
            drop_front(layer, b, st.len(layer, b) - seen);
            st.set_dropped(layer, b, seen - st.len(layer, b));
        }
    if (st.policy->reserved()) return compact_rows(scratch);
    for (uint32_t b = 0; b < st.batch; ++b)
        trim_pages(b);
}

void PagedKVCache::truncate(int64_t length) {
    CacheState& st = *state_;
    auto l = lock(st);
    for (uint32_t b = 0; b < st.batch; ++b)
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
            // Counted in tokens seen: a layer window's row keeps those it holds of them.
            const int64_t n = st.seen(layer, b), gone = st.dropped(layer, b);
            const int64_t keep =
                length >= 0 ? std::min(n, length) : std::max<int64_t>(0, n + length);
            st.len(layer, b) = std::max<int64_t>(0, keep - gone);
            st.set_dropped(layer, b, keep - st.len(layer, b));
        }
    for (uint32_t b = 0; b < st.batch; ++b)
        trim_pages(b);
}

void PagedKVCache::reset() {
    CacheState& st = *state_;
    auto l = lock(st);
    if (st.policy->reserved()) {  // the reservation stays; the rows become empty
        for (detail::Sequence* r : st.rows) {
            std::fill(r->len.begin(), r->len.end(), 0);
            std::fill(r->start.begin(), r->start.end(), 0);
            r->dropped.clear();
        }
        return;
    }
    st.clear_rows();
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
    // The new rows' lengths, copied before any table moves.
    std::vector<detail::Sequence> fresh;
    fresh.reserve(rows.size());
    for (int32_t r : rows)
        fresh.emplace_back(BlockTable(st.ps->allocator), st.rows[size_t(r)]->len,
                           st.rows[size_t(r)]->start);
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
        if (!picked[r]) free_tables.push_back(std::move(st.table(r)));
    for (size_t i = 0; i < rows.size(); ++i) {
        const uint32_t r = uint32_t(rows[i]);
        if (owner[r] < 0) {
            owner[r] = int32_t(i);
            out.push_back(std::move(st.table(r)));
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
    detail::record_page_copies(*st.ps, copies);
    st.ps->pages_copied += copies.size();
    for (size_t i = 0; i < rows.size(); ++i)
        fresh[i].table = std::move(out[i]);
    st.spare = std::move(free_tables);
    st.set_rows(std::move(fresh));  // the old rows' sequences hold no page any more
}

// Moves every row's tokens so they start at slot 0 of its first page (a gather into a scratch
// tensor, then a scatter back): a reserved cache's capacity stays max_cache_len after crop.
void PagedKVCache::compact_rows(std::pair<Tensor, Tensor>& scratch) {
    CacheState& st = *state_;
    for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
        std::vector<uint32_t> from, to;
        for (uint32_t b = 0; b < st.batch; ++b) {
            if (st.start(layer, b) == 0) continue;
            for (int64_t t = 0; t < st.len(layer, b); ++t)
                from.push_back(st.slot_of(layer, b, t));
            st.start(layer, b) = 0;
            for (int64_t t = 0; t < st.len(layer, b); ++t)
                to.push_back(st.slot_of(layer, b, t));
        }
        move_tokens(layer, from, to, scratch);
    }
}

void PagedKVCache::move_tokens(uint32_t layer, std::span<const uint32_t> from,
                               std::span<const uint32_t> to, std::pair<Tensor, Tensor>& scratch) {
    if (from.empty()) return;
    CacheState& st = *state_;
    const uint32_t n = uint32_t(from.size());
    const auto stride = uint32_t(scratch.first.shape()[2]);  // at least n
    std::vector<detail::RowEntry> in, out;
    for (uint32_t i = 0; i < n; ++i) {
        in.push_back({i, from[i]});
        out.push_back({i, to[i]});
    }
    // On a pool over several devices each device moves its heads through scratch of its own.
    std::vector<std::shared_ptr<detail::Buffer>> ks, vs;
    if (st.ps->sharded()) {
        ks = detail::per_shard_buffers(*st.ps, scratch.first.nbytes());
        vs = detail::per_shard_buffers(*st.ps, scratch.second.nbytes());
    }
    for (size_t d = 0; d < st.ps->shards.size(); ++d) {
        const detail::Shard& sh = st.ps->shards[d];
        const uint32_t heads = sh.format.num_kv_heads;
        // Rows of row_bytes at page_offset (values, or a quantized page's scales) through buf,
        // as bytes: quantized rows move without being quantized again.
        auto move = [&](detail::Buffer& buf, uint64_t row_bytes, uint64_t page_offset) {
            detail::record_row_copy(*sh.device, *sh.pages,
                                    {&buf, in, heads, row_bytes, stride, page_offset, true});
            detail::record_row_copy(*sh.device, *sh.pages,
                                    {&buf, out, heads, row_bytes, stride, page_offset, false});
        };
        detail::Buffer& kbuf = ks.empty() ? detail::Access::buffer(scratch.first) : *ks[d];
        detail::Buffer& vbuf = vs.empty() ? detail::Access::buffer(scratch.second) : *vs[d];
        const PageFormat& lay = sh.format;
        for (bool value : {false, true}) {
            move(value ? vbuf : kbuf, value ? lay.v_row_bytes() : lay.k_row_bytes(),
                 lay.page_offset(st.ps->page_layer(layer), value));
            // The scales (4 bytes a row) through the other scratch tensor (rows of at least 4
            // elements of at least 2 bytes: room enough).
            if (lay.scale_bytes() != 0)
                move(value ? kbuf : vbuf, lay.scale_bytes(),
                     lay.page_offset(st.ps->page_layer(layer), value) + lay.scales_offset(value));
        }
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
    if (st.policy->reserved() && slot >= st.batch)
        throw Error(
            ErrorCode::CapacityExceeded,
            fmt::format("insert: slot {} is past this cache's batch_size {}", slot, st.batch));
    std::vector<int64_t> lens;
    for (uint32_t layer = 0; layer < st.num_layers(); ++layer)
        lens.push_back(os.len(layer, other_row));
    st.policy->check_capacity(slot == st.batch ? st.batch + 1 : st.batch, lens);
    // A sliding window keeps its window of the inserted row (the rest goes back to the pool).
    auto keep_window = [&] {
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
            const int64_t n = st.len(layer, slot) - st.keep_limit(layer);
            if (n <= 0) continue;
            drop_front(layer, slot, n);
            if (st.ps->hybrid()) st.set_dropped(layer, slot, st.dropped(layer, slot) + n);
        }
        if (!st.policy->reserved()) trim_pages(slot);
    };
    if (st.policy->reserved() || other->state_->policy->reserved()) {
        // A reserved cache's pages are never shared: copy the tokens, aligned at slot 0, into
        // this cache's own pages (its reservation, or fresh pages for a growing cache).
        const uint32_t bs = st.block_size();
        const int64_t longest = *std::max_element(lens.begin(), lens.end());
        std::pair<Tensor, Tensor> scratch = empty_kv(1, longest);  // before anything changes
        BlockTable target(st.ps->allocator);
        if (!st.policy->reserved()) {
            std::vector<BlockId> fresh;
            st.ps->allocator.allocate(ceil_div(uint64_t(longest), bs), fresh);
            target.adopt_back(fresh);
        }
        if (slot == st.batch) {
            const std::vector<int64_t> zeros(st.num_layers(), 0);
            st.push_row(detail::Sequence(std::move(target), zeros, zeros));
        } else if (!st.policy->reserved()) {
            st.table(slot) = std::move(target);
        }
        for (uint32_t layer = 0; layer < st.num_layers(); ++layer) {
            st.start(layer, slot) = 0;
            st.len(layer, slot) = lens[layer];
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
    detail::Sequence shared = os.rows[other_row]->fork();
    if (slot == st.batch)
        st.push_row(std::move(shared));
    else
        st.replace_row(slot, std::move(shared));
    keep_window();
}

void PagedKVCache::drop_front(uint32_t layer, uint32_t row, int64_t n) {
    CacheState& st = *state_;
    if (n <= 0) return;
    n = std::min(n, st.len(layer, row));
    st.start(layer, row) += n;
    st.len(layer, row) -= n;
}

void PagedKVCache::trim_pages(uint32_t row) {
    CacheState& st = *state_;
    const uint32_t bs = st.block_size();
    const LayerGroups& groups = st.ps->groups;
    for (uint32_t g = 0; g < groups.num_groups(); ++g) {  // (one group without layer windows)
        BlockTable& t = st.rows[row]->group(g);
        // Leading pages no layer of the group reaches any more go back to the pool.
        int64_t first = INT64_MAX;
        for (uint32_t l : groups.layers[g])
            if (st.len(l, row) > 0) first = std::min(first, st.start(l, row));
        if (first == INT64_MAX) first = 0;  // the row is empty in every layer of the group
        st.release_leading(row, g,
                           st.policy->reserved() ? 0 : std::min(t.size(), size_t(first / bs)));
        const size_t want = size_t(ceil_div(uint64_t(st.rows[row]->extent(groups.layers[g])), bs));
        if (!st.policy->reserved() && t.size() > want) t.release_back(t.size() - want);
    }
}

}  // namespace pagedkv
