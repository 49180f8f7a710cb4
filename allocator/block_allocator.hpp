// BlockAllocator: which pages of a pool are free, and how many block tables reference each.
// Plain C++ with no GPU behind it (like VMA's virtual blocks), so every bookkeeping rule is
// testable on the CPU in microseconds. O(1) allocate and free through a LIFO free list.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "allocator/block_id.hpp"
#include "pagedkv/block_counts.hpp"

namespace pagedkv {

class BlockTable;

// Counters kept as we go (cheap; the "first tier" of statistics).
struct AllocatorCounters : BlockCounts {
    uint64_t allocations = 0;  // blocks handed out since creation
    uint64_t releases = 0;     // blocks returned to the free list since creation
};

// Everything a BlockAllocator holds except the tables registered with it: enough to rebuild it
// exactly, free-list order included (snapshots restore pools through it).
struct AllocatorState {
    std::vector<uint32_t> refcounts;  // one per block
    std::vector<BlockId> free_list;   // bottom of the LIFO stack first: the last is handed out next
    uint64_t peak_used_blocks = 0;
    uint64_t allocations = 0;
    uint64_t releases = 0;

    bool operator==(const AllocatorState&) const = default;
};

// What is wrong with an AllocatorState: where (the field, and the index in refcounts or
// free_list), its name for messages ("free_list[2]"), and what.
struct StateProblem {
    enum class Where { Refcounts, FreeList, PeakUsed, Allocations };
    Where where;
    uint64_t index = 0;
    std::string field;
    std::string what;
};
// The invariants of a state on its own, for a pool of num_blocks blocks: one reference count per
// block; the free list holds every block of refcount 0 exactly once and nothing else;
// peak_used_blocks within [blocks in use, num_blocks]; allocations - releases = blocks in use.
// One function for BlockAllocator::restore, BlockAllocator::check and the snapshot checks.
std::optional<StateProblem> check_state(const AllocatorState& s, uint64_t num_blocks);
// refcounts[b] == refs[b] (the references the block tables hold) for every block.
std::optional<StateProblem> check_references(std::span<const uint32_t> refcounts,
                                             std::span<const uint64_t> refs);

class BlockAllocator {
  public:
    explicit BlockAllocator(uint64_t num_blocks);
    BlockAllocator(const BlockAllocator&) = delete;
    BlockAllocator& operator=(const BlockAllocator&) = delete;

    uint64_t num_blocks() const noexcept { return refcount_.size(); }
    uint64_t free_blocks() const noexcept { return free_.size(); }

    // All or nothing: appends n fresh blocks (reference count 1) to out, or throws
    // Error(OutOfBlocks) and changes nothing.
    void allocate(uint64_t n, std::vector<BlockId>& out) {
        if (n > free_.size()) [[unlikely]]
            throw_out_of_blocks(n);
        for (uint64_t i = 0; i < n; ++i) {
            const BlockId b = free_.back();
            free_.pop_back();
            refcount_[index(b)] = 1;
            out.push_back(b);
        }
        counters_.used_blocks += n;
        counters_.free_blocks -= n;
        counters_.allocations += n;
        if (counters_.used_blocks > counters_.peak_used_blocks)
            counters_.peak_used_blocks = counters_.used_blocks;
    }
    // One more reference to a block in use (a table sharing it).
    void retain(BlockId b) {
        if (index(b) >= refcount_.size() || refcount_[index(b)] == 0) [[unlikely]]
            throw_not_in_use(b, "retain");
        if (++refcount_[index(b)] == 2) ++counters_.shared_blocks;
    }
    // One reference fewer; the block returns to the free list when none is left.
    // Returns true when it did.
    bool release(BlockId b) {
        if (index(b) >= refcount_.size() || refcount_[index(b)] == 0) [[unlikely]]
            throw_not_in_use(b, "release");
        uint32_t& rc = refcount_[index(b)];
        if (--rc != 0) {
            if (rc == 1) --counters_.shared_blocks;
            return false;
        }
        free_.push_back(b);
        --counters_.used_blocks;
        ++counters_.free_blocks;
        ++counters_.releases;
        return true;
    }
    uint32_t refcount(BlockId b) const;

    const AllocatorCounters& counters() const noexcept { return counters_; }

    // Every invariant, checked by walking: free + used = total, no duplicate on the free
    // list, free blocks have no references, each reference count equals the number of
    // references the registered block tables hold. Returns the first violation, or "".
    std::string check() const;
    bool validate() const { return check().empty(); }

    // Block tables announce themselves so check() can count their references.
    void register_table(const BlockTable* t) { tables_.insert(t); }
    void unregister_table(const BlockTable* t) { tables_.erase(t); }
    const std::unordered_set<const BlockTable*>& tables() const noexcept { return tables_; }

    // The free list, top of the stack last (for snapshots and the dump tool).
    std::span<const BlockId> free_list() const noexcept { return free_; }

    AllocatorState state() const;
    // Makes this allocator exactly the one `s` was taken from (reference counts, free-list
    // order, counters), so that tables can then adopt the references without allocating.
    // Only while no registered table holds a block; throws Error(InvalidArgument) naming the
    // first inconsistency and changes nothing.
    void restore(const AllocatorState& s);

  private:
    // The error paths, out of line so the hot paths above stay small.
    [[noreturn]] void throw_out_of_blocks(uint64_t n) const;
    [[noreturn]] void throw_not_in_use(BlockId b, const char* what) const;

    std::vector<BlockId> free_;
    std::vector<uint32_t> refcount_;
    std::unordered_set<const BlockTable*> tables_;
    AllocatorCounters counters_;
};

}  // namespace pagedkv
