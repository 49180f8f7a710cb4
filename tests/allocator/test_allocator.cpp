// BlockAllocator and BlockTable on the CPU: no GPU behind them.
#include <catch2/catch.hpp>

#include <algorithm>
#include <memory>
#include <optional>
#include <random>

#include "allocator/block_allocator.hpp"
#include "allocator/block_table.hpp"
#include "pagedkv/error.hpp"

using namespace pagedkv;

TEST_CASE("a fresh allocator hands out pages in order and counts them", "[allocator]") {
    BlockAllocator a(8);
    std::vector<BlockId> got;
    a.allocate(3, got);
    REQUIRE(got == std::vector<BlockId>{BlockId{0}, BlockId{1}, BlockId{2}});
    CHECK(a.counters().used_blocks == 3);
    CHECK(a.counters().free_blocks == 5);
    CHECK(a.counters().peak_used_blocks == 3);
    CHECK(a.refcount(BlockId{1}) == 1);
    for (BlockId b : got)
        a.release(b);
    CHECK(a.counters().used_blocks == 0);
    CHECK(a.counters().peak_used_blocks == 3);
    CHECK(a.validate());
}

TEST_CASE("allocation is all or nothing", "[allocator]") {
    BlockAllocator a(4);
    std::vector<BlockId> got;
    a.allocate(3, got);
    std::vector<BlockId> more;
    try {
        a.allocate(2, more);
        FAIL("expected OutOfBlocks");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::OutOfBlocks);
        CHECK(std::string(e.what()) == "out of blocks: need 2 pages, 1 of 4 free");
    }
    CHECK(more.empty());
    CHECK(a.counters().used_blocks == 3);
    CHECK(a.free_blocks() == 1);
}

TEST_CASE("releasing a free or foreign page is an error that changes nothing", "[allocator]") {
    BlockAllocator a(4);
    std::vector<BlockId> got;
    a.allocate(1, got);
    CHECK_THROWS_WITH(a.release(BlockId{3}), "release: block 3 is free");
    CHECK_THROWS_WITH(a.retain(BlockId{9}), "retain: block 9 out of range (pool has 4)");
    CHECK(a.counters().used_blocks == 1);
    CHECK(a.refcount(BlockId{0}) == 1);
}

TEST_CASE("forked tables share pages and release them once", "[allocator]") {
    BlockAllocator a(8);
    BlockTable t(a);
    std::vector<BlockId> got;
    a.allocate(3, got);
    t.adopt_back(got);
    REQUIRE(a.validate());
    {
        BlockTable f = t.fork();
        CHECK(a.refcount(BlockId{0}) == 2);
        CHECK(a.counters().shared_blocks == 3);
        CHECK(a.counters().used_blocks == 3);
        CHECK(a.validate());
    }
    CHECK(a.counters().shared_blocks == 0);
    CHECK(a.refcount(BlockId{2}) == 1);
    t.release_front(1);
    CHECK(t.blocks() == std::vector<BlockId>{BlockId{1}, BlockId{2}});
    t.release_back(1);
    CHECK(t.blocks() == std::vector<BlockId>{BlockId{1}});
    CHECK(a.counters().used_blocks == 1);
    CHECK(a.validate());
}

TEST_CASE("replace swaps one page and drops the old reference", "[allocator]") {
    BlockAllocator a(8);
    BlockTable t(a);
    std::vector<BlockId> got;
    a.allocate(2, got);
    t.adopt_back(got);
    BlockTable f = t.fork();
    std::vector<BlockId> fresh;
    a.allocate(1, fresh);
    f.replace(1, fresh[0]);
    CHECK(a.refcount(BlockId{1}) == 1);
    CHECK(a.refcount(BlockId{0}) == 2);
    CHECK(f.blocks() == std::vector<BlockId>{BlockId{0}, fresh[0]});
    CHECK(a.validate());
}

TEST_CASE("moved tables keep their references registered", "[allocator]") {
    BlockAllocator a(8);
    std::vector<BlockTable> rows;
    for (int i = 0; i < 5; ++i) {
        rows.emplace_back(a);
        std::vector<BlockId> got;
        a.allocate(1, got);
        rows.back().adopt_back(got);
    }
    CHECK(a.tables().size() == 5);
    CHECK(a.validate());
    rows.erase(rows.begin() + 1);
    CHECK(a.validate());
    CHECK(a.counters().used_blocks == 4);
}

TEST_CASE("validate catches a reference count that drifted from the tables", "[allocator]") {
    BlockAllocator a(4);
    BlockTable t(a);
    std::vector<BlockId> got;
    a.allocate(2, got);
    t.adopt_back(got);
    a.retain(BlockId{0});  // a reference nobody holds
    CHECK_FALSE(a.validate());
    CHECK(a.check() == "block 0 has refcount 2 but the block tables reference it 1 time");
    a.release(BlockId{0});
    CHECK(a.validate());
}

TEST_CASE("random allocate, fork and release keep every invariant", "[allocator]") {
    const uint32_t seed = 1234;
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    BlockAllocator a(64);
    std::vector<BlockTable> tables;
    for (int step = 0; step < 5000; ++step) {
        INFO("step " << step);
        const int op = int(rng() % 5);
        if (op == 0 || tables.empty()) {
            tables.emplace_back(a);
        } else {
            BlockTable& t = tables[rng() % tables.size()];
            if (op == 1) {
                std::vector<BlockId> got;
                const uint64_t n = rng() % 4;
                const uint64_t free_before = a.free_blocks();
                try {
                    a.allocate(n, got);
                    t.adopt_back(got);
                } catch (const Error&) {
                    REQUIRE(n > free_before);
                    REQUIRE(a.free_blocks() == free_before);
                }
            } else if (op == 2) {
                tables.push_back(t.fork());
            } else if (op == 3) {
                t.release_front(rng() % 3);
            } else {
                tables.erase(tables.begin() + std::ptrdiff_t(rng() % tables.size()));
            }
        }
        REQUIRE(a.check() == "");
    }
    tables.clear();
    CHECK(a.counters().used_blocks == 0);
    CHECK(a.validate());
}

TEST_CASE("tables created and destroyed in random order stay registered exactly", "[allocator]") {
    std::mt19937 rng(77);
    BlockAllocator a(4096);
    std::vector<std::unique_ptr<BlockTable>> live;
    for (int step = 0; step < 3000; ++step) {
        if (live.empty() || rng() % 3 != 0) {
            live.push_back(std::make_unique<BlockTable>(a));
            std::vector<BlockId> got;
            a.allocate(std::min<uint64_t>(a.free_blocks(), rng() % 3), got);
            live.back()->adopt_back(got);
        } else {
            live.erase(live.begin() + std::ptrdiff_t(rng() % live.size()));
        }
        if (step % 97 == 0) {
            std::vector<const BlockTable*> want, have(a.tables().begin(), a.tables().end());
            for (const auto& t : live)
                want.push_back(t.get());
            std::sort(want.begin(), want.end());
            std::sort(have.begin(), have.end());
            REQUIRE(have == want);
            REQUIRE(a.validate());
        }
    }
    live.clear();
    CHECK(a.tables().empty());
    CHECK(a.counters().used_blocks == 0);
    CHECK(a.validate());
}

TEST_CASE("check sees a table's pages wherever its registration moved", "[allocator]") {
    BlockAllocator a(16);
    std::vector<BlockTable> rows;
    rows.reserve(4);
    for (int i = 0; i < 4; ++i) {
        rows.emplace_back(a);
        std::vector<BlockId> got;
        a.allocate(2, got);
        rows.back().adopt_back(got);
    }
    rows.erase(rows.begin());  // moves the others: each re-registers, the last is destroyed
    CHECK(a.tables().size() == 3);
    CHECK(a.validate());
    a.retain(rows[2][0]);  // a reference no table holds
    CHECK(a.check() == "block 6 has refcount 2 but the block tables reference it 1 time");
    a.release(rows[2][0]);
    CHECK(a.validate());
}

TEST_CASE("reference counts past one byte are exact", "[allocator]") {
    BlockAllocator a(4);
    BlockTable t(a);
    std::vector<BlockId> got;
    a.allocate(2, got);
    t.adopt_back(got);
    std::vector<BlockTable> forks;
    forks.reserve(700);
    for (int i = 0; i < 700; ++i) {
        forks.push_back(t.fork());
        REQUIRE(a.refcount(BlockId{0}) == uint32_t(i + 2));
    }
    CHECK(a.counters().shared_blocks == 2);
    CHECK(a.validate());
    const AllocatorState s = a.state();
    CHECK(s.refcounts[1] == 701);
    while (!forks.empty()) {
        forks.pop_back();
        REQUIRE(a.refcount(BlockId{1}) == uint32_t(forks.size() + 1));
        if (forks.size() % 50 == 0) REQUIRE(a.validate());
    }
    CHECK(a.counters().shared_blocks == 0);
    CHECK(a.validate());

    // restore() takes large counts back as they were.
    t.release_all();
    BlockAllocator b(4);
    AllocatorState big = s;
    b.restore(big);
    CHECK(b.state() == s);
    CHECK(b.refcount(BlockId{0}) == 701);
    CHECK(b.counters().shared_blocks == 2);
    for (int i = 0; i < 700; ++i)
        b.release(BlockId{0});
    CHECK(b.refcount(BlockId{0}) == 1);
    CHECK(b.counters().shared_blocks == 1);
    CHECK(b.release(BlockId{0}));
    CHECK_THROWS_WITH(b.release(BlockId{0}), "release: block 0 is free");
}

TEST_CASE("churn keeps every counter exact against a model", "[allocator]") {
    const uint32_t seed = 4321;
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    const uint64_t n = 1000;
    BlockAllocator a(n);
    std::vector<std::optional<BlockTable>> seqs(24);
    std::vector<uint32_t> model(n, 0);
    std::vector<BlockId> model_free;  // the LIFO free list, bottom first
    for (uint64_t i = n; i-- > 0;)
        model_free.push_back(BlockId(uint32_t(i)));
    uint64_t allocations = 0, releases = 0, peak = 0;
    std::vector<BlockId> fresh;
    for (int step = 0; step < 4000; ++step) {
        INFO("step " << step);
        std::optional<BlockTable>& s = seqs[rng() % seqs.size()];
        const int op = int(rng() % 6);
        if (!s || op == 0) {  // a new sequence takes the slot
            if (s)
                for (auto it = s->blocks().rbegin(); it != s->blocks().rend(); ++it)
                    if (--model[index(*it)] == 0) {
                        model_free.push_back(*it);
                        ++releases;
                    }
            s.emplace(a);
        }
        if (op <= 2) {  // grows: a chunk, then a page at a time
            const uint64_t want = rng() % 40;
            fresh.clear();
            if (want > model_free.size()) {
                REQUIRE_THROWS_AS(a.allocate(want, fresh), Error);
                REQUIRE(fresh.empty());
            } else {
                a.allocate(want, fresh);
                for (BlockId b : fresh) {
                    REQUIRE(b == model_free.back());
                    model_free.pop_back();
                    model[index(b)] = 1;
                }
                allocations += want;
                s->adopt_back(fresh);
            }
        } else if (op == 3) {  // a fork takes another slot
            std::optional<BlockTable>& f = seqs[rng() % seqs.size()];
            if (&f != &s) {
                BlockTable forked = s->fork();
                if (f)
                    for (auto it = f->blocks().rbegin(); it != f->blocks().rend(); ++it)
                        if (--model[index(*it)] == 0) {
                            model_free.push_back(*it);
                            ++releases;
                        }
                for (BlockId b : s->blocks())
                    ++model[index(b)];
                f.reset();
                f.emplace(std::move(forked));
            }
        } else {  // drops pages from one end
            const size_t k = std::min<size_t>(rng() % 8, s->size());
            const bool front = op == 4;
            for (size_t j = 0; j < k; ++j) {
                const BlockId b = front ? (*s)[j] : (*s)[s->size() - 1 - j];
                if (--model[index(b)] == 0) {
                    model_free.push_back(b);
                    ++releases;
                }
            }
            front ? s->release_front(k) : s->release_back(k);
        }
        uint64_t used = 0, shared = 0;
        for (uint32_t rc : model) {
            used += rc > 0;
            shared += rc > 1;
        }
        peak = std::max(peak, used);
        const AllocatorCounters& c = a.counters();
        REQUIRE(c.used_blocks == used);
        REQUIRE(c.free_blocks == n - used);
        REQUIRE(c.shared_blocks == shared);
        REQUIRE(c.peak_used_blocks == peak);
        REQUIRE(c.allocations == allocations);
        REQUIRE(c.releases == releases);
        if (step % 50 == 0) {
            REQUIRE(a.validate());
            const AllocatorState st = a.state();
            REQUIRE(st.refcounts == model);
            REQUIRE(st.free_list == model_free);
        }
    }
    seqs.clear();
    CHECK(a.counters().used_blocks == 0);
    CHECK(a.validate());
}
