// CachePolicy: what makes a cache kind (dynamic, static, sliding window, ...) different, chosen
// at construction: its capacity checks, how many tokens a row keeps, whether its pages are a
// reservation. The paged cache consults it and snapshots record what it reports; the kinds
// themselves (cache/kinds/) implement it, so a new kind is a new policy there.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

namespace pagedkv::detail {

// The kinds a snapshot can record and restore.
enum class CacheKind : uint8_t { Dynamic, Static, SlidingWindow };

class CachePolicy {
  public:
    virtual ~CachePolicy() = default;

    // The class name used in error messages.
    virtual const char* name() const noexcept = 0;
    // What a snapshot records: the kind and its numbers (0 where a kind has none).
    struct Record {
        CacheKind kind = CacheKind::Dynamic;
        uint32_t batch_size = 0;     // Static: rows reserved at construction
        uint32_t max_cache_len = 0;  // Static: tokens a row holds at most
        uint32_t window = 0;         // SlidingWindow: tokens a row keeps
    };
    virtual Record record() const noexcept = 0;
    // A reserved cache (static) keeps every page it holds for its whole life: rows never share
    // pages (batch operations copy them instead), crop moves tokens to the front of their pages
    // instead of dropping leading pages, and reset() keeps the reservation.
    virtual bool reserved() const noexcept { return false; }
    // The most tokens a layer's row keeps: a write that makes a row longer drops its oldest
    // tokens, which are then never written.
    virtual int64_t keep_limit() const noexcept { return INT64_MAX; }
    // Throws (CapacityExceeded, InvalidArgument), before anything changes, when the cache
    // refuses `batch` rows whose longest reaches the given lengths (empty: unchanged).
    virtual void check_capacity(uint32_t /*batch*/, std::span<const int64_t> /*new_len*/) const {}
};

}  // namespace pagedkv::detail
