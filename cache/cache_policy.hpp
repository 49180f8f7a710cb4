// CachePolicy: what makes a cache kind (dynamic, static, sliding window) different, as data
// chosen at construction: its capacity checks, how many tokens a row keeps, whether its pages
// are a reservation. The paged cache consults it; snapshots record it.
#pragma once

#include <cstdint>
#include <span>

namespace pagedkv::detail {

struct CachePolicy {
    enum class Kind : uint8_t { Dynamic, Static, SlidingWindow };

    Kind kind = Kind::Dynamic;
    uint32_t batch_size = 0;     // Static: rows reserved at construction
    uint32_t max_cache_len = 0;  // Static: tokens a row holds at most
    uint32_t window = 0;         // SlidingWindow: tokens a row keeps

    static CachePolicy dynamic() { return {}; }
    static CachePolicy fixed(uint32_t batch_size, uint32_t max_cache_len) {
        return {Kind::Static, batch_size, max_cache_len, 0};
    }
    static CachePolicy sliding(uint32_t window) { return {Kind::SlidingWindow, 0, 0, window}; }

    // The class name used in error messages.
    const char* name() const noexcept;
    // A reserved cache (static) keeps every page it holds for its whole life: rows never share
    // pages (batch operations copy them instead), crop moves tokens to the front of their pages
    // instead of dropping leading pages, and reset() keeps the reservation.
    bool reserved() const noexcept { return kind == Kind::Static; }
    // The most tokens a layer's row keeps: a write that makes a row longer drops its oldest
    // tokens, which are then never written.
    int64_t keep_limit() const noexcept {
        return kind == Kind::SlidingWindow ? int64_t(window) : INT64_MAX;
    }
    // Throws (CapacityExceeded, InvalidArgument), before anything changes, when the cache
    // refuses `batch` rows whose longest reaches the given lengths (empty: unchanged).
    void check_capacity(uint32_t batch, std::span<const int64_t> new_len) const;
};

}  // namespace pagedkv::detail
