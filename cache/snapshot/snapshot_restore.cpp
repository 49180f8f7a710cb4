#include <fmt/format.h>

#include "cache/manager/cache_state.hpp"
#include "cache/manager/page_bytes.hpp"
#include "cache/manager/pool_state.hpp"
#include "cache/manager/shards.hpp"
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
        std::vector<detail::Sequence> rows;
        rows.reserve(k.rows.size());
        for (size_t r = 0; r < k.rows.size(); ++r) {
            detail::Sequence& seq = rows.emplace_back(st.empty_sequence());
            seq.table.adopt_back(k.rows[r]);
            // The tables of layer groups 1.. (as many as the pool's groups: checked).
            for (uint32_t g = 1; g < seq.num_groups() && r < k.more.size(); ++g)
                seq.group(g).adopt_back(k.more[r][g - 1]);
            for (uint32_t l = 0; l < st.num_layers() && l < k.len.size(); ++l) {
                seq.len[l] = k.len[l][r];
                // An empty layer starts at slot 0 (older versions could leave it anywhere).
                seq.start[l] = k.len[l][r] == 0 ? 0 : k.start[l][r];
            }
            // Tokens a sliding layer let go (the sequence keeps none when all are 0).
            for (uint32_t l = 0; l < st.num_layers() && l < k.dropped.size(); ++l)
                if (k.dropped[l][r] != 0) {
                    if (seq.dropped.empty()) seq.dropped.assign(st.num_layers(), 0);
                    seq.dropped[l] = k.dropped[l][r];
                }
        }
        for (const auto& blocks : k.spare)
            st.spare.emplace_back(alloc).adopt_back(blocks);
        st.set_rows(std::move(rows));
        return cache;
    }
};

}  // namespace detail

RestoredSnapshot restore_snapshot(Context& ctx, const std::filesystem::path& path,
                                  std::optional<DType> compute_dtype) {
    const SnapshotData s = decode_snapshot(read_snapshot_file(path));
    if (!s.has_pages)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("restore_snapshot: '{}' holds no page contents (saved without "
                                "SnapshotOptions::page_contents); it can be dumped, not restored",
                                path.string()));
    PoolConfig c = detail::pool_config(s.layout);
    if (!s.layer_windows.empty()) {  // the model's layers (the layout's are a page's)
        c.num_layers = s.model_layers();
        c.layer_windows = s.layer_windows;
    }
    c.compute_dtype = compute_dtype;
    // Everything below is new: if a step throws, unwinding destroys the caches, then the pool.
    RestoredSnapshot out;
    out.pool = std::make_unique<BlockPool>(ctx, c);
    detail::PoolState& ps = detail::Access::pool(*out.pool);
    // Cached pages: the pool's prefix index first (it turns caching on in the allocator), then
    // the allocator, then the index's entries over it; a KVManager with prefix caching made
    // over the restored pool uses this index.
    if (s.has_prefix_cache())
        ps.prefix = std::make_unique<PrefixIndex>(ps.allocator, ps.config.block_size);
    ps.allocator.restore(s.allocator);
    if (ps.prefix) ps.prefix->restore(s.prefix);  // siblings in the saved order
    ps.pages_copied = s.pages_copied;
    for (const SnapshotCache& k : s.caches)
        out.caches.push_back(detail::SnapshotRestorer::make(*out.pool, k));
    // The saved bytes of the blocks in use and the evictable cached blocks.
    detail::write_pages(ps, s.page_blocks(), s.pages);
    return out;
}

}  // namespace pagedkv
