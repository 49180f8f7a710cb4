#include "cache/cache_policy.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pagedkv/error.hpp"

namespace pagedkv::detail {

const char* CachePolicy::name() const noexcept {
    switch (kind) {
        case Kind::Dynamic:
            return "DynamicKVCache";
        case Kind::Static:
            return "StaticKVCache";
        case Kind::SlidingWindow:
            return "SlidingWindowKVCache";
    }
    return "PagedKVCache";
}

void CachePolicy::check_capacity(uint32_t batch, std::span<const int64_t> new_len) const {
    if (kind != Kind::Static) return;
    // Zero rows would leave the reservation unused and the next update allocating afresh.
    if (batch == 0)
        throw Error(ErrorCode::InvalidArgument,
                    "StaticKVCache: cannot keep zero rows (reset() empties the rows instead)");
    if (batch > batch_size)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("StaticKVCache: batch of {} rows exceeds batch_size {}", batch,
                                batch_size));
    const auto longest = std::max_element(new_len.begin(), new_len.end());
    if (longest != new_len.end() && *longest > int64_t(max_cache_len))
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("StaticKVCache: a row would hold {} tokens, max_cache_len is {}",
                                *longest, max_cache_len));
}

}  // namespace pagedkv::detail
