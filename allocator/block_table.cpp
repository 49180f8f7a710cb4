#include "allocator/block_table.hpp"

#include <utility>

namespace pagedkv {

BlockTable::BlockTable(BlockAllocator& alloc) : alloc_(&alloc), blocks_(alloc.take_buffer()) {
    alloc_->register_table(this);
}

BlockTable::~BlockTable() {
    if (!alloc_) return;
    release_all();
    alloc_->unregister_table(this);
    alloc_->give_buffer(std::move(blocks_));
}

BlockTable::BlockTable(BlockTable&& other) noexcept
    : alloc_(other.alloc_), blocks_(std::move(other.blocks_)) {
    other.blocks_.clear();
    alloc_->register_table(this);
}

BlockTable& BlockTable::operator=(BlockTable&& other) noexcept {
    if (this == &other) return *this;
    release_all();
    if (alloc_ != other.alloc_) {
        alloc_->unregister_table(this);
        alloc_ = other.alloc_;
        alloc_->register_table(this);
    }
    blocks_ = std::move(other.blocks_);
    other.blocks_.clear();
    return *this;
}

BlockTable BlockTable::fork() const {
    BlockTable t(*alloc_);
    t.blocks_ = blocks_;
    for (BlockId b : blocks_)
        alloc_->retain(b);
    return t;
}

void BlockTable::replace(size_t i, BlockId fresh) {
    BlockId old = blocks_.at(i);
    blocks_[i] = fresh;
    alloc_->release(old);
}

void BlockTable::release_front(size_t n) {
    if (n > blocks_.size()) n = blocks_.size();
    size_t done = 0;
    alloc_->release_forward(std::span(blocks_).first(n), done);  // on a throw the table stays
    blocks_.erase(blocks_.begin(), blocks_.begin() + static_cast<std::ptrdiff_t>(n));
}

void BlockTable::release_back(size_t n) {
    if (n > blocks_.size()) n = blocks_.size();
    size_t done = 0;
    try {
        alloc_->release_reverse(std::span(blocks_).last(n), done);
    } catch (...) {
        blocks_.resize(blocks_.size() - done);  // those released before the failure are gone
        throw;
    }
    blocks_.resize(blocks_.size() - n);
}

}  // namespace pagedkv
