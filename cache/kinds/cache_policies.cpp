#include "cache/kinds/cache_policies.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "pagedkv/error.hpp"

namespace pagedkv::detail {

namespace {

// Grows as it is written; rows share pages after batch operations.
class DynamicPolicy final : public CachePolicy {
  public:
    const char* name() const noexcept override { return "DynamicKVCache"; }
    Record record() const noexcept override { return {CacheKind::Dynamic, 0, 0, 0}; }
};

// batch_size rows of max_cache_len tokens, reserved at construction.
class StaticPolicy final : public CachePolicy {
  public:
    StaticPolicy(uint32_t batch_size, uint32_t max_cache_len)
        : batch_size_(batch_size), max_cache_len_(max_cache_len) {}

    const char* name() const noexcept override { return "StaticKVCache"; }
    Record record() const noexcept override {
        return {CacheKind::Static, batch_size_, max_cache_len_, 0};
    }
    bool reserved() const noexcept override { return true; }
    void check_capacity(uint32_t batch, std::span<const int64_t> new_len) const override {
        // Zero rows would leave the reservation unused and the next update allocating afresh.
        if (batch == 0)
            throw Error(ErrorCode::InvalidArgument,
                        "StaticKVCache: cannot keep zero rows (reset() empties the rows instead)");
        if (batch > batch_size_)
            throw Error(ErrorCode::CapacityExceeded,
                        fmt::format("StaticKVCache: batch of {} rows exceeds batch_size {}", batch,
                                    batch_size_));
        const auto longest = std::max_element(new_len.begin(), new_len.end());
        if (longest != new_len.end() && *longest > int64_t(max_cache_len_))
            throw Error(
                ErrorCode::CapacityExceeded,
                fmt::format("StaticKVCache: a row would hold {} tokens, max_cache_len is {}",
                            *longest, max_cache_len_));
    }

  private:
    uint32_t batch_size_, max_cache_len_;
};

// Keeps the last `window` tokens of each row and layer.
class SlidingPolicy final : public CachePolicy {
  public:
    explicit SlidingPolicy(uint32_t window) : window_(window) {}

    const char* name() const noexcept override { return "SlidingWindowKVCache"; }
    Record record() const noexcept override { return {CacheKind::SlidingWindow, 0, 0, window_}; }
    int64_t keep_limit() const noexcept override { return int64_t(window_); }

  private:
    uint32_t window_;
};

}  // namespace

std::unique_ptr<const CachePolicy> dynamic_policy() {
    return std::make_unique<DynamicPolicy>();
}
std::unique_ptr<const CachePolicy> static_policy(uint32_t batch_size, uint32_t max_cache_len) {
    return std::make_unique<StaticPolicy>(batch_size, max_cache_len);
}
std::unique_ptr<const CachePolicy> sliding_policy(uint32_t window) {
    return std::make_unique<SlidingPolicy>(window);
}

}  // namespace pagedkv::detail
