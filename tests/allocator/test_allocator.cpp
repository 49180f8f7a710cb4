// BlockAllocator and BlockTable on the CPU: no GPU behind them.
#include <catch2/catch.hpp>

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
