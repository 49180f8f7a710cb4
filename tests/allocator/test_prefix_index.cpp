// The evictable list and the prefix index on the CPU: chained hashes, token-checked hits, a
// weak hash that collides on purpose, least-recently-released eviction with leaves before
// parents, the cascade that keeps every indexed page findable, references never evicted, and
// the allocator state's new invariants.
#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_table.hpp"
#include "allocator/prefix_index.hpp"
#include "pagedkv/error.hpp"

using namespace pagedkv;

namespace {

constexpr uint32_t kBs = 4;

std::vector<int32_t> tokens(std::initializer_list<int32_t> t) {
    return std::vector<int32_t>(t);
}

// A sequence as the manager keeps one: a table, and its pages registered in order.
struct Seq {
    BlockTable table;
    std::vector<int32_t> toks;
};

// Allocates pages for toks (full pages only) and registers each after the one before.
Seq admit(BlockAllocator& a, PrefixIndex& idx, std::vector<int32_t> toks, uint64_t salt = 0) {
    Seq s{BlockTable(a), std::move(toks)};
    const size_t pages = s.toks.size() / kBs;
    const std::vector<BlockId> hit = idx.match(s.toks, salt, pages);
    for (BlockId b : hit)
        a.reuse(b);
    s.table.adopt_back(hit);
    std::vector<BlockId> fresh;
    a.allocate(pages - hit.size(), fresh);
    s.table.adopt_back(fresh);
    uint32_t parent = PrefixEntry::kNoParent;
    for (size_t k = 0; k < pages; ++k) {
        const auto r =
            idx.insert(s.table[k], parent, salt, std::span(s.toks).subspan(k * kBs, kBs));
        REQUIRE((r.what == PrefixIndex::Insert::Added || r.what == PrefixIndex::Insert::Duplicate));
        parent = index(r.found);
    }
    return s;
}

// n fresh pages into a table (the allocator's check() counts the tables' references).
void take(BlockAllocator& a, BlockTable& t, uint64_t n) {
    std::vector<BlockId> fresh;
    a.allocate(n, fresh);
    t.adopt_back(fresh);
}

std::vector<uint32_t> ids(const std::vector<BlockId>& v) {
    std::vector<uint32_t> out;
    for (BlockId b : v)
        out.push_back(index(b));
    return out;
}

// A hash with collisions on purpose: only the first token and the salt count.
uint64_t weak_hash(uint64_t parent, uint64_t salt, std::span<const int32_t> t) noexcept {
    return parent * 31 + salt * 7 + uint64_t(uint32_t(t[0]));
}

}  // namespace

TEST_CASE("prefix hash: chained over parent, salt and every token") {
    const auto a = tokens({1, 2, 3, 4}), b = tokens({1, 2, 3, 5});
    const uint64_t h = PrefixIndex::hash_page(PrefixIndex::kRootHash, 0, a);
    REQUIRE(h == PrefixIndex::hash_page(PrefixIndex::kRootHash, 0, a));
    REQUIRE(h != PrefixIndex::hash_page(PrefixIndex::kRootHash, 0, b));
    REQUIRE(h != PrefixIndex::hash_page(PrefixIndex::kRootHash, 1, a));
    REQUIRE(h != PrefixIndex::hash_page(h, 0, a));
}

TEST_CASE("prefix index: a prompt finds the longest run of its cached full pages") {
    BlockAllocator a(16);
    PrefixIndex idx(a, kBs);
    Seq s = admit(a, idx, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
    REQUIRE(idx.size() == 3);
    REQUIRE(idx.check() == "");
    REQUIRE(a.check() == "");
    const auto prompt = tokens({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13});
    REQUIRE(ids(idx.match(prompt, 0, 3)) == ids(s.table.blocks()));
    REQUIRE(idx.match(prompt, 0, 2).size() == 2);  // max_pages
    REQUIRE(idx.match(prompt, 1, 3).empty());      // another salt never hits
    // A different second page stops the run there, whatever follows.
    REQUIRE(idx.match(tokens({1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12}), 0, 3).size() == 1);
    // Only full pages: 7 tokens are one page.
    REQUIRE(idx.match(tokens({1, 2, 3, 4, 5, 6, 7}), 0, 9).size() == 1);
    // The same page registered again from another block is a duplicate, not a second entry.
    BlockTable other(a);
    take(a, other, 1);
    const auto r = idx.insert(other[0], PrefixEntry::kNoParent, 0, tokens({1, 2, 3, 4}));
    REQUIRE(r.what == PrefixIndex::Insert::Duplicate);
    REQUIRE(r.found == s.table[0]);
    REQUIRE_FALSE(a.is_cached(other[0]));
    REQUIRE(idx.check() == "");
    REQUIRE(a.check() == "");
}

TEST_CASE("prefix index: a hash collision never hands out another prompt's page") {
    BlockAllocator a(16);
    PrefixIndex idx(a, kBs, &weak_hash);
    Seq s = admit(a, idx, {1, 2, 3, 4, 5, 6, 7, 8});
    // Same first token, so the same weak hash: the stored tokens tell them apart.
    const auto twin = tokens({1, 9, 9, 9, 5, 6, 7, 8});
    REQUIRE(idx.match(twin, 0, 2).empty());
    BlockTable fresh(a);
    take(a, fresh, 1);
    const auto r = idx.insert(fresh[0], PrefixEntry::kNoParent, 0, std::span(twin).first(4));
    REQUIRE(r.what == PrefixIndex::Insert::Collision);
    REQUIRE_FALSE(a.is_cached(fresh[0]));
    // The second page under a different parent with a colliding hash is not a hit either.
    const auto r2 = idx.insert(fresh[0], index(s.table[0]), 0, tokens({5, 0, 0, 0}));
    REQUIRE(r2.what == PrefixIndex::Insert::Collision);
    REQUIRE(ids(idx.match(tokens({1, 2, 3, 4, 5, 6, 7, 8}), 0, 2)) == ids(s.table.blocks()));
    REQUIRE(idx.check() == "");
}

TEST_CASE("evictable pages: released cached pages wait in LRU order and are evicted last") {
    BlockAllocator a(8);
    PrefixIndex idx(a, kBs);
    {
        Seq s = admit(a, idx, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});  // blocks 0 1 2
    }  // the table releases its tail first: leaves join the list before their parents
    REQUIRE(a.counters().cached_blocks == 3);
    REQUIRE(a.counters().free_blocks == 5);
    REQUIRE(a.counters().used_blocks == 0);
    REQUIRE(ids(a.evictable()) == std::vector<uint32_t>{2, 1, 0});
    REQUIRE(a.available_blocks() == 8);
    REQUIRE(a.check() == "");
    REQUIRE(idx.check() == "");

    // Free pages go first: five fresh allocations evict nothing.
    BlockTable got(a);
    take(a, got, 5);
    REQUIRE(a.evictions() == 0);
    REQUIRE(idx.size() == 3);
    // Then the least recently released (the leaf, block 2) goes, and leaves the index.
    take(a, got, 1);
    REQUIRE(got.blocks().back() == BlockId{2});
    REQUIRE(a.evictions() == 1);
    REQUIRE(idx.size() == 2);
    REQUIRE(idx.match(tokens({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}), 0, 3).size() == 2);
    REQUIRE(a.check() == "");
    REQUIRE(idx.check() == "");
    // A hit takes an evictable page back into use: it is never evicted while referenced.
    BlockTable hit(a);
    a.reuse(BlockId{0});
    hit.adopt_back(std::vector<BlockId>{BlockId{0}});
    REQUIRE(a.refcount(BlockId{0}) == 1);
    take(a, got, 1);  // evicts block 1, the only evictable one
    REQUIRE(got.blocks().back() == BlockId{1});
    REQUIRE(idx.contains(BlockId{0}));
    REQUIRE_THROWS_AS(take(a, got, 1), Error);  // 0 is referenced: nothing left
    REQUIRE(idx.contains(BlockId{0}));
    REQUIRE(a.check() == "");
    REQUIRE(idx.check() == "");
}

TEST_CASE("evicting a parent takes its cached descendants with it") {
    BlockAllocator a(8);
    PrefixIndex idx(a, kBs);
    Seq s = admit(a, idx, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});  // blocks 0 1 2
    // Release the first page first (as a crop would): the parent is now older than its
    // children in the list.
    s.table.release_front(1);
    REQUIRE(ids(a.evictable()) == std::vector<uint32_t>{0});
    BlockTable got(a);
    take(a, got, 5);  // the free pages
    take(a, got, 1);  // evicts block 0: its children 1 and 2 leave the index, still held
    REQUIRE(got.blocks().back() == BlockId{0});
    REQUIRE(idx.size() == 0);
    REQUIRE_FALSE(a.is_cached(BlockId{1}));
    REQUIRE(a.refcount(BlockId{1}) == 1);
    REQUIRE(a.check() == "");
    REQUIRE(idx.check() == "");
    got.release_all();
    // Evictable children of a removed page become free at once.
    Seq t = admit(a, idx, {1, 2, 3, 4, 5, 6, 7, 8});
    const BlockId first = t.table[0], second = t.table[1];
    t.table.release_back(1);
    REQUIRE(a.counters().cached_blocks == 1);
    idx.remove(first);
    REQUIRE(a.counters().cached_blocks == 0);
    REQUIRE(a.refcount(second) == 0);
    REQUIRE_FALSE(a.is_cached(first));
    REQUIRE(a.check() == "");
    REQUIRE(idx.check() == "");
}

TEST_CASE("cached pages: must_copy, reset, and the state's invariants") {
    BlockAllocator a(8);
    PrefixIndex idx(a, kBs);
    Seq s = admit(a, idx, {1, 2, 3, 4, 5, 6, 7, 8});
    REQUIRE(a.must_copy(s.table[0]));  // cached: a write would change what the hash names
    BlockTable plain(a);
    take(a, plain, 1);
    REQUIRE_FALSE(a.must_copy(plain[0]));
    s.table.release_back(1);

    AllocatorState st = a.state();
    REQUIRE(ids(st.cached) == std::vector<uint32_t>{0, 1});
    REQUIRE(ids(st.evictable) == std::vector<uint32_t>{1});
    REQUIRE_FALSE(check_state(st, 8).has_value());
    SECTION("an evictable block that is not cached") {
        st.cached = {BlockId{0}};
        const auto p = check_state(st, 8);
        REQUIRE(p);
        REQUIRE(p->where == StateProblem::Where::Evictable);
        REQUIRE(p->field == "evictable[0]");
    }
    SECTION("an evictable block with references") {
        st.evictable = {BlockId{0}};
        const auto p = check_state(st, 8);
        REQUIRE(p);
        REQUIRE(p->where == StateProblem::Where::Evictable);
        REQUIRE_THAT(p->what, Catch::Contains("refcount"));
    }
    SECTION("a cached block of refcount 0 that is not evictable") {
        st.evictable.clear();
        const auto p = check_state(st, 8);
        REQUIRE(p);
        REQUIRE_THAT(p->what, Catch::Contains("not evictable"));
    }
    SECTION("a cached block on the free list") {
        st.cached.push_back(st.free_list[0]);
        REQUIRE(check_state(st, 8));
    }
    SECTION("cached blocks out of order") {
        std::swap(st.cached[0], st.cached[1]);
        REQUIRE(check_state(st, 8)->where == StateProblem::Where::Cached);
    }
    SECTION("restore of a bad state throws and changes nothing") {
        st.evictable.push_back(BlockId{1});
        const AllocatorState before = a.state();
        REQUIRE_THROWS_AS(a.restore(st), Error);
        REQUIRE(a.state() == before);
    }
    SECTION("reset: the evictable page is free, the held one uncached") {
        idx.clear();
        REQUIRE(idx.size() == 0);
        REQUIRE(a.counters().cached_blocks == 0);
        REQUIRE(a.counters().free_blocks == 6);
        REQUIRE_FALSE(a.is_cached(s.table[0]));
        REQUIRE(a.check() == "");
        REQUIRE(idx.check() == "");
    }
}

TEST_CASE("prefix index: entries round-trip through restore, and bad entries change nothing") {
    BlockAllocator a(8);
    PrefixIndex idx(a, kBs);
    Seq s = admit(a, idx, {1, 2, 3, 4, 5, 6, 7, 8});
    Seq t = admit(a, idx, {1, 2, 3, 4, 9, 9, 9, 9}, 0);
    const std::vector<PrefixEntry> entries = idx.entries();
    REQUIRE(entries.size() == 3);
    REQUIRE(entries[0].parent == PrefixEntry::kNoParent);  // parents first
    const AllocatorState st = a.state();

    BlockAllocator b(8);
    PrefixIndex copy(b, kBs);
    b.restore(st);
    copy.restore(entries);
    REQUIRE(copy.entries() == entries);
    REQUIRE(copy.check() == "");
    REQUIRE(ids(copy.match(tokens({1, 2, 3, 4, 9, 9, 9, 9}), 0, 2)) == ids(t.table.blocks()));

    std::vector<PrefixEntry> bad = entries;
    SECTION("a hash that is not its tokens'") {
        bad[1].hash ^= 1;
    }
    SECTION("a child before its parent") {
        std::swap(bad[0], bad[1]);
    }
    SECTION("a wrong token count") {
        bad[2].tokens.pop_back();
    }
    SECTION("a block that is not cached") {
        bad[2].block = BlockId{7};
    }
    BlockAllocator c(8);
    PrefixIndex third(c, kBs);
    c.restore(st);
    REQUIRE_THROWS_AS(third.restore(bad), Error);
    REQUIRE(third.size() == 0);
    REQUIRE_FALSE(third.check().empty());  // the allocator marks pages the index lacks
}

TEST_CASE("the spill listener hears each evicted page's identity before it leaves the index") {
    struct Heard final : SpillListener {
        const PrefixIndex* idx = nullptr;
        struct Page {
            uint32_t block;
            uint64_t hash, parent_hash, salt;
            std::vector<int32_t> tokens;
            bool indexed;  // still in the index when heard
        };
        std::vector<Page> pages;
        void spilling(BlockId b, uint64_t hash, uint64_t parent_hash, uint64_t salt,
                      std::span<const int32_t> t) noexcept override {
            pages.push_back(
                {index(b), hash, parent_hash, salt, {t.begin(), t.end()}, idx->contains(b)});
        }
    } heard;
    BlockAllocator a(4);
    PrefixIndex idx(a, kBs);
    heard.idx = &idx;
    idx.set_spill_listener(&heard);
    Seq s = admit(a, idx, {1, 2, 3, 4, 5, 6, 7, 8}, 9);  // blocks 0 1
    const uint64_t h0 = idx.hash(s.table[0]), h1 = idx.hash(s.table[1]);
    REQUIRE(idx.page_hash(PrefixIndex::kRootHash, 9, tokens({1, 2, 3, 4})) == h0);
    REQUIRE(idx.page_hash(h0, 9, tokens({5, 6, 7, 8})) == h1);
    s.table.release_all();  // leaf first: block 1, then block 0
    BlockTable got(a);
    take(a, got, 2);  // the free pages: nothing evicted
    REQUIRE(heard.pages.empty());
    take(a, got, 2);  // evicts block 1, then block 0
    REQUIRE(heard.pages.size() == 2);
    REQUIRE(heard.pages[0].block == 1);
    REQUIRE(heard.pages[0].hash == h1);
    REQUIRE(heard.pages[0].parent_hash == h0);
    REQUIRE(heard.pages[0].salt == 9);
    REQUIRE(heard.pages[0].tokens == tokens({5, 6, 7, 8}));
    REQUIRE(heard.pages[0].indexed);
    REQUIRE(heard.pages[1].block == 0);
    REQUIRE(heard.pages[1].hash == h0);
    REQUIRE(heard.pages[1].parent_hash == PrefixIndex::kRootHash);
    REQUIRE(heard.pages[1].tokens == tokens({1, 2, 3, 4}));
    REQUIRE(idx.size() == 0);
    REQUIRE(a.check() == "");
    REQUIRE(idx.check() == "");
    // Unset: evictions are not heard.
    idx.set_spill_listener(nullptr);
    got.release_all();
    Seq t = admit(a, idx, {1, 2, 3, 4});
    t.table.release_all();
    BlockTable more(a);
    take(a, more, 4);
    REQUIRE(heard.pages.size() == 2);
    REQUIRE(idx.size() == 0);
}
