// SlidingWindowKVCache: keeps the most recent `window` tokens of each row. Pages that fall
// wholly out of the window go back to the pool as decoding goes on, so a row holds at most
// window / block_size + 1 pages however long the sequence grows. Positions given to update()
// count from the oldest token still in the window.
#pragma once

#include "pagedkv/paged_kv_cache.hpp"

namespace pagedkv {

class SlidingWindowKVCache final : public PagedKVCache {
  public:
    SlidingWindowKVCache(BlockPool& pool, uint32_t window);
    uint32_t window() const noexcept { return window_; }

  protected:
    void after_write(uint32_t layer) override;

  private:
    uint32_t window_;
};

}  // namespace pagedkv
