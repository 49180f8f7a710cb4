// The policies of the 0.1 cache kinds (cache/manager/cache_policy.hpp says what a policy is).
#pragma once

#include <memory>

#include "cache/manager/cache_policy.hpp"

namespace pagedkv::detail {

std::unique_ptr<const CachePolicy> dynamic_policy();
std::unique_ptr<const CachePolicy> static_policy(uint32_t batch_size, uint32_t max_cache_len);
std::unique_ptr<const CachePolicy> sliding_policy(uint32_t window);

}  // namespace pagedkv::detail
