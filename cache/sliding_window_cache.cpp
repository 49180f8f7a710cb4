#include "pagedkv/sliding_window_cache.hpp"
#include "pagedkv/dynamic_cache.hpp"

#include "cache/cache_policy.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv {

SlidingWindowKVCache::SlidingWindowKVCache(BlockPool& pool, uint32_t window)
    : PagedKVCache(pool, detail::CachePolicy::sliding(window)), window_(window) {
    if (window == 0)
        throw Error(ErrorCode::InvalidArgument, "SlidingWindowKVCache: window must be at least 1");
}

DynamicKVCache::DynamicKVCache(BlockPool& pool)
    : PagedKVCache(pool, detail::CachePolicy::dynamic()) {}

}  // namespace pagedkv
