#include "allocator/prefix_index.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "pagedkv/error.hpp"

// xxHash from Debian's libxxhash-dev, inlined (no library to link, nothing for a consumer of an
// installed pagedkv to find).
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace pagedkv {

uint64_t PrefixIndex::hash_page(uint64_t parent_hash, uint64_t salt,
                                std::span<const int32_t> tokens) noexcept {
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    const uint64_t head[2] = {parent_hash, salt};
    XXH3_64bits_update(&state, head, sizeof head);
    XXH3_64bits_update(&state, tokens.data(), tokens.size_bytes());
    return XXH3_64bits_digest(&state);
}

PrefixIndex::PrefixIndex(BlockAllocator& alloc, uint32_t block_size, HashFn hash_fn)
    : alloc_(&alloc), block_size_(block_size), hash_(hash_fn) {
    if (block_size == 0)
        throw Error(ErrorCode::InvalidArgument, "PrefixIndex: block_size must be at least 1");
    const uint64_t n = alloc.num_blocks();
    nodes_.resize(n);
    tokens_.resize(n * block_size);
    by_hash_.reserve(n);  // inserting never rehashes
    stack_.reserve(n);
    alloc.enable_caching(this);
}

PrefixIndex::~PrefixIndex() {
    clear();
    alloc_->disable_caching();
}

bool PrefixIndex::contains(BlockId b) const noexcept {
    return index(b) < nodes_.size() && nodes_[index(b)].serial != 0;
}

uint64_t PrefixIndex::serial(BlockId b) const noexcept {
    return index(b) < nodes_.size() ? nodes_[index(b)].serial : 0;
}

uint64_t PrefixIndex::hash(BlockId b) const {
    if (!contains(b))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("PrefixIndex: block {} is not indexed", index(b)));
    return nodes_[index(b)].hash;
}

uint64_t PrefixIndex::parent_hash(uint32_t x) const {
    const uint32_t p = nodes_[x].parent;
    return p == kNone ? kRootHash : nodes_[p].hash;
}

std::vector<BlockId> PrefixIndex::match(std::span<const int32_t> tokens, uint64_t salt,
                                        size_t max_pages) const {
    std::vector<BlockId> out;
    const size_t pages = std::min(max_pages, tokens.size() / block_size_);
    uint64_t parent_hash = kRootHash;
    uint32_t parent = kNone;
    for (size_t i = 0; i < pages; ++i) {
        const auto page = tokens.subspan(i * block_size_, block_size_);
        const uint64_t h = hash_of(parent_hash, salt, page);
        const auto it = by_hash_.find(h);
        if (it == by_hash_.end()) break;
        const uint32_t x = it->second;
        const Node& n = nodes_[x];
        if (n.parent != parent || n.salt != salt || !std::ranges::equal(tokens_of(x), page))
            break;  // a collision: another page has this hash
        out.push_back(BlockId{x});
        parent_hash = h;
        parent = x;
    }
    return out;
}

PrefixIndex::InsertResult PrefixIndex::insert(BlockId b, uint32_t parent, uint64_t salt,
                                              std::span<const int32_t> tokens) {
    const uint32_t x = index(b);
    if (x >= nodes_.size() || tokens.size() != block_size_)
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("PrefixIndex::insert: block {} of {}, {} tokens of {}", x,
                                nodes_.size(), tokens.size(), block_size_));
    if (parent != kNone && (parent >= nodes_.size() || nodes_[parent].serial == 0))
        return {Insert::ParentGone};
    const uint64_t h = hash_of(parent == kNone ? kRootHash : nodes_[parent].hash, salt, tokens);
    if (const auto it = by_hash_.find(h); it != by_hash_.end()) {
        const uint32_t y = it->second;
        const Node& n = nodes_[y];
        if (n.parent == parent && n.salt == salt && std::ranges::equal(tokens_of(y), tokens))
            return {Insert::Duplicate, BlockId{y}};
        return {Insert::Collision};
    }
    if (nodes_[x].serial != 0)  // indexed already under another hash: leave it there
        return {Insert::Collision};
    if (alloc_->refcount(b) == 0)  // throws if out of range
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("PrefixIndex::insert: block {} is not in use", x));
    by_hash_.emplace(h, x);  // may throw bad_alloc: nothing changed
    alloc_->mark_cached(b);  // cannot throw now
    Node& n = nodes_[x];
    n.hash = h;
    n.salt = salt;
    n.serial = next_serial_++;
    n.parent = parent;
    n.first_child = kNone;
    n.prev_sibling = kNone;
    n.next_sibling = parent == kNone ? kNone : nodes_[parent].first_child;
    if (parent != kNone) {
        if (n.next_sibling != kNone) nodes_[n.next_sibling].prev_sibling = x;
        nodes_[parent].first_child = x;
    }
    std::copy(tokens.begin(), tokens.end(), tokens_.begin() + ptrdiff_t(size_t(x) * block_size_));
    return {Insert::Added, b};
}

void PrefixIndex::drop(uint32_t x, bool uncache_self) noexcept {
    // Unlink x from its parent's children, then walk its subtree iteratively.
    Node& n = nodes_[x];
    if (n.prev_sibling != kNone)
        nodes_[n.prev_sibling].next_sibling = n.next_sibling;
    else if (n.parent != kNone)
        nodes_[n.parent].first_child = n.next_sibling;
    if (n.next_sibling != kNone) nodes_[n.next_sibling].prev_sibling = n.prev_sibling;
    // Each indexed block is pushed at most once, so stack_ never outgrows its capacity.
    std::vector<uint32_t>& stack = stack_;
    stack.clear();
    stack.push_back(x);
    bool first = true;
    while (!stack.empty()) {
        const uint32_t y = stack.back();
        stack.pop_back();
        Node& m = nodes_[y];
        for (uint32_t c = m.first_child; c != kNone; c = nodes_[c].next_sibling)
            stack.push_back(c);
        by_hash_.erase(m.hash);
        if (!first || uncache_self) alloc_->uncache(BlockId{y});
        m = Node{};
        first = false;
    }
}

void PrefixIndex::remove(BlockId b) {
    if (contains(b)) drop(index(b), true);
}

void PrefixIndex::evicted(BlockId b) noexcept {
    if (!contains(b)) return;
    const uint32_t x = index(b);
    if (spill_) spill_->spilling(b, nodes_[x].hash, parent_hash(x), nodes_[x].salt, tokens_of(x));
    drop(x, false);  // the allocator uncached it already
}

void PrefixIndex::clear() {
    for (uint32_t x = 0; x < nodes_.size(); ++x)
        if (nodes_[x].serial != 0) {
            alloc_->uncache(BlockId{x});
            nodes_[x] = Node{};
        }
    by_hash_.clear();
}

std::vector<PrefixEntry> PrefixIndex::entries() const {
    // Breadth first from the first pages: each page after its parent.
    std::vector<PrefixEntry> out;
    out.reserve(by_hash_.size());
    std::vector<uint32_t> order;
    order.reserve(by_hash_.size());
    for (uint32_t x = 0; x < nodes_.size(); ++x)
        if (nodes_[x].serial != 0 && nodes_[x].parent == kNone) order.push_back(x);
    for (size_t i = 0; i < order.size(); ++i)
        for (uint32_t c = nodes_[order[i]].first_child; c != kNone; c = nodes_[c].next_sibling)
            order.push_back(c);
    for (uint32_t x : order) {
        const Node& n = nodes_[x];
        const auto t = tokens_of(x);
        out.push_back({BlockId{x}, n.hash, n.salt,
                       n.parent == kNone ? PrefixEntry::kNoParent : n.parent,
                       std::vector<int32_t>(t.begin(), t.end())});
    }
    return out;
}

void PrefixIndex::restore(std::span<const PrefixEntry> entries) {
    // Checked in full against a scratch copy first, so that a bad entry changes nothing.
    std::vector<uint8_t> seen(nodes_.size(), 0);
    for (size_t i = 0; i < entries.size(); ++i) {
        const PrefixEntry& e = entries[i];
        const uint32_t x = index(e.block);
        auto bad = [&](const std::string& what) {
            return Error(ErrorCode::InvalidArgument,
                         fmt::format("PrefixIndex::restore: entry {} (block {}): {}", i, x, what));
        };
        if (x >= nodes_.size()) throw bad("out of range");
        if (seen[x]) throw bad("indexed twice");
        if (e.tokens.size() != block_size_)
            throw bad(fmt::format("{} tokens, pages hold {}", e.tokens.size(), block_size_));
        if (e.parent != PrefixEntry::kNoParent && (e.parent >= nodes_.size() || !seen[e.parent]))
            throw bad(fmt::format("its parent {} is not an entry before it", e.parent));
        if (!alloc_->is_cached(e.block)) throw bad("the allocator does not mark it cached");
        seen[x] = 1;
    }
    std::unordered_map<uint64_t, uint32_t> by_hash;
    by_hash.reserve(nodes_.size());
    std::vector<Node> nodes(nodes_.size());
    std::vector<uint64_t> hashes(nodes_.size(), 0);
    for (size_t i = 0; i < entries.size(); ++i) {
        const PrefixEntry& e = entries[i];
        const uint32_t x = index(e.block);
        const uint64_t parent_hash =
            e.parent == PrefixEntry::kNoParent ? kRootHash : hashes[e.parent];
        const uint64_t h = hash_of(parent_hash, e.salt, e.tokens);
        if (h != e.hash)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("PrefixIndex::restore: entry {} (block {}): hash {:016x}, its "
                                    "tokens hash to {:016x}",
                                    i, x, e.hash, h));
        if (!by_hash.emplace(h, x).second)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("PrefixIndex::restore: entry {} (block {}): hash {:016x} is "
                                    "indexed twice",
                                    i, x, h));
        hashes[x] = h;
        Node& n = nodes[x];
        n.hash = h;
        n.salt = e.salt;
        n.parent = e.parent == PrefixEntry::kNoParent ? kNone : e.parent;
    }
    // Children linked last first, so that entries() lists them in the order given.
    for (size_t i = entries.size(); i-- > 0;) {
        const uint32_t x = index(entries[i].block);
        Node& n = nodes[x];
        if (n.parent == kNone) continue;
        n.next_sibling = nodes[n.parent].first_child;
        if (n.next_sibling != kNone) nodes[n.next_sibling].prev_sibling = x;
        nodes[n.parent].first_child = x;
    }
    for (BlockId b : alloc_->state().cached)
        if (!seen[index(b)])
            throw Error(
                ErrorCode::InvalidArgument,
                fmt::format("PrefixIndex::restore: block {} is cached but has no entry", index(b)));
    // Nothing below throws.
    uint64_t serial = next_serial_;
    for (const PrefixEntry& e : entries) {
        nodes[index(e.block)].serial = serial++;
        std::copy(e.tokens.begin(), e.tokens.end(),
                  tokens_.begin() + ptrdiff_t(size_t(index(e.block)) * block_size_));
    }
    next_serial_ = serial;
    nodes_.swap(nodes);
    by_hash_.swap(by_hash);
}

std::string PrefixIndex::check() const {
    uint64_t indexed = 0;
    for (uint32_t x = 0; x < nodes_.size(); ++x) {
        const Node& n = nodes_[x];
        const bool cached = alloc_->is_cached(BlockId{x});
        if (n.serial == 0) {
            if (cached) return fmt::format("block {} is cached but not in the prefix index", x);
            continue;
        }
        ++indexed;
        if (!cached) return fmt::format("block {} is in the prefix index but not cached", x);
        if (n.parent != kNone && (n.parent >= nodes_.size() || nodes_[n.parent].serial == 0))
            return fmt::format(
                "indexed block {} has parent {}, which is not indexed: it cannot "
                "be found",
                x, n.parent);
        if (hash_of(parent_hash(x), n.salt, tokens_of(x)) != n.hash)
            return fmt::format(
                "indexed block {} has hash {:016x} but holds tokens that hash to "
                "{:016x}",
                x, n.hash, hash_of(parent_hash(x), n.salt, tokens_of(x)));
        const auto it = by_hash_.find(n.hash);
        if (it == by_hash_.end() || it->second != x)
            return fmt::format("indexed block {} (hash {:016x}) cannot be found by its hash", x,
                               n.hash);
        // Its parent lists it among its children.
        if (n.parent != kNone) {
            bool listed = false;
            for (uint32_t c = nodes_[n.parent].first_child; c != kNone && !listed;
                 c = nodes_[c].next_sibling)
                listed = c == x;
            if (!listed)
                return fmt::format("indexed block {} is not among its parent {}'s children", x,
                                   n.parent);
        }
    }
    if (indexed != by_hash_.size())
        return fmt::format("the prefix index names {} hashes but {} blocks are indexed",
                           by_hash_.size(), indexed);
    // No referenced page on the evictable list (the allocator checks its own list; this is the
    // index's view of it).
    for (BlockId b : alloc_->evictable()) {
        if (alloc_->refcount(b) != 0)
            return fmt::format("block {} is evictable but has {} references", index(b),
                               alloc_->refcount(b));
        if (nodes_[index(b)].serial == 0)
            return fmt::format("block {} is evictable but not in the prefix index", index(b));
    }
    return {};
}

}  // namespace pagedkv
