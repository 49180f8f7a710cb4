// SlidingWindowKVCache: keeps the most recent `window` tokens of each row. Tokens older than the
// window are never written, and pages that fall wholly out of it go back to the pool before a
// write takes new ones, so a row decodes forever in its own footprint: written a step at a time
// (every layer the same tokens), it holds at most ceil((window - 1) / block_size) + 1 pages
// between steps, and ceil((window + n - 1) / block_size) + 1 while a step of n tokens has
// reached some layers but not others. Positions given to update() count from the oldest token
// still in the window.
#pragma once

#include "pagedkv/export.h"
#include "pagedkv/paged_kv_cache.hpp"

namespace pagedkv {

class PAGEDKV_API SlidingWindowKVCache final : public PagedKVCache {
  public:
    SlidingWindowKVCache(BlockPool& pool, uint32_t window);
    uint32_t window() const noexcept;
};

}  // namespace pagedkv
