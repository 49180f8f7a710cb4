// plan_update on the CPU alone (no Context, no device): positions, the tokens kept, pages
// released, added and copied, and every refusal, before any cache changes.
#include <catch2/catch.hpp>

#include <memory>

#include "cache/manager/update_plan.hpp"
#include "pagedkv/error.hpp"

using namespace pagedkv;
using namespace pagedkv::detail;

namespace {

// Rows of a cache as plain data: sequences over an allocator of their own.
struct Rows {
    BlockAllocator alloc;
    std::vector<std::unique_ptr<Sequence>> seqs;
    std::vector<Sequence*> rows;
    uint32_t block_size, layers;

    Rows(uint64_t blocks, uint32_t block, uint32_t num_layers)
        : alloc(blocks), block_size(block), layers(num_layers) {}

    // Appends a row holding `pages` fresh pages and, per layer, (start, len).
    void add_row(size_t pages, std::vector<std::pair<int64_t, int64_t>> per_layer) {
        std::vector<BlockId> fresh;
        alloc.allocate(pages, fresh);
        Sequence s(alloc, layers);
        s.table.adopt_back(fresh);
        for (uint32_t l = 0; l < layers; ++l) {
            s.start[l] = per_layer[l].first;
            s.len[l] = per_layer[l].second;
        }
        push(std::move(s));
    }
    void push(Sequence&& s) {
        seqs.push_back(std::make_unique<Sequence>(std::move(s)));
        rows.push_back(seqs.back().get());
    }
    RowsState state() const { return {block_size, layers, uint32_t(rows.size()), rows}; }
    UpdatePlan plan(uint32_t layer, uint32_t batch, uint32_t seq, const CachePosition& cp = {},
                    WritePolicy policy = {}) const {
        return plan_update(state(), alloc, layer, batch, seq, cp, policy, "update");
    }
};

void require_refused(const Rows& r, uint32_t layer, uint32_t batch, uint32_t seq,
                     const CachePosition& cp, const std::string& text) {
    try {
        r.plan(layer, batch, seq, cp);
        FAIL("expected InvalidArgument containing \"" << text << "\"");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::InvalidArgument);
        CHECK_THAT(e.what(), Catch::Contains(text));
    }
}

}  // namespace

TEST_CASE("plan_update: a first write makes the rows and takes pages for them", "[plan]") {
    const Rows r(16, 4, 2);
    const UpdatePlan p = r.plan(0, 2, 6);
    CHECK(p.fresh_batch);
    REQUIRE(p.rows.size() == 2);
    for (const auto& row : p.rows) {
        CHECK(row.pos == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
        CHECK(row.new_len == 6);
        CHECK(row.extra == 2);
        CHECK(row.lead == 0);
    }
    CHECK(p.needed == 4);
    CHECK(p.copies.empty());
    CHECK(p.longest() == 6);
    CHECK(r.alloc.free_blocks() == 16);  // planning took nothing
}

TEST_CASE("plan_update: positions of every form, the last write to a position winning", "[plan]") {
    Rows r(16, 4, 1);
    r.add_row(1, {{0, 3}});
    r.add_row(1, {{0, 1}});
    UpdatePlan p = r.plan(0, 2, 2);  // append: after each row's last token
    CHECK(p.rows[0].pos == std::vector<int64_t>{3, 4});
    CHECK(p.rows[1].pos == std::vector<int64_t>{1, 2});
    CHECK(p.rows[0].extra == 1);
    CHECK(p.rows[1].extra == 0);
    p = r.plan(0, 2, 3, std::vector<int64_t>{1, 7, 1});    // 1-D: the same in every row
    CHECK(p.rows[0].keep == std::vector<uint32_t>{1, 2});  // the second write to 1 wins
    CHECK(p.rows[0].new_len == 8);
    CHECK(p.rows[1].new_len == 8);
    p = r.plan(0, 2, 1, std::vector<std::vector<int64_t>>{{0}, {5}});  // 2-D: per row
    CHECK(p.rows[0].new_len == 3);
    CHECK(p.rows[1].new_len == 6);
    CHECK(p.slots_written() == 1 + 1 + 5);  // two tokens, and row 1 zero-fills 1 to 4
    p = r.plan(0, 2, 2, int64_t(10));       // scalar: the first new token's position
    CHECK(p.rows[1].pos == std::vector<int64_t>{10, 11});
    CHECK(p.grown_lengths() == std::vector<int64_t>{12, 12});
}

TEST_CASE("plan_update refuses malformed positions and batches, naming the call", "[plan]") {
    Rows r(16, 4, 1);
    r.add_row(1, {{0, 2}});
    r.add_row(1, {{0, 2}});
    require_refused(r, 0, 3, 1, {}, "update: key has batch 3, cache holds 2 rows");
    require_refused(r, 0, 2, 2, std::vector<int64_t>{1},
                    "update: cache_position has 1 entries, seq_len is 2");
    require_refused(r, 0, 2, 1, std::vector<std::vector<int64_t>>{{1}},
                    "update: cache_position has 1 rows, batch is 2");
    require_refused(r, 0, 2, 1, std::vector<std::vector<int64_t>>{{1}, {1, 2}},
                    "update: cache_position row 1 has 2 entries, seq_len is 1");
    require_refused(r, 0, 2, 1, std::vector<int64_t>{-1},
                    "update: cache_position -1 (row 0) is out of range");
    require_refused(r, 0, 2, 1, std::vector<int64_t>{INT32_MAX},
                    "update: cache_position 2147483647 (row 0) is out of range");
    require_refused(r, 0, 2, 3, INT64_MAX,
                    "update: cache_position 9223372036854775807 with seq_len 3 is out of range");
    // Another call's name in its messages.
    try {
        plan_update(r.state(), r.alloc, 0, 3, 1, {}, {}, "write");
        FAIL("expected InvalidArgument");
    } catch (const Error& e) {
        CHECK(std::string(e.what()) == "write: key has batch 3, cache holds 2 rows");
    }
}

TEST_CASE("plan_update: a shared page written is copied, by all but the last of its writers",
          "[plan]") {
    Rows r(16, 4, 1);
    r.add_row(1, {{0, 2}});
    // Row 1 shares row 0's page (a fork), as batch_repeat_interleave leaves it.
    r.push(r.rows[0]->fork());       // (start 0, len 2) like row 0
    UpdatePlan p = r.plan(0, 2, 1);  // both sharers write the page: one copy
    REQUIRE(p.copies.size() == 1);
    CHECK(p.copies[0] == std::pair<uint32_t, size_t>{0, 0});
    CHECK(p.needed == 1);
    // Only row 0 writes it (row 1 writes past its page): row 0 copies, row 1 keeps it.
    p = r.plan(0, 2, 1, std::vector<std::vector<int64_t>>{{1}, {4}});
    REQUIRE(p.copies.size() == 1);
    CHECK(p.copies[0].first == 0);
    CHECK(p.rows[1].extra == 1);
    CHECK(p.needed == 2);
}

TEST_CASE("plan_update: a sliding window never writes what it drops and frees pages first",
          "[plan]") {
    // Window 24, block 16, 2 layers: a 200-token prompt into layer 0 takes 2 pages, not 13.
    Rows r(4, 16, 2);
    const WritePolicy window{24, false};
    UpdatePlan p = r.plan(0, 1, 200, {}, window);
    CHECK(p.rows[0].drop == 176);
    CHECK(p.rows[0].lead == 11);
    CHECK(p.rows[0].extra == 2);
    CHECK(p.needed == 2);
    CHECK(p.longest() == 24);
    // Layer 1, still empty, lines its window up with layer 0's: no page more.
    r.add_row(2, {{0, 24}, {0, 0}});
    p = r.plan(1, 1, 200, {}, window);
    CHECK(p.rows[0].start + p.rows[0].drop == 0);
    CHECK(p.rows[0].extra == 0);
    CHECK(p.needed == 0);
    // Decoding past the second page: the first page is released before a third is taken, so
    // a pool with no free page (here 2 of 4 are free) still suffices.
    Rows full(2, 4, 1);
    full.add_row(2, {{3, 5}});  // window 5 of block 4: slots 3..7 of 2 pages
    p = full.plan(0, 1, 1, {}, {5, false});
    CHECK(p.rows[0].lead == 1);
    CHECK(p.rows[0].extra == 1);
    CHECK(p.released == 1);
    CHECK_NOTHROW(p.check_pages(full.alloc, "update"));
    // A reserved cache releases nothing.
    p = full.plan(0, 1, 1, {}, {5, true});
    CHECK(p.rows[0].lead == 0);
}

TEST_CASE("plan_update: check_pages refuses what the pool cannot give", "[plan]") {
    Rows r(3, 4, 1);
    r.add_row(1, {{0, 4}});
    const UpdatePlan p = r.plan(0, 1, 9);
    CHECK(p.needed == 3);
    try {
        p.check_pages(r.alloc, "write");
        FAIL("expected OutOfBlocks");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::OutOfBlocks);
        CHECK(std::string(e.what()) == "write: out of blocks: need 3 pages, 2 of 3 free");
    }
    CHECK(r.alloc.free_blocks() == 2);
}
