// StaticKVCache: batch_size rows of max_cache_len tokens, every page reserved at construction
// (OutOfBlocks if the pool cannot), never allocating afterwards, like HF's StaticCache and
// torchtune's KVCache; an update past max_cache_len or with a larger batch throws
// CapacityExceeded. Rows never share pages; reset() keeps the reservation.
#pragma once

#include "pagedkv/export.h"
#include "pagedkv/paged_kv_cache.hpp"

namespace pagedkv {

namespace detail {
struct SnapshotRestorer;
}

class PAGEDKV_API StaticKVCache final : public PagedKVCache {
  public:
    StaticKVCache(BlockPool& pool, uint32_t batch_size, uint32_t max_cache_len);

    uint32_t max_batch_size() const noexcept;
    uint32_t max_cache_len() const noexcept;

  private:
    friend struct detail::SnapshotRestorer;
    struct NoReservation {};
    // The cache without pages: restore_snapshot gives it the saved tables' references instead.
    StaticKVCache(BlockPool& pool, uint32_t batch_size, uint32_t max_cache_len, NoReservation);
};

}  // namespace pagedkv
