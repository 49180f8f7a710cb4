#include "pagedkv/sliding_window_cache.hpp"

#include "pagedkv/error.hpp"

namespace pagedkv {

SlidingWindowKVCache::SlidingWindowKVCache(BlockPool& pool, uint32_t window)
    : PagedKVCache(pool, "SlidingWindowKVCache"), window_(window) {
    if (window == 0)
        throw Error(ErrorCode::InvalidArgument, "SlidingWindowKVCache: window must be at least 1");
}

}  // namespace pagedkv
