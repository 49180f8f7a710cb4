// BlockTable: one sequence's logical block -> physical page map.
// Owns one reference to each block it lists and gives them back when destroyed; forking a
// table shares its pages (reference counts) instead of copying them.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "allocator/block_allocator.hpp"

namespace pagedkv {

class BlockTable {
  public:
    explicit BlockTable(BlockAllocator& alloc);
    ~BlockTable();
    BlockTable(BlockTable&& other) noexcept;
    BlockTable& operator=(BlockTable&& other) noexcept;
    BlockTable(const BlockTable&) = delete;
    BlockTable& operator=(const BlockTable&) = delete;

    // A second table over the same pages: every block gains one reference.
    BlockTable fork() const;

    const std::vector<BlockId>& blocks() const noexcept { return blocks_; }
    size_t size() const noexcept { return blocks_.size(); }
    bool empty() const noexcept { return blocks_.empty(); }
    BlockId operator[](size_t i) const { return blocks_[i]; }
    BlockAllocator& allocator() const noexcept { return *alloc_; }

    void reserve(size_t n) { blocks_.reserve(n); }
    // Takes over references the caller already holds (fresh blocks from allocate()).
    void adopt_back(std::span<const BlockId> fresh) {
        if (fresh.size() == 1)  // a sequence growing by a page at a time
            blocks_.push_back(fresh[0]);
        else
            blocks_.insert(blocks_.end(), fresh.begin(), fresh.end());
    }
    // Replaces block i by a block whose reference the caller holds, releasing the old one
    // (the last step of a copy-on-write).
    void replace(size_t i, BlockId fresh);
    // Releases the first n / last n blocks (crop, sliding window / truncate).
    void release_front(size_t n);
    void release_back(size_t n);
    void release_all() { release_back(blocks_.size()); }

  private:
    friend class BlockAllocator;  // keeps slot_

    BlockAllocator* alloc_;
    std::vector<BlockId> blocks_;
    size_t slot_ = 0;  // where the allocator's list of tables holds this one
};

}  // namespace pagedkv
