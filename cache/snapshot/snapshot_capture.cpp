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

// Appends these sequences as the record's rows: tables, and per layer lengths and starts.
void add_rows(SnapshotCache& k, std::span<Sequence* const> rows, uint32_t layers) {
    for (const Sequence* r : rows)
        k.rows.push_back(blocks_of(r->table));
    k.len.assign(layers, std::vector<int64_t>(rows.size(), 0));
    k.start.assign(layers, std::vector<int64_t>(rows.size(), 0));
    for (uint32_t l = 0; l < layers; ++l)
        for (size_t r = 0; r < rows.size(); ++r) {
            k.len[l][r] = rows[r]->len[l];
            k.start[l][r] = rows[r]->start[l];
        }
}

SnapshotCache capture_cache(const PagedKVCache& cache, uint32_t layers) {
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
    add_rows(k, st.rows, layers);
    return k;
}

// A manager's sequences, in ascending id order, as the rows of a dynamic cache (the same
// sequence core: a table and per-layer lengths and starts).
SnapshotCache capture_manager(const KVManager& manager, uint32_t layers) {
    SnapshotCache k;
    k.kind = SnapshotCacheKind::Dynamic;
    std::vector<Sequence*> rows;
    for (const auto& [id, seq] : Access::manager(manager).seqs.all())
        rows.push_back(const_cast<Sequence*>(&seq));
    add_rows(k, rows, layers);
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
    ps.refuse_hybrid(op);
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
            given.insert(&st.table(r));
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
            given.insert(&seq.table);
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
    s.allocator = ps.allocator.state();
    if (ps.prefix) s.prefix = ps.prefix->entries();
    s.pages_copied = ps.pages_copied;
    for (const PagedKVCache* cache : caches)
        s.caches.push_back(capture_cache(*cache, c.num_layers));
    for (const KVManager* m : managers)
        s.caches.push_back(capture_manager(*m, c.num_layers));
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
