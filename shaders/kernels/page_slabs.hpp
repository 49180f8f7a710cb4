// PageSlabs: how the kernels reach a pool's pages. A single buffer binding is limited by
// maxStorageBufferRange (128 MiB on lavapipe), real pools are tens of GiB: block b lives in
// slab b >> slab_shift at offset (b & mask) * block_bytes. Shaders reach slabs through a small
// table of buffer device addresses (page_address.glsl). Where the slabs come from (device
// memory today; host memory or several devices later) is a page store's business
// (shaders/store/); the kernels only address them.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "allocator/page_format.hpp"
#include "shaders/vulkan/buffer.hpp"

namespace pagedkv::detail {

// The struct of page_address.glsl, as the kernels' push constants hold it.
struct PageAddressing {
    uint64_t slab_table = 0;
    uint64_t block_bytes = 0;
    uint32_t block_size = 0;
    uint32_t slab_shift = 0;
    // The page layout as row strides (PageFormat::head_stride_rows / slot_stride_rows):
    // head-major (block_size, 1), token-major (1, kv_heads).
    uint32_t head_rows = 0;
    uint32_t slot_rows = 0;
};
static_assert(sizeof(PageAddressing) == 32, "layout of PageAddressing in page_address.glsl");

class PageSlabs : public Resource {
  public:
    // slabs[i] holds blocks [i << slab_shift, (i + 1) << slab_shift); slab_table holds their
    // device addresses as u64.
    PageSlabs(const PageFormat& format, uint64_t num_blocks, uint32_t slab_shift,
              std::vector<std::shared_ptr<Buffer>> slabs, std::shared_ptr<Buffer> slab_table)
        : format_(format),
          num_blocks_(num_blocks),
          slab_shift_(slab_shift),
          slabs_(std::move(slabs)),
          slab_table_(std::move(slab_table)) {}

    const PageFormat& format() const noexcept { return format_; }
    uint64_t num_blocks() const noexcept { return num_blocks_; }
    uint32_t slab_shift() const noexcept { return slab_shift_; }
    uint64_t blocks_per_slab() const noexcept { return uint64_t(1) << slab_shift_; }
    const std::vector<std::shared_ptr<Buffer>>& slabs() const noexcept { return slabs_; }
    const Buffer& slab_table() const noexcept { return *slab_table_; }
    uint64_t bytes() const noexcept { return num_blocks_ * format_.block_bytes(); }

    // The numbers page_address.glsl needs, from the format and the slabs.
    PageAddressing addressing() const {
        return {slab_table_->address(),     format_.block_bytes(),
                format_.block_size,         slab_shift_,
                format_.head_stride_rows(), format_.slot_stride_rows()};
    }

    Buffer& slab_of(uint32_t block) const { return *slabs_[block >> slab_shift_]; }
    uint64_t offset_of(uint32_t block) const {
        return (block & (blocks_per_slab() - 1)) * format_.block_bytes();
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
    PageFormat format_;
    uint64_t num_blocks_ = 0;
    uint32_t slab_shift_ = 0;
    std::vector<std::shared_ptr<Buffer>> slabs_;
    std::shared_ptr<Buffer> slab_table_;
};

}  // namespace pagedkv::detail
