// PrefixIndex: which pages hold which token prefixes (prefix caching), so that a request
// repeating a prompt that was computed before shares its pages instead of computing them
// again (vLLM's hashed full blocks, SGLang's radix tree). Pure host logic: no Vulkan.
//
// A full page is named by a chained hash (xxHash XXH3, 64 bits) of its parent page's hash, a
// per-sequence salt (tenants, LoRA adapters: a different salt never hits) and its block_size
// token ids. The index keeps, per cached page, that hash, the salt, the token ids and the
// parent page, and one page per hash. A lookup walks a prompt's full pages from the first and
// stops at the first page not found, or found with other tokens, salt or parent: a hash
// collision can never hand a sequence someone else's K/V.
//
// Invariant (check()): every indexed page's parent is indexed (or it is a first page), so each
// one is reachable from its prompt. When a page leaves the index (evicted, or removed) its
// descendants leave with it; evictable ones go to the free list.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "allocator/block_allocator.hpp"

namespace pagedkv {

// One indexed page, as snapshots and the dump tool show it.
struct PrefixEntry {
    static constexpr uint32_t kNoParent = UINT32_MAX;

    BlockId block{};
    uint64_t hash = 0;
    uint64_t salt = 0;
    uint32_t parent = kNoParent;  // the block of the page before it, or kNoParent
    std::vector<int32_t> tokens;  // block_size ids

    bool operator==(const PrefixEntry&) const = default;
};

// Told of each indexed page the allocator evicts, before the index forgets it, so that the
// page's bytes can be kept elsewhere (the host tier) under the same identity: its hash, its
// parent's hash (kRootHash for a first page), salt and tokens. Called from inside allocate():
// it must not allocate or release blocks of the index's allocator.
class SpillListener {
  public:
    virtual void spilling(BlockId b, uint64_t hash, uint64_t parent_hash, uint64_t salt,
                          std::span<const int32_t> tokens) noexcept = 0;

  protected:
    ~SpillListener() = default;
};

class PrefixIndex final : public EvictionListener {
  public:
    // The parent hash of a sequence's first page.
    static constexpr uint64_t kRootHash = 0x9e3779b97f4a7c15ull;
    static uint64_t hash_page(uint64_t parent_hash, uint64_t salt,
                              std::span<const int32_t> tokens) noexcept;

    using HashFn = uint64_t (*)(uint64_t parent_hash, uint64_t salt,
                                std::span<const int32_t> tokens) noexcept;

    // Enables caching in alloc (this index is its EvictionListener until destroyed). hash_fn is
    // hash_page; tests pass a weak one to make collisions happen.
    PrefixIndex(BlockAllocator& alloc, uint32_t block_size, HashFn hash_fn = &hash_page);
    ~PrefixIndex();
    PrefixIndex(const PrefixIndex&) = delete;
    PrefixIndex& operator=(const PrefixIndex&) = delete;

    uint32_t block_size() const noexcept { return block_size_; }
    // The hash this index names a page by (its hash_fn).
    uint64_t page_hash(uint64_t parent_hash, uint64_t salt,
                       std::span<const int32_t> tokens) const noexcept {
        return hash_(parent_hash, salt, tokens);
    }
    // Told of each evicted indexed page before it leaves the index (null: none). Only the
    // evicted page itself: its descendants leave the index unannounced.
    void set_spill_listener(SpillListener* l) noexcept { spill_ = l; }
    uint64_t size() const noexcept { return by_hash_.size(); }
    bool contains(BlockId b) const noexcept;
    // A number unique to b's current entry (0 when b is not indexed): an entry removed and made
    // again gets a new one, so a holder of the old number can tell.
    uint64_t serial(BlockId b) const noexcept;
    uint64_t hash(BlockId b) const;

    // The indexed pages holding the longest run of the first full pages of tokens (at most
    // max_pages), in order; none is retained.
    std::vector<BlockId> match(std::span<const int32_t> tokens, uint64_t salt,
                               size_t max_pages) const;

    // What insert() did.
    enum class Insert {
        Added,      // b is now indexed
        Duplicate,  // the same page (tokens, salt, parent) is indexed in another block: `found`
        Collision,  // another page has this hash; nothing indexed
        ParentGone  // parent is not indexed (any more); nothing indexed
    };
    struct InsertResult {
        Insert what;
        BlockId found{};  // Added: b; Duplicate: the block already indexed
    };
    // Indexes block b (in use) as the page after `parent` (kNoParent: a first page) holding
    // tokens (block_size of them) under salt. Throws bad_alloc only before changing anything.
    InsertResult insert(BlockId b, uint32_t parent, uint64_t salt, std::span<const int32_t> tokens);
    // Removes b and its descendants from the index (evictable ones become free).
    void remove(BlockId b);
    // Removes every page (reset_prefix_cache).
    void clear();

    // Every entry, each page after its parent (restore re-inserts them in this order).
    std::vector<PrefixEntry> entries() const;
    // Rebuilds the index from entries (parents first) over an allocator already restored with
    // these blocks cached; throws InvalidArgument naming the first bad entry, changing nothing.
    void restore(std::span<const PrefixEntry> entries);

    // The index's invariants, and its agreement with the allocator: every indexed page's hash
    // is the hash of its tokens, salt and parent; its parent is indexed; the allocator marks
    // exactly the indexed blocks cached. Returns the first violation, or "".
    std::string check() const;

    // EvictionListener: the allocator evicted b (it is free now). Allocates nothing.
    void evicted(BlockId b) noexcept override;

  private:
    static constexpr uint32_t kNone = UINT32_MAX;
    struct Node {
        uint64_t hash = 0, salt = 0, serial = 0;  // serial 0: not indexed
        uint32_t parent = kNone;
        uint32_t first_child = kNone, next_sibling = kNone, prev_sibling = kNone;
    };
    std::span<const int32_t> tokens_of(uint32_t x) const {
        return {tokens_.data() + size_t(x) * block_size_, block_size_};
    }
    uint64_t parent_hash(uint32_t x) const;
    uint64_t hash_of(uint64_t parent_hash, uint64_t salt, std::span<const int32_t> t) const {
        return hash_(parent_hash, salt, t);
    }
    // Takes x out of the index and of its parent's children; then each descendant likewise.
    // Allocates nothing (its walk uses stack_, as large as the pool).
    void drop(uint32_t x, bool uncache_self) noexcept;

    BlockAllocator* alloc_;
    uint32_t block_size_;
    HashFn hash_;
    std::vector<Node> nodes_;      // [block]
    std::vector<int32_t> tokens_;  // [block][block_size]
    std::unordered_map<uint64_t, uint32_t> by_hash_;
    std::vector<uint32_t> stack_;  // drop()'s walk, capacity num_blocks
    uint64_t next_serial_ = 1;
    SpillListener* spill_ = nullptr;
};

}  // namespace pagedkv
