// Snapshots: a pool and its caches written to one file (layout, reference counts, free list,
// every row's block table and lengths, the prefix cache's pages and hashes, optionally the page
// bytes) for pagedkv-dump, and restored into a fresh pool to resume later. The file format is
// described in README.md#format.
#pragma once

#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "pagedkv/block_pool.hpp"
#include "pagedkv/context.hpp"
#include "pagedkv/detailed_stats.hpp"
#include "pagedkv/export.h"
#include "pagedkv/kv_manager.hpp"
#include "pagedkv/paged_kv_cache.hpp"

namespace pagedkv {

struct SnapshotOptions {
    // Also write the bytes of every page in use and of every evictable cached page (block_bytes
    // each): restore_snapshot needs them; inspection does not. Waits for the GPU work recorded
    // so far.
    bool page_contents = false;
};

// Writes the pool and its caches to `path` (through a temporary file renamed over it). `caches`
// must be every cache holding pages of the pool, each once (give an EncoderDecoderCache's two
// caches separately), else the reference counts could not be explained: throws
// Error(InvalidArgument) naming what is missing, and writes nothing. Other failures to write
// the file also throw InvalidArgument.
PAGEDKV_API void save_snapshot(const std::filesystem::path& path, const BlockPool& pool,
                               std::span<const PagedKVCache* const> caches,
                               SnapshotOptions options = {});
PAGEDKV_API void save_snapshot(const std::filesystem::path& path, const BlockPool& pool,
                               std::initializer_list<const PagedKVCache*> caches,
                               SnapshotOptions options = {});
// A pool served by KVManagers (and caches): each manager's sequences are recorded after the
// caches as the rows of a dynamic cache, in ascending id order (the same core: a block table
// and per-layer lengths per sequence), so pagedkv-dump shows them; restore_snapshot brings a
// manager back as a DynamicKVCache whose row i is its i-th sequence (ids are not recorded).
// Over a pool with layer_windows every layer group's table is recorded, and a manager's
// sequence as a 0.1 cache holds it: each sliding layer its window's tokens (the earlier ones
// counted as let go), so the restored row's get_seq_length is the sequence's length and get()
// returns what gather() did.
PAGEDKV_API void save_snapshot(const std::filesystem::path& path, const BlockPool& pool,
                               std::span<const PagedKVCache* const> caches,
                               std::span<const KVManager* const> managers,
                               SnapshotOptions options = {});

// What restore_snapshot rebuilt. The caches are declared after the pool, so they are
// destroyed first (a pool must outlive its caches).
struct RestoredSnapshot {
    std::unique_ptr<BlockPool> pool;
    // In the order they were saved: DynamicKVCache, StaticKVCache or SlidingWindowKVCache.
    std::vector<std::unique_ptr<PagedKVCache>> caches;
};

// Rebuilds a snapshot written with page_contents on `ctx`: a new pool with the same layout
// (layer_windows included),
// reference counts, free-list order and counters, and caches with the same kinds, block tables
// and lengths, so get() returns what it returned when the snapshot was taken. A pool with
// prefix caching gets the same prefix index and evictable pages (in LRU order): a KVManager with
// prefix_caching made over the restored pool uses that index and hits its pages. A damaged or
// inconsistent file throws Error(CorruptSnapshot) before anything is created; a snapshot
// without page contents, or a file that cannot be read, throws InvalidArgument.
// compute_dtype: the restored pool's PoolConfig::compute_dtype. It is how the pool is read, not
// what its pages hold, so a snapshot does not keep it; unset gives the default (F16 for
// quantized pages, else the pool's dtype).
PAGEDKV_API RestoredSnapshot restore_snapshot(Context& ctx, const std::filesystem::path& path,
                                              std::optional<DType> compute_dtype = std::nullopt);

// The computed tier of statistics (largest free run, reference-count histogram, token slots
// held against tokens stored), walked over the pool and every cache holding its pages (the
// same requirement as save_snapshot).
PAGEDKV_API DetailedStats detailed_stats(const BlockPool& pool,
                                         std::span<const PagedKVCache* const> caches);
PAGEDKV_API DetailedStats detailed_stats(const BlockPool& pool,
                                         std::initializer_list<const PagedKVCache*> caches);
PAGEDKV_API DetailedStats detailed_stats(const BlockPool& pool,
                                         std::span<const PagedKVCache* const> caches,
                                         std::span<const KVManager* const> managers);

}  // namespace pagedkv
