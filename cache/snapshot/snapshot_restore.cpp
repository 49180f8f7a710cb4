#include <fmt/format.h>

#include "cache/manager/cache_state.hpp"
#include "cache/manager/pool_state.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "pagedkv/dynamic_cache.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/sliding_window_cache.hpp"
#include "pagedkv/snapshot.hpp"
#include "pagedkv/static_cache.hpp"

namespace pagedkv {

namespace detail {

// Builds caches over a pool whose allocator already holds the saved references: the tables
// adopt them, nothing is allocated (a static cache skips its reservation).
struct SnapshotRestorer {
    static std::unique_ptr<PagedKVCache> make(BlockPool& pool, const SnapshotCache& k) {
        std::unique_ptr<PagedKVCache> cache;
        switch (k.kind) {
            case SnapshotCacheKind::Dynamic:
                cache = std::make_unique<DynamicKVCache>(pool);
                break;
            case SnapshotCacheKind::Static:
                cache.reset(new StaticKVCache(pool, k.batch_size, k.max_cache_len,
                                              StaticKVCache::NoReservation{}));
                break;
            case SnapshotCacheKind::SlidingWindow:
                cache = std::make_unique<SlidingWindowKVCache>(pool, k.window);
                break;
        }
        CacheState& st = Access::cache(*cache);
        BlockAllocator& alloc = st.ps->allocator;
        for (const auto& blocks : k.rows)
            st.tables.emplace_back(alloc).adopt_back(blocks);
        for (const auto& blocks : k.spare)
            st.spare.emplace_back(alloc).adopt_back(blocks);
        st.batch = uint32_t(k.rows.size());
        // An empty growing cache keeps no per-layer vectors (as after reset()); a reserved one
        // keeps one per layer.
        if (!k.rows.empty() || k.kind == SnapshotCacheKind::Static) {
            st.len = k.len;
            st.start = k.start;
            // An empty layer starts at slot 0 (older versions could leave it anywhere).
            for (size_t l = 0; l < st.len.size(); ++l)
                for (size_t r = 0; r < st.len[l].size(); ++r)
                    if (st.len[l][r] == 0) st.start[l][r] = 0;
        }
        return cache;
    }
};

namespace {

// Writes the saved bytes of the blocks in use into a fresh pool, a run of consecutive blocks
// at a time (no GPU work touches a fresh pool's slabs yet).
void write_pages(PoolState& ps, const SnapshotData& s) {
    const uint64_t bb = ps.format.block_bytes();
    std::vector<uint32_t> used;
    for (size_t b = 0; b < s.allocator.refcounts.size(); ++b)
        if (s.allocator.refcounts[b] > 0) used.push_back(uint32_t(b));
    const PageSlabs& pages = *ps.pages;
    pages.for_each_run(used, [&](uint32_t first, size_t index, size_t count) {
        pages.slab_of(first).write(s.pages.data() + index * bb, count * bb, pages.offset_of(first));
    });
}

}  // namespace

}  // namespace detail

RestoredSnapshot restore_snapshot(Context& ctx, const std::filesystem::path& path) {
    const SnapshotData s = decode_snapshot(read_snapshot_file(path));
    if (!s.has_pages)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("restore_snapshot: '{}' holds no page contents (saved without "
                                "SnapshotOptions::page_contents); it can be dumped, not restored",
                                path.string()));
    const PoolConfig c = detail::pool_config(s.layout);
    // Everything below is new: if a step throws, unwinding destroys the caches, then the pool.
    RestoredSnapshot out;
    out.pool = std::make_unique<BlockPool>(ctx, c);
    detail::PoolState& ps = detail::Access::pool(*out.pool);
    ps.allocator.restore(s.allocator);
    ps.pages_copied = s.pages_copied;
    for (const SnapshotCache& k : s.caches)
        out.caches.push_back(detail::SnapshotRestorer::make(*out.pool, k));
    detail::write_pages(ps, s);
    return out;
}

}  // namespace pagedkv
