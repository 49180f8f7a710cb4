// DynamicKVCache: grows page by page as tokens arrive; memory follows the real lengths,
// wasting at most one partial page per row.
#pragma once

#include "pagedkv/export.h"
#include "pagedkv/paged_kv_cache.hpp"

namespace pagedkv {

class PAGEDKV_API DynamicKVCache final : public PagedKVCache {
  public:
    explicit DynamicKVCache(BlockPool& pool);
};

}  // namespace pagedkv
