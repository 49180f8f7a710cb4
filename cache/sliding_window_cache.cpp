#include "pagedkv/sliding_window_cache.hpp"

#include <fmt/format.h>

#include "cache/cache_state.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv {

SlidingWindowKVCache::SlidingWindowKVCache(BlockPool& pool, uint32_t window)
    : PagedKVCache(pool, "SlidingWindowKVCache"), window_(window) {
    if (window == 0)
        throw Error(ErrorCode::InvalidArgument, "SlidingWindowKVCache: window must be at least 1");
}

void SlidingWindowKVCache::after_write(uint32_t layer) {
    detail::CacheState& st = *state_;
    for (uint32_t b = 0; b < st.batch; ++b) {
        drop_front(layer, b, st.len[layer][b] - int64_t(window_));
        trim_pages(b);
    }
}

}  // namespace pagedkv
