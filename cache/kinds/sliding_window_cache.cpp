#include "pagedkv/sliding_window_cache.hpp"
#include "pagedkv/dynamic_cache.hpp"

#include "cache/kinds/cache_policies.hpp"
#include "cache/manager/cache_state.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv {

SlidingWindowKVCache::SlidingWindowKVCache(BlockPool& pool, uint32_t window)
    : PagedKVCache(pool, detail::sliding_policy(window)) {
    if (window == 0)
        throw Error(ErrorCode::InvalidArgument, "SlidingWindowKVCache: window must be at least 1");
}

uint32_t SlidingWindowKVCache::window() const noexcept {
    return state_->policy->record().window;
}

DynamicKVCache::DynamicKVCache(BlockPool& pool) : PagedKVCache(pool, detail::dynamic_policy()) {}

}  // namespace pagedkv
