// PageStorage: the device memory behind a pool, in slabs. A single buffer binding is limited by
// maxStorageBufferRange (128 MiB on lavapipe), real pools are tens of GiB: block b lives in
// slab b >> slab_shift at offset (b & mask) * block_bytes. Shaders reach slabs through a small
// table of buffer device addresses.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "shaders/buffer.hpp"
#include "shaders/page_layout.hpp"

namespace pagedkv::detail {

class PageStorage : public Resource {
  public:
    // max_slab_bytes: 0 for the device limit; smaller values make many slabs (for tests).
    static std::shared_ptr<PageStorage> create(Device& dev, const PageLayout& layout,
                                               uint64_t num_blocks, uint64_t max_slab_bytes);

    const PageLayout& layout() const noexcept { return layout_; }
    uint64_t num_blocks() const noexcept { return num_blocks_; }
    uint32_t slab_shift() const noexcept { return slab_shift_; }
    uint64_t blocks_per_slab() const noexcept { return uint64_t(1) << slab_shift_; }
    const std::vector<std::shared_ptr<Buffer>>& slabs() const noexcept { return slabs_; }
    const Buffer& slab_table() const noexcept { return *slab_table_; }
    uint64_t bytes() const noexcept { return num_blocks_ * layout_.block_bytes(); }

    Buffer& slab_of(uint32_t block) const { return *slabs_[block >> slab_shift_]; }
    uint64_t offset_of(uint32_t block) const {
        return (block & (blocks_per_slab() - 1)) * layout_.block_bytes();
    }
    // Calls f(first, index, count) for each run of consecutive block ids inside one slab of an
    // ascending list (so one buffer range covers the run): index is the run's position in it.
    template <class F>
    void for_each_run(std::span<const uint32_t> ascending, F&& f) const {
        for (size_t i = 0; i < ascending.size();) {
            size_t j = i + 1;
            while (j < ascending.size() && ascending[j] == ascending[j - 1] + 1 &&
                   (ascending[j] >> slab_shift_) == (ascending[i] >> slab_shift_))
                ++j;
            f(ascending[i], i, j - i);
            i = j;
        }
    }

  private:
    PageLayout layout_;
    uint64_t num_blocks_ = 0;
    uint32_t slab_shift_ = 0;
    std::vector<std::shared_ptr<Buffer>> slabs_;
    std::shared_ptr<Buffer> slab_table_;
};

}  // namespace pagedkv::detail
