// BlockAllocator: which pages of a pool are free, and how many block tables reference each.
// Plain C++ with no GPU behind it (like VMA's virtual blocks), so every bookkeeping rule is
// testable on the CPU in microseconds. O(1) allocate and free through a LIFO free list; flat
// arrays and no heap allocation on any path a sequence takes while it grows and ends.
//
// Prefix caching adds a third state beside free and used: a *cached* block (one a prefix index
// names) whose last reference goes away is not freed but becomes evictable, at the tail of an
// LRU list. allocate() takes free blocks first, then evicts from the head of that list (the
// least recently released; a sequence releases its tail first, so leaves go before parents),
// telling the EvictionListener (the index) each block it takes back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
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
    std::vector<BlockId> cached;      // every cached block (named by a prefix index), ascending
    std::vector<BlockId> evictable;   // the cached blocks of refcount 0, least recent first
    uint64_t peak_used_blocks = 0;
    uint64_t allocations = 0;
    uint64_t releases = 0;

    bool operator==(const AllocatorState&) const = default;
};

// What is wrong with an AllocatorState: where (the field, and the index in refcounts or
// free_list), its name for messages ("free_list[2]"), and what.
struct StateProblem {
    enum class Where { Refcounts, FreeList, PeakUsed, Allocations, Cached, Evictable };
    Where where;
    uint64_t index = 0;
    std::string field;
    std::string what;
};
// The invariants of a state on its own, for a pool of num_blocks blocks: one reference count per
// block; every block of refcount 0 is on the free list or (cached) evictable, exactly once;
// cached is ascending and in range, and no free-list block is cached;
// peak_used_blocks within [blocks in use, num_blocks]; allocations - releases = blocks in use.
// One function for BlockAllocator::restore, BlockAllocator::check and the snapshot checks.
std::optional<StateProblem> check_state(const AllocatorState& s, uint64_t num_blocks);
// refcounts[b] == refs[b] (the references the block tables hold) for every block.
std::optional<StateProblem> check_references(std::span<const uint32_t> refcounts,
                                             std::span<const uint64_t> refs);

// Told of each cached block that allocate() evicts (after the block left the cached state), so
// that the prefix index forgets it. It may uncache() other blocks (the evicted block's
// children) but must not allocate or release.
class EvictionListener {
  public:
    virtual void evicted(BlockId b) noexcept = 0;

  protected:
    ~EvictionListener() = default;
};

class BlockAllocator {
  public:
    explicit BlockAllocator(uint64_t num_blocks);
    BlockAllocator(const BlockAllocator&) = delete;
    BlockAllocator& operator=(const BlockAllocator&) = delete;

    uint64_t num_blocks() const noexcept { return counters_.num_blocks; }
    uint64_t free_blocks() const noexcept { return free_top_; }
    // Free and evictable blocks: what allocate() can hand out.
    uint64_t available_blocks() const noexcept { return free_top_ + counters_.cached_blocks; }

    // All or nothing: appends n fresh blocks (reference count 1) to out, free ones first, then
    // evicted cached ones, or throws Error(OutOfBlocks) and changes nothing.
    void allocate(uint64_t n, std::vector<BlockId>& out) {
        if (n > free_top_) [[unlikely]]
            evict_for(n, out);  // throws OutOfBlocks when even eviction cannot make room
        if (n > out.capacity() - out.size()) make_room(out, n);  // may throw: nothing changed
        // The top of the stack first: out gets free_[top - 1], free_[top - 2], ...
        const BlockId* src = free_.get() + free_top_;
        uint8_t* const rc = refcount_.get();
        for (uint64_t i = 0; i < n; ++i) {
            const BlockId b = *--src;
            out.push_back(b);  // never reallocates now
            rc[index(b)] = 1;
        }
        free_top_ -= n;
        counters_.used_blocks += n;
        counters_.free_blocks -= n;
        counters_.allocations += n;
        if (counters_.used_blocks > counters_.peak_used_blocks)
            counters_.peak_used_blocks = counters_.used_blocks;
    }
    // One more reference to a block in use (a table sharing it).
    void retain(BlockId b) {
        if (index(b) >= num_blocks() || refcount_[index(b)] == 0) [[unlikely]]
            throw_not_in_use(b, "retain");
        uint8_t& rc = refcount_[index(b)];
        if (rc >= kBig - 1) [[unlikely]]
            return retain_big(b);
        if (++rc == 2) ++counters_.shared_blocks;
    }
    // One reference fewer; the block returns to the free list when none is left (or, when it
    // is cached, to the tail of the evictable list). Returns true when it did either.
    bool release(BlockId b) {
        if (index(b) >= num_blocks() || refcount_[index(b)] == 0) [[unlikely]]
            throw_not_in_use(b, "release");
        uint8_t& rc = refcount_[index(b)];
        if (rc == kBig) [[unlikely]] {
            release_big(b);
            return false;
        }
        if (--rc != 0) {
            if (rc == 1) --counters_.shared_blocks;
            return false;
        }
        --counters_.used_blocks;
        ++counters_.releases;
        if (caching_ && cached_[index(b)]) [[unlikely]] {
            lru_push_back(index(b));
            ++counters_.cached_blocks;
            return true;
        }
        free_[free_top_++] = b;
        ++counters_.free_blocks;
        return true;
    }
    // release() of blocks[size - 1], ..., blocks[0], in that order (a table dropping its tail),
    // with the counters updated once. If one is not in use it throws what release() throws,
    // having released those before it; `done` counts the blocks released (on return: all).
    void release_reverse(std::span<const BlockId> blocks, size_t& done);
    // release() of blocks[0], ..., blocks[size - 1], in that order (a table dropping its head).
    void release_forward(std::span<const BlockId> blocks, size_t& done);
    uint32_t refcount(BlockId b) const;

    // ---- Cached blocks (prefix caching). Off until enable_caching(); then a block marked
    // cached goes to the evictable list instead of the free list when its last reference goes.
    void enable_caching(EvictionListener* listener);
    void disable_caching() noexcept;  // only with no block cached
    bool caching() const noexcept { return caching_; }
    bool is_cached(BlockId b) const noexcept { return caching_ && cached_[index(b)]; }
    // Whether writing into b must copy it first: shared, or cached (the cached copy stays).
    bool must_copy(BlockId b) const { return refcount(b) > 1 || is_cached(b); }
    // Marks a block in use as cached (the index now names it).
    void mark_cached(BlockId b);
    // Not cached any more; an evictable block goes to the free list.
    void uncache(BlockId b) noexcept;
    // One more reference to a cached block, used or evictable (a prefix cache hit): an
    // evictable block leaves the evictable list with reference count 1.
    void reuse(BlockId b);
    // The evictable blocks, least recently released first.
    std::vector<BlockId> evictable() const;
    uint64_t evictions() const noexcept { return evictions_; }

    const AllocatorCounters& counters() const noexcept { return counters_; }

    // Every invariant, checked by walking: free + used = total, no duplicate on the free
    // list, free blocks have no references, each reference count equals the number of
    // references the registered block tables hold. Returns the first violation, or "".
    std::string check() const;
    bool validate() const { return check().empty(); }

    // Block tables announce themselves so check() can count their references: an index vector,
    // each table knowing its slot, so that registering and unregistering are O(1) with no
    // allocation once the vector has grown. BlockTable calls these.
    void register_table(BlockTable* t);
    void unregister_table(BlockTable* t) noexcept;
    // The registered tables, in no particular order.
    std::span<const BlockTable* const> tables() const noexcept {
        return {const_cast<const BlockTable* const*>(tables_.data()), tables_.size()};
    }

    // Page-list storage of destroyed tables, kept for the next tables (BlockTable calls these),
    // so that a sequence that ends and one that starts cost no heap allocation.
    std::vector<BlockId> take_buffer() noexcept {
        if (spare_.empty()) return {};
        std::vector<BlockId> v = std::move(spare_.back());
        spare_.pop_back();
        return v;
    }
    void give_buffer(std::vector<BlockId>&& v) noexcept {
        if (v.capacity() == 0 || v.capacity() > kSpareCapacity || spare_.size() == kSpareBuffers)
            return;
        v.clear();
        spare_.push_back(std::move(v));  // never reallocates: reserved kSpareBuffers
    }

    // The free list, top of the stack last (for snapshots and the dump tool).
    std::span<const BlockId> free_list() const noexcept { return {free_.get(), free_top_}; }

    AllocatorState state() const;
    // Makes this allocator exactly the one `s` was taken from (reference counts, free-list
    // order, counters), so that tables can then adopt the references without allocating.
    // Only while no registered table holds a block; throws Error(InvalidArgument) naming the
    // first inconsistency and changes nothing.
    void restore(const AllocatorState& s);

  private:
    // Reference counts are one byte each (a quarter of the cache lines that a sequence of random
    // pages touches); a count of kBig or more is kept in big_, the byte saying kBig.
    static constexpr uint8_t kBig = 255;
    static constexpr size_t kSpareBuffers = 32;     // page lists kept for reuse
    static constexpr size_t kSpareCapacity = 4096;  // the longest kept (16 KiB)

    // The error paths and the rare counts, out of line so the hot paths above stay small.
    [[noreturn]] void throw_out_of_blocks(uint64_t n) const;
    // allocate()'s slow path: evicts least recently released cached blocks until n are free.
    void evict_for(uint64_t n, std::vector<BlockId>& out);
    // The evictable list: doubly linked through lru_prev_/lru_next_, lru_end_ the sentinel.
    void lru_push_back(uint32_t x) noexcept {
        const uint32_t last = lru_prev_[lru_end_];
        lru_next_[last] = x;
        lru_prev_[x] = last;
        lru_next_[x] = lru_end_;
        lru_prev_[lru_end_] = x;
    }
    void lru_unlink(uint32_t x) noexcept {
        lru_next_[lru_prev_[x]] = lru_next_[x];
        lru_prev_[lru_next_[x]] = lru_prev_[x];
    }
    [[noreturn]] void throw_not_in_use(BlockId b, const char* what) const;
    void retain_big(BlockId b);
    void release_big(BlockId b) noexcept;
    // Capacity for n more in out, growing it geometrically.
    static void make_room(std::vector<BlockId>& out, uint64_t n);
    template <class Order>
    void release_each(std::span<const BlockId> blocks, size_t& done, Order order);
    std::vector<uint32_t> refcounts() const;

    // The free list: a stack of num_blocks() slots, free_top_ of them in use (bottom first).
    std::unique_ptr<BlockId[]> free_;
    size_t free_top_ = 0;
    std::unique_ptr<uint8_t[]> refcount_;
    std::unordered_map<uint32_t, uint32_t> big_;  // block -> reference count, when >= kBig
    std::vector<BlockTable*> tables_;
    std::vector<std::vector<BlockId>> spare_;
    AllocatorCounters counters_;
    // Cached blocks: one flag each, and the evictable list (num_blocks + 1 links, the last the
    // sentinel). Allocated by enable_caching().
    bool caching_ = false;
    std::unique_ptr<uint8_t[]> cached_;
    std::unique_ptr<uint32_t[]> lru_prev_, lru_next_;
    uint32_t lru_end_ = 0;
    EvictionListener* listener_ = nullptr;
    uint64_t evictions_ = 0;
};

}  // namespace pagedkv
