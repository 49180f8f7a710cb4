#include "cache/snapshot/snapshot_capture.hpp"

#include <fmt/format.h>

#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "cache/manager/cache_state.hpp"
#include "cache/manager/manager_state.hpp"
#include "cache/manager/page_bytes.hpp"
#include "cache/manager/pool_state.hpp"
#include "cache/manager/shards.hpp"
#include "cache/snapshot/detailed_stats.hpp"
#include "cache/snapshot/snapshot_check.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/snapshot.hpp"

namespace pagedkv {

namespace detail {

namespace {

Error invalid(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

std::vector<BlockId> blocks_of(const BlockTable& t) {
    return t.blocks();
}

// Appends these sequences as the record's rows: tables (every layer group's), and per layer
// lengths, starts and (with layer groups) the tokens a sliding layer let go.
void add_rows(SnapshotCache& k, std::span<Sequence* const> rows, const PoolState& ps) {
    const uint32_t layers = ps.config.num_layers;
    const bool grouped = !ps.config.layer_windows.empty();
    for (const Sequence* r : rows) {
        k.rows.push_back(blocks_of(r->table));
        if (!grouped) continue;
        auto& more = k.more.emplace_back();
        for (const BlockTable& t : r->more)
            more.push_back(blocks_of(t));
    }
    k.len.assign(layers, std::vector<int64_t>(rows.size(), 0));
    k.start.assign(layers, std::vector<int64_t>(rows.size(), 0));
    if (grouped) k.dropped.assign(layers, std::vector<int64_t>(rows.size(), 0));
    for (uint32_t l = 0; l < layers; ++l)
        for (size_t r = 0; r < rows.size(); ++r) {
            k.len[l][r] = rows[r]->len[l];
            k.start[l][r] = rows[r]->start[l];
            if (grouped && !rows[r]->dropped.empty()) k.dropped[l][r] = rows[r]->dropped[l];
        }
}

SnapshotCache capture_cache(const PagedKVCache& cache) {
    SnapshotCache k;
    const CacheState& st = Access::cache(cache);
    // The snapshot records the cache's policy (the kind and its numbers).
    const CachePolicy::Record kind = st.policy->record();
    switch (kind.kind) {
        case CacheKind::Dynamic:
            k.kind = SnapshotCacheKind::Dynamic;
            break;
        case CacheKind::Static:
            k.kind = SnapshotCacheKind::Static;
            break;
        case CacheKind::SlidingWindow:
            k.kind = SnapshotCacheKind::SlidingWindow;
            break;
    }
    k.batch_size = kind.batch_size;
    k.max_cache_len = kind.max_cache_len;
    k.window = kind.window;
    for (const BlockTable& t : st.spare)
        k.spare.push_back(blocks_of(t));
    add_rows(k, st.rows, *st.ps);
    return k;
}

// A manager's sequences, in ascending id order, as the rows of a dynamic cache (the same
// sequence core: tables and per-layer lengths and starts). With layer groups a manager's
// sliding group numbers slots from its table's origin (start = -origin, len = the length)
// while a 0.1 cache's layer holds positions from the first it keeps: layer l of group g is
// recorded as the held tokens [first_held, length), at slot first_held - origin, with
// first_held let go, so that a restored DynamicKVCache holds exactly them and has seen length.
SnapshotCache capture_manager(const KVManager& manager) {
    SnapshotCache k;
    k.kind = SnapshotCacheKind::Dynamic;
    const ManagerState& m = Access::manager(manager);
    const PoolState& ps = *m.ps;
    std::vector<Sequence*> rows;
    for (const auto& [id, seq] : m.seqs.all())
        rows.push_back(const_cast<Sequence*>(&seq));
    add_rows(k, rows, ps);
    if (ps.config.layer_windows.empty()) return k;
    for (size_t r = 0; r < rows.size(); ++r) {
        const Sequence& seq = *rows[r];
        const int64_t length = length_of(seq);
        for (uint32_t g = 0; g < ps.groups.num_groups(); ++g) {
            const int64_t held_from = first_held(ps, seq, g);
            const int64_t origin = table_origin(ps, seq, g);
            for (uint32_t l : ps.groups.layers[g]) {
                const int64_t held = length - held_from;
                k.len[l][r] = held;
                k.start[l][r] = held > 0 ? held_from - origin : 0;
                k.dropped[l][r] = held_from;
            }
        }
    }
    return k;
}

// The bytes of every block in use and every evictable cached block (its K/V is what a later
// prefix-cache hit reads), ascending.
void capture_pages(PoolState& ps, SnapshotData& s) {
    const std::vector<uint32_t> used = s.page_blocks();
    s.pages = read_pages(ps, used);
    s.has_pages = true;
}

}  // namespace

SnapshotData capture_snapshot(const BlockPool& pool, std::span<const PagedKVCache* const> caches,
                              std::span<const KVManager* const> managers, bool page_contents,
                              const char* op) {
    PoolState& ps = Access::pool(pool);
    detail::Device::CallLock lock(*ps.device);
    // The snapshot format has no host tier: refused rather than recorded wrong.
    if (ps.host_prefix && ps.host_prefix->size() > 0)
        throw invalid(
            fmt::format("{}: the pool's host tier holds {} prefix-cached pages spilled from the "
                        "device, which snapshots do not record (not implemented): "
                        "reset_prefix_cache() first",
                        op, ps.host_prefix->size()));
    if (ps.host_allocator && ps.host_allocator->counters().used_blocks > 0)
        throw invalid(
            fmt::format("{}: the pool's host tier holds {} pages of swapped-out "
                        "sequences, which snapshots do not record (not implemented): "
                        "swap them in or free them first",
                        op, ps.host_allocator->counters().used_blocks));
    std::unordered_map<const PagedKVCache*, size_t> seen;
    std::unordered_set<const BlockTable*> given;
    for (size_t i = 0; i < caches.size(); ++i) {
        const PagedKVCache* c = caches[i];
        if (!c) throw invalid(fmt::format("{}: cache {} is null", op, i));
        if (&c->pool() != &pool)
            throw invalid(fmt::format("{}: cache {} is over another pool", op, i));
        if (auto [it, fresh] = seen.emplace(c, i); !fresh)
            throw invalid(
                fmt::format("{}: caches {} and {} are the same cache", op, it->second, i));
        const CacheState& st = Access::cache(*c);
        for (uint32_t r = 0; r < st.batch; ++r)
            for (uint32_t g = 0; g < st.rows[r]->num_groups(); ++g)
                given.insert(&st.rows[r]->group(g));
        for (const BlockTable& t : st.spare)
            given.insert(&t);
    }
    std::unordered_set<const KVManager*> seen_managers;
    for (size_t i = 0; i < managers.size(); ++i) {
        const KVManager* m = managers[i];
        if (!m) throw invalid(fmt::format("{}: manager {} is null", op, i));
        if (Access::manager(*m).ps != &ps)
            throw invalid(fmt::format("{}: manager {} is over another pool", op, i));
        if (!seen_managers.insert(m).second)
            throw invalid(fmt::format("{}: manager {} is given twice", op, i));
        for (const auto& [id, seq] : Access::manager(*m).seqs.all())
            for (uint32_t g = 0; g < seq.num_groups(); ++g)
                given.insert(&seq.group(g));
    }
    uint64_t missing_tables = 0, missing_refs = 0;
    for (const BlockTable* t : ps.allocator.tables())
        if (!given.count(t) && !t->empty()) {
            ++missing_tables;
            missing_refs += t->size();
        }
    if (missing_tables)
        throw invalid(
            fmt::format("{}: {} block tables holding {} page references belong to "
                        "caches not given; pass every cache and KVManager over the pool",
                        op, missing_tables, missing_refs));

    SnapshotData s;
    const PoolConfig& c = ps.config;
    s.layout = pool_shape(c);
    s.layer_windows = c.layer_windows;
    s.allocator = ps.allocator.state();
    if (ps.prefix) s.prefix = ps.prefix->entries();
    s.pages_copied = ps.pages_copied;
    for (const PagedKVCache* cache : caches)
        s.caches.push_back(capture_cache(*cache));
    for (const KVManager* m : managers)
        s.caches.push_back(capture_manager(*m));
    // The live state always passes; a failure here is a library bug, caught before writing.
    if (std::string e = check_snapshot(s); !e.empty())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("{}: the pool's state is inconsistent: {}", op, e));
    if (page_contents) capture_pages(ps, s);
    return s;
}

}  // namespace detail

void save_snapshot(const std::filesystem::path& path, const BlockPool& pool,
                   std::span<const PagedKVCache* const> caches, SnapshotOptions options) {
    save_snapshot(path, pool, caches, {}, options);
}

void save_snapshot(const std::filesystem::path& path, const BlockPool& pool,
                   std::span<const PagedKVCache* const> caches,
                   std::span<const KVManager* const> managers, SnapshotOptions options) {
    const SnapshotData s =
        detail::capture_snapshot(pool, caches, managers, options.page_contents, "save_snapshot");
    write_snapshot_file(path, encode_snapshot(s));
}

void save_snapshot(const std::filesystem::path& path, const BlockPool& pool,
                   std::initializer_list<const PagedKVCache*> caches, SnapshotOptions options) {
    save_snapshot(path, pool, std::span(caches.begin(), caches.size()), options);
}

DetailedStats detailed_stats(const BlockPool& pool, std::span<const PagedKVCache* const> caches) {
    return detailed_stats(pool, caches, {});
}

DetailedStats detailed_stats(const BlockPool& pool, std::span<const PagedKVCache* const> caches,
                             std::span<const KVManager* const> managers) {
    return compute_detailed_stats(
        detail::capture_snapshot(pool, caches, managers, false, "detailed_stats"));
}

DetailedStats detailed_stats(const BlockPool& pool,
                             std::initializer_list<const PagedKVCache*> caches) {
    return detailed_stats(pool, std::span(caches.begin(), caches.size()));
}

}  // namespace pagedkv
