// capture_snapshot: a live pool and its caches as SnapshotData (allocator/), with the bytes of
// the pages in use read back from the slabs when asked. save_snapshot and detailed_stats use it.
#pragma once

#include <span>

#include "cache/snapshot/snapshot_data.hpp"
#include "pagedkv/block_pool.hpp"
#include "pagedkv/kv_manager.hpp"
#include "pagedkv/paged_kv_cache.hpp"

namespace pagedkv::detail {

// op names the public call in error messages. Throws Error(InvalidArgument) when the caches
// are not exactly the ones holding the pool's pages (one missing, foreign, null or repeated).
// Managers are recorded after the caches, each as a dynamic cache whose rows are its sequences
// in ascending id order.
SnapshotData capture_snapshot(const BlockPool& pool, std::span<const PagedKVCache* const> caches,
                              std::span<const KVManager* const> managers, bool page_contents,
                              const char* op);

}  // namespace pagedkv::detail
