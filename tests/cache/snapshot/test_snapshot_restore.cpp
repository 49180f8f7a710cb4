// Snapshots of live caches on the GPU: save with page contents, restore into a fresh Context,
// and get the same K/V, block tables and pool stats; keep decoding identically afterwards.
// Plus the refusals: a corrupt file creates nothing, a partial cache list writes nothing.
#include <unistd.h>

#include <filesystem>

#include "cache/manager/access.hpp"
#include "cache/manager/pool_state.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "cache_state_snapshot.hpp"
#include "snapshot_samples.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

// Writes seq random tokens into every row of one layer (append mode or at positions).
void write(Context& ctx, KVCache& cache, PoolConfig c, uint32_t batch, uint32_t seq, uint32_t layer,
           std::mt19937& rng, const CachePosition& cp = {}) {
    if (c.v_head_dim == 0) c.v_head_dim = c.head_dim;
    const DType t = is_quantized(c.dtype) ? DType::F16 : c.dtype;  // what the tensors hold
    auto k = random_values(size_t(batch) * c.num_kv_heads * seq * c.head_dim, rng, t);
    auto v = random_values(size_t(batch) * c.num_kv_heads * seq * c.v_head_dim, rng, t);
    cache.update(Tensor::from_host(ctx, k, shape4(batch, c.num_kv_heads, seq, c.head_dim), t),
                 Tensor::from_host(ctx, v, shape4(batch, c.num_kv_heads, seq, c.v_head_dim), t),
                 layer, cp);
}

void require_same_stats(const PoolStats& a, const PoolStats& b) {
    CHECK(a.num_blocks == b.num_blocks);
    CHECK(a.used_blocks == b.used_blocks);
    CHECK(a.free_blocks == b.free_blocks);
    CHECK(a.peak_used_blocks == b.peak_used_blocks);
    CHECK(a.shared_blocks == b.shared_blocks);
    CHECK(a.pages_copied == b.pages_copied);
    CHECK(a.block_bytes == b.block_bytes);
    CHECK(a.total_bytes == b.total_bytes);
    CHECK(a.num_slabs == b.num_slabs);
}

}  // namespace

TEST_CASE("a restored snapshot gives the same K/V, block tables and pool stats",
          "[snapshot][gpu]") {
    // Quantized pages (codes and scales) travel as bytes: the same K/V after restoring.
    const DType dtype = GENERATE(DType::F16, DType::Int8, DType::FP8E4M3);
    INFO("dtype " << to_string(dtype));
    TempFile file("roundtrip.snap");
    PoolConfig cfg = small_config(dtype, 2, 2, 8, 4, 64);
    cfg.max_slab_bytes = 4096;  // 8 blocks a slab: page runs cross slab boundaries
    std::mt19937 rng(11);
    ValidatedContext first;
    TestPool pool(first.ctx, cfg);
    // Beam-style sharing with copy-on-write, a static cache with a spare row, a sliding window
    // that dropped pages, a cropped row, and pages freed out of order.
    DynamicKVCache beams(pool);
    for (uint32_t l = 0; l < 2; ++l)
        write(first.ctx, beams, cfg, 1, 10, l, rng);
    beams.batch_repeat_interleave(3);
    for (uint32_t l = 0; l < 2; ++l)
        write(first.ctx, beams, cfg, 3, 1, l, rng);
    const int32_t order[] = {2, 0, 0};
    beams.reorder_cache(order);
    StaticKVCache fixed(pool, 3, 9);
    for (uint32_t l = 0; l < 2; ++l)
        write(first.ctx, fixed, cfg, 3, 5, l, rng);
    const int32_t keep[] = {2, 0};
    fixed.batch_select_indices(keep);
    SlidingWindowKVCache window(pool, 6);
    for (int step = 0; step < 4; ++step)
        for (uint32_t l = 0; l < 2; ++l)
            write(first.ctx, window, cfg, 2, 3, l, rng);
    DynamicKVCache cropped(pool);
    for (uint32_t l = 0; l < 2; ++l)
        write(first.ctx, cropped, cfg, 1, 13, l, rng);
    cropped.crop(6);
    {
        DynamicKVCache gone(pool);  // its pages return to the free list, in the middle
        write(first.ctx, gone, cfg, 2, 9, 0, rng);
    }
    DynamicKVCache empty(pool);
    REQUIRE(pool.check() == "");
    REQUIRE(pool.stats().shared_blocks > 0);
    REQUIRE(pool.stats().pages_copied > 0);

    const PagedKVCache* caches[] = {&beams, &fixed, &window, &cropped, &empty};
    save_snapshot(file.path, pool, caches, {.page_contents = true});
    std::vector<CacheSnapshot> before;
    for (const PagedKVCache* c : caches)
        before.push_back(CacheSnapshot::of(*c));

    ValidatedContext second;
    RestoredSnapshot r = restore_snapshot(second.ctx, file.path);
    REQUIRE(r.pool);
    REQUIRE(r.caches.size() == 5);
    CHECK(r.pool->check() == "");
    CHECK(r.pool->config().max_slab_bytes == 4096);
    require_same_stats(r.pool->stats(), pool.stats());
    CHECK(dynamic_cast<DynamicKVCache*>(r.caches[0].get()));
    auto* restored_fixed = dynamic_cast<StaticKVCache*>(r.caches[1].get());
    REQUIRE(restored_fixed);
    CHECK(restored_fixed->max_batch_size() == 3);
    CHECK(restored_fixed->max_cache_len() == 9);
    auto* restored_window = dynamic_cast<SlidingWindowKVCache*>(r.caches[2].get());
    REQUIRE(restored_window);
    CHECK(restored_window->window() == 6);
    for (size_t i = 0; i < before.size(); ++i) {
        INFO("cache " << i);
        CHECK(CacheSnapshot::of(*r.caches[i]) == before[i]);
    }
    const DetailedStats d0 = detailed_stats(pool, caches);
    const DetailedStats d1 =
        detailed_stats(*r.pool, {r.caches[0].get(), r.caches[1].get(), r.caches[2].get(),
                                 r.caches[3].get(), r.caches[4].get()});
    CHECK(d1.tokens_stored == d0.tokens_stored);
    CHECK(d1.largest_free_run == d0.largest_free_run);
    CHECK(d1.refcount_histogram == d0.refcount_histogram);

    // The same next steps on both give the same pages (same free-list order) and the same K/V.
    std::mt19937 rng_a(5), rng_b(5);
    for (uint32_t l = 0; l < 2; ++l) {
        write(first.ctx, beams, cfg, 3, 2, l, rng_a);
        write(second.ctx, *r.caches[0], cfg, 3, 2, l, rng_b);
        write(first.ctx, fixed, cfg, 2, 1, l, rng_a);
        write(second.ctx, *r.caches[1], cfg, 2, 1, l, rng_b);
        write(first.ctx, empty, cfg, 1, 7, l, rng_a);
        write(second.ctx, *r.caches[4], cfg, 1, 7, l, rng_b);
    }
    for (size_t i = 0; i < before.size(); ++i) {
        INFO("cache " << i << " after further updates");
        CHECK(CacheSnapshot::of(*r.caches[i]) == CacheSnapshot::of(*caches[i]));
    }
    require_same_stats(r.pool->stats(), pool.stats());
    CHECK(r.pool->check() == "");

    // The compute dtype is not in the file: restored as asked (default: F16 for quantized
    // pages, else the pool's dtype), the same pages read in it.
    CHECK(*r.pool->config().compute_dtype == DType::F16);
    RestoredSnapshot wide = restore_snapshot(second.ctx, file.path, DType::F32);
    CHECK(*wide.pool->config().compute_dtype == DType::F32);
    const auto narrow_kv = *r.caches[3]->get(0);  // the cropped cache: unchanged since the save
    const auto wide_kv = *wide.caches[3]->get(0);
    REQUIRE(wide_kv.first.dtype() == DType::F32);
    auto as_f16 = wide_kv.first.to_host();
    for (float& x : as_f16)
        x = round_to(DType::F16, x);
    CHECK(bit_equal(as_f16, narrow_kv.first.to_host()));
}

TEST_CASE("a snapshot without page contents can be dumped but not restored", "[snapshot][gpu]") {
    TempFile file("no-pages.snap");
    ValidatedContext g;
    const PoolConfig cfg = small_config(DType::F32);
    TestPool pool(g.ctx, cfg);
    DynamicKVCache cache(pool);
    std::mt19937 rng(3);
    write(g.ctx, cache, cfg, 2, 5, 0, rng);
    save_snapshot(file.path, pool, {&cache});
    const SnapshotData s = decode_snapshot(read_snapshot_file(file.path));
    CHECK_FALSE(s.has_pages);
    CHECK(s.caches.size() == 1);
    CHECK(s.caches[0].rows.size() == 2);
    try {
        restore_snapshot(g.ctx, file.path);
        FAIL("expected InvalidArgument");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::InvalidArgument);
        CHECK_THAT(e.what(), Catch::Contains("holds no page contents"));
    }
}

TEST_CASE("a corrupt snapshot throws CorruptSnapshot before anything is created",
          "[snapshot][gpu]") {
    TempFile file("corrupt.snap");
    ValidatedContext g;
    const PoolConfig cfg = small_config(DType::F16);
    {
        TestPool pool(g.ctx, cfg);
        DynamicKVCache cache(pool);
        std::mt19937 rng(4);
        write(g.ctx, cache, cfg, 1, 9, 1, rng);
        save_snapshot(file.path, pool, {&cache}, {.page_contents = true});
    }
    auto bytes = read_snapshot_file(file.path);
    g.ctx.synchronize();
    const DeviceCounters before = g.ctx.counters();
    for (size_t at : {size_t(3), size_t(9), size_t(20), size_t(100), bytes.size() - 1}) {
        INFO("flipped byte " << at);
        auto bad = bytes;
        bad[at] ^= 0x40;
        write_snapshot_file(file.path, bad);
        try {
            restore_snapshot(g.ctx, file.path);
            FAIL("expected CorruptSnapshot");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::CorruptSnapshot);
        }
    }
    write_snapshot_file(file.path, std::span(bytes).first(bytes.size() / 2));
    CHECK_THROWS_WITH(restore_snapshot(g.ctx, file.path), Catch::Contains("truncated"));
    const DeviceCounters after = g.ctx.counters();
    CHECK(after.submits == before.submits);
    CHECK(after.copies == before.copies);
    CHECK(after.dispatches == before.dispatches);
    std::filesystem::remove(file.path);
    try {
        restore_snapshot(g.ctx, file.path);
        FAIL("expected InvalidArgument");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::InvalidArgument);
        CHECK_THAT(e.what(), Catch::Contains("cannot open"));
    }
}

TEST_CASE("save_snapshot refuses a cache list that does not explain every page and writes nothing",
          "[snapshot][gpu]") {
    TempFile file("refused.snap");
    ValidatedContext g;
    const PoolConfig cfg = small_config(DType::F16);
    TestPool pool(g.ctx, cfg), other_pool(g.ctx, cfg);
    DynamicKVCache a(pool), b(pool), foreign(other_pool);
    std::mt19937 rng(5);
    write(g.ctx, a, cfg, 1, 5, 0, rng);
    write(g.ctx, b, cfg, 2, 3, 0, rng);
    auto refused = [&](std::initializer_list<const PagedKVCache*> caches, const std::string& text) {
        try {
            save_snapshot(file.path, pool, caches);
            FAIL("expected InvalidArgument");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::InvalidArgument);
            CHECK_THAT(e.what(), Catch::Contains(text));
        }
        CHECK_FALSE(std::filesystem::exists(file.path));
    };
    refused({&a},
            "save_snapshot: 2 block tables holding 2 page references belong to caches not "
            "given");
    refused({&a, &b, &a}, "save_snapshot: caches 0 and 2 are the same cache");
    refused({&a, &b, &foreign}, "save_snapshot: cache 2 is over another pool");
    refused({&a, nullptr}, "save_snapshot: cache 1 is null");

    // Managers: null, over another pool, given twice; and one left out.
    KVManager m(pool), foreign_m(other_pool);
    const SeqId seq = m.add_sequence();
    m.allocate(std::vector<SeqId>{seq}, std::vector<uint32_t>{3});
    const PagedKVCache* both[] = {&a, &b};
    auto refused_managers = [&](std::initializer_list<const KVManager*> managers,
                                const std::string& text) {
        const std::vector<const KVManager*> list(managers);
        require_error([&] { save_snapshot(file.path, pool, both, list); },
                      ErrorCode::InvalidArgument, text);
        CHECK_FALSE(std::filesystem::exists(file.path));
    };
    refused_managers({&m, nullptr}, "save_snapshot: manager 1 is null");
    refused_managers({&foreign_m}, "save_snapshot: manager 0 is over another pool");
    refused_managers({&m, &m}, "save_snapshot: manager 1 is given twice");
    refused_managers({}, "belong to caches not given");
    const KVManager* just_m[] = {&m};
    save_snapshot(file.path, pool, both, just_m);
    CHECK(std::filesystem::exists(file.path));
}

TEST_CASE("detailed_stats counts token slots held against tokens stored", "[snapshot][gpu]") {
    ValidatedContext g;
    const PoolConfig cfg = small_config(DType::F32, 1, 1, 4, 4, 16);
    TestPool pool(g.ctx, cfg);
    DynamicKVCache cache(pool);
    std::mt19937 rng(6);
    write(g.ctx, cache, cfg, 2, 5, 0, rng);  // 2 rows x 2 pages, 5 of 8 slots each
    std::vector<std::vector<int64_t>> pos{{5, 6, 7, 8}, {5, 6, 7, 8}};
    write(g.ctx, cache, cfg, 2, 4, 0, rng, pos);  // 9 tokens, 3 pages a row
    const PagedKVCache* caches[] = {&cache};
    DetailedStats d = detailed_stats(pool, caches);
    CHECK(d.used_blocks == 6);
    CHECK(d.slots_held == 24);
    CHECK(d.tokens_stored == 18);
    CHECK(d.waste_slots == 6);
    CHECK(d.largest_free_run == 10);
    CHECK(d.free_runs == 1);
    cache.batch_repeat_interleave(2);  // shared pages: slots counted once
    d = detailed_stats(pool, caches);
    CHECK(d.shared_blocks == 6);
    CHECK(d.tokens_stored == 18);
    CHECK(d.refcount_histogram == std::vector<uint64_t>{10, 0, 6});
    CHECK(d.rows == 4);
}

TEST_CASE("restore checks every cache kind's invariants and the pool's size",
          "[snapshot][errors][gpu]") {
    // Each case edits one field of a real snapshot (checksums recomputed): restore must refuse
    // it with CorruptSnapshot, where it used to build a cache that crashed later.
    TempFile file("kinds.snap");
    ValidatedContext g;
    const PoolConfig cfg = small_config(DType::F16, 2, 2, 8, 4, 64);
    SnapshotData saved;
    {
        TestPool pool(g.ctx, cfg);
        StaticKVCache stat(pool, 3, 9);
        SlidingWindowKVCache slide(pool, 6);
        std::mt19937 rng(9);
        for (uint32_t l = 0; l < 2; ++l) {
            write(g.ctx, stat, cfg, 3, 5, l, rng);
            write(g.ctx, slide, cfg, 2, 8, l, rng);
        }
        save_snapshot(file.path, pool, {&stat, &slide}, {.page_contents = true});
        saved = decode_snapshot(read_snapshot_file(file.path));
    }
    REQUIRE(saved.caches[0].kind == SnapshotCacheKind::Static);
    REQUIRE(saved.caches[1].kind == SnapshotCacheKind::SlidingWindow);
    auto refused = [&](const SnapshotData& s, ErrorCode code, const std::string& text) {
        write_snapshot_file(file.path, encode_snapshot(s));
        try {
            restore_snapshot(g.ctx, file.path);
            FAIL("expected pagedkv::Error containing \"" << text << "\"");
        } catch (const Error& e) {
            INFO("message: " << e.what());
            CHECK(e.code() == code);
            CHECK_THAT(e.what(), Catch::Contains(text));
        }
    };
    {  // batch_size 3 -> 4: a fourth row with no table (batch_repeat_interleave crashed)
        SnapshotData s = saved;
        s.caches[0].batch_size = 4;
        refused(s, ErrorCode::CorruptSnapshot,
                "3 rows + 0 spare tables, a static cache of batch_size 4 holds exactly 4");
    }
    {  // a static row one page short of its reservation (the page freed consistently)
        SnapshotData s = saved;
        const BlockId last = s.caches[0].rows[1].back();
        s.caches[0].rows[1].pop_back();
        std::vector<uint32_t> used;
        for (uint32_t b = 0; b < s.allocator.refcounts.size(); ++b)
            if (s.allocator.refcounts[b]) used.push_back(b);
        const size_t at = size_t(std::find(used.begin(), used.end(), index(last)) - used.begin());
        const uint64_t bb = s.layout.block_bytes();
        s.pages.erase(s.pages.begin() + std::ptrdiff_t(at * bb),
                      s.pages.begin() + std::ptrdiff_t((at + 1) * bb));
        s.allocator.refcounts[index(last)] = 0;
        s.allocator.free_list.push_back(last);
        ++s.allocator.releases;
        refused(s, ErrorCode::CorruptSnapshot,
                "2 pages, a static cache's row of max_cache_len 9 reserves 3");
    }
    {  // a static row that does not start at slot 0
        SnapshotData s = saved;
        s.caches[0].start[1][2] = 1;
        refused(s, ErrorCode::CorruptSnapshot, "a static cache's rows start at slot 0");
    }
    {  // a sliding row longer than its window
        SnapshotData s = saved;
        s.caches[1].window = 3;
        refused(s, ErrorCode::CorruptSnapshot, "length 6 exceeds the sliding window of 3");
    }
    {  // a slab smaller than one block: the file is wrong, not the device too small
        SnapshotData s = saved;
        s.layout.max_slab_bytes = 8;
        refused(s, ErrorCode::CorruptSnapshot, "max_slab_bytes 8 is smaller than one block");
    }
    {  // a small file asking for a pool larger than the device's memory (all blocks free)
        SnapshotData s;
        s.layout = {{64, 32, 256, 256, 256, DType::F16}, 0, 0};
        const uint64_t heap = detail::Access::device(g.ctx).device_local_heap_bytes();
        s.layout.num_blocks = heap / s.layout.block_bytes() + 1;
        for (uint32_t b = 0; b < s.layout.num_blocks; ++b)
            s.allocator.free_list.push_back(BlockId{b});
        s.allocator.refcounts.assign(s.layout.num_blocks, 0);
        s.has_pages = true;
        refused(s, ErrorCode::OutOfMemory, "more than the device's memory heap");
    }
    // The unedited snapshot still restores, and its static cache repeats rows safely.
    write_snapshot_file(file.path, encode_snapshot(saved));
    RestoredSnapshot r = restore_snapshot(g.ctx, file.path);
    auto& stat = dynamic_cast<StaticKVCache&>(*r.caches[0]);
    const int keep[] = {2};
    stat.batch_select_indices(keep);
    stat.batch_repeat_interleave(3);
    CHECK(r.pool->check() == "");
}

TEST_CASE("snapshots that crashed the fuzzer are refused by restore", "[snapshot][errors][gpu]") {
    // tests/fuzz/findings: static caches whose batch_size exceeds their tables (restore took
    // them, and batch_repeat_interleave then crashed in select_rows_by_copy).
    ValidatedContext g;
    size_t files = 0;
    for (const auto& entry : std::filesystem::directory_iterator(PAGEDKV_FUZZ_FINDINGS)) {
        if (entry.path().extension() != ".snap") continue;
        ++files;
        INFO(entry.path().filename().string());
        try {
            RestoredSnapshot r = restore_snapshot(g.ctx, entry.path());
            FAIL("expected CorruptSnapshot");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::CorruptSnapshot);
            CHECK_THAT(e.what(), Catch::Contains("a static cache of batch_size"));
        }
    }
    CHECK(files >= 3);
}

namespace {

// One step of m for seq with these new token ids (prefix caching registers the pages they fill),
// random K/V in every layer.
void prefill(Context& ctx, KVManager& m, SeqId seq, std::span<const int32_t> ids,
             const PoolConfig& c, std::mt19937& rng) {
    const SeqId seqs[] = {seq};
    const std::span<const int32_t> spans[] = {ids};
    Step st = m.begin_step(seqs, spans);
    const int64_t n = int64_t(ids.size());
    for (uint32_t l = 0; l < c.num_layers; ++l) {
        auto k = random_values(size_t(n) * c.num_kv_heads * c.head_dim, rng, c.dtype);
        auto v = random_values(size_t(n) * c.num_kv_heads * c.head_dim, rng, c.dtype);
        m.write(st, l, Tensor::from_host(ctx, k, {n, c.num_kv_heads, c.head_dim}, c.dtype),
                Tensor::from_host(ctx, v, {n, c.num_kv_heads, c.head_dim}, c.dtype));
    }
}

// The first `tokens` tokens of a gathered (kv_heads, length, dim) tensor.
std::vector<float> first_tokens(const Tensor& t, int64_t tokens) {
    const auto all = t.to_host();
    const auto& s = t.shape();
    std::vector<float> out;
    for (int64_t h = 0; h < s[0]; ++h)
        for (int64_t p = 0; p < tokens; ++p)
            for (int64_t d = 0; d < s[2]; ++d)
                out.push_back(all[size_t((h * s[1] + p) * s[2] + d)]);
    return out;
}

}  // namespace

TEST_CASE(
    "a pool with cached pages restores them: held and evictable pages, the index, a later hit",
    "[snapshot][gpu][prefix]") {
    TempFile file("cached.snap");
    const PoolConfig cfg = small_config(DType::F16, 2, 2, 8, 4, 16);
    std::mt19937 rng(21);
    ValidatedContext first, second;
    TestPool pool(first.ctx, cfg);
    KVManager m(pool, {0.01, true});
    // Prompt p: pages [1..4] [5..8], then 9 10. Prompt q shares p's first page, then its own
    // page [20..23] and 24: p's second page and q's are siblings under p's first.
    const std::vector<int32_t> p = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    const std::vector<int32_t> q = {1, 2, 3, 4, 20, 21, 22, 23, 24};
    const std::vector<int32_t> salted = {1, 2, 3, 4, 5};
    const SeqId a = m.add_sequence(p);
    prefill(first.ctx, m, a, p, cfg, rng);
    const SeqId b = m.add_sequence(q);
    REQUIRE(m.length(b) == 4);  // p's first page
    prefill(first.ctx, m, b, std::span(q).subspan(4), cfg, rng);
    const SeqId c = m.add_sequence(salted, 5);
    REQUIRE(m.length(c) == 0);  // another salt
    prefill(first.ctx, m, c, salted, cfg, rng);
    std::vector<std::vector<float>> want_k, want_v;  // p's first 8 tokens, per layer
    for (uint32_t l = 0; l < 2; ++l) {
        auto [k, v] = m.gather(a, l);
        want_k.push_back(first_tokens(k, 8));
        want_v.push_back(first_tokens(v, 8));
    }
    m.free(a);  // p's second page becomes evictable, its first stays with b
    const PoolStats before = pool.stats();
    REQUIRE(before.cached_blocks == 1);
    REQUIRE(m.prefix_stats().cached_pages == 4);  // p's two pages, q's, the salted one

    const KVManager* managers[] = {&m};
    save_snapshot(file.path, pool, {}, managers, {.page_contents = true});
    const DetailedStats d = detailed_stats(pool, {}, managers);
    CHECK(d.cached_blocks == 1);
    CHECK(d.cached_held_blocks == 3);
    CHECK(d.prefix_entries == 4);
    CHECK(d.free_blocks == before.free_blocks);
    const SnapshotData s = decode_snapshot(read_snapshot_file(file.path));
    CHECK(s.allocator.evictable.size() == 1);
    CHECK(s.allocator.cached.size() == 4);
    CHECK(s.prefix.size() == 4);
    CHECK(s.page_blocks().size() == before.used_blocks + 1);  // the evictable page's K/V too

    RestoredSnapshot r = restore_snapshot(second.ctx, file.path);
    detail::PoolState& was = detail::Access::pool(pool);
    detail::PoolState& now = detail::Access::pool(*r.pool);
    REQUIRE(now.prefix);
    CHECK(now.allocator.state() == was.allocator.state());
    CHECK(now.prefix->entries() == was.prefix->entries());  // siblings in the same order
    CHECK(now.prefix->check() == "");
    CHECK(r.pool->validate());
    CHECK(r.pool->stats().cached_blocks == 1);
    CHECK(r.pool->stats().free_blocks == before.free_blocks);

    // A new sequence of prompt p hits the same pages on both pools and reads the same K/V.
    KVManager m2(*r.pool, {0.01, true});
    const SeqId d1 = m.add_sequence(p), d2 = m2.add_sequence(p);
    CHECK(m2.length(d2) == 8);
    CHECK(m2.block_table(d2) == m.block_table(d1));
    CHECK(r.pool->stats().cached_blocks == 0);
    for (uint32_t l = 0; l < 2; ++l) {
        auto [k, v] = m2.gather(d2, l);
        CHECK(first_tokens(k, 8) == want_k[l]);
        CHECK(first_tokens(v, 8) == want_v[l]);
    }
    CHECK(m2.prefix_stats().hit_tokens == 8);
    // And both hand out the same pages afterwards, evicting the same cached ones.
    m.free(d1);
    m2.free(d2);
    const SeqId e1 = m.add_sequence(), e2 = m2.add_sequence();
    const SeqId one1[] = {e1}, one2[] = {e2};
    const uint32_t fill[] = {uint32_t(r.pool->stats().free_blocks + 1) * cfg.block_size};
    m.allocate(one1, fill);
    m2.allocate(one2, fill);
    CHECK(m2.block_table(e2) == m.block_table(e1));
    CHECK(m.prefix_stats().evictions == 1);
    CHECK(m2.prefix_stats().evictions == 1);
    CHECK(pool.validate());
    CHECK(r.pool->validate());
}

TEST_CASE("restore refuses a snapshot whose cached pages are inconsistent, creating nothing",
          "[snapshot][gpu][prefix]") {
    TempFile file("cached-bad.snap");
    ValidatedContext g;
    g.ctx.synchronize();
    const DeviceCounters before = g.ctx.counters();
    struct Case {
        const char* field;
        void (*edit)(SnapshotData&);
    };
    const Case cases[] = {
        {"(prefix[3].hash)", [](SnapshotData& s) { s.prefix[3].tokens[1] = -5; }},
        {"(prefix[3].parent)", [](SnapshotData& s) { std::swap(s.prefix[3], s.prefix[4]); }},
        {"(cached[2])", [](SnapshotData& s) { s.prefix.pop_back(); }},
        {"(evictable[1])", [](SnapshotData& s) { s.allocator.evictable[1] = BlockId{3}; }},
        {"(cached[1])",
         [](SnapshotData& s) { std::swap(s.allocator.cached[0], s.allocator.cached[1]); }},
    };
    for (const Case& c : cases) {
        INFO(c.field);
        SnapshotData s = cached_snapshot(true);
        c.edit(s);
        write_snapshot_file(file.path, encode_snapshot(s));
        try {
            restore_snapshot(g.ctx, file.path);
            FAIL("expected CorruptSnapshot");
        } catch (const Error& e) {
            CHECK(e.code() == ErrorCode::CorruptSnapshot);
            CHECK_THAT(e.what(), Catch::StartsWith("byte ") && Catch::Contains(c.field));
        }
    }
    const DeviceCounters after = g.ctx.counters();
    CHECK(after.submits == before.submits);
    CHECK(after.copies == before.copies);
    // The unedited sample restores, its cached pages with it.
    write_snapshot_file(file.path, encode_snapshot(cached_snapshot(true)));
    RestoredSnapshot r = restore_snapshot(g.ctx, file.path);
    CHECK(r.pool->stats().cached_blocks == 2);
    CHECK(r.pool->validate());
    const detail::PoolState& ps = detail::Access::pool(*r.pool);
    REQUIRE(ps.prefix);
    CHECK(ps.prefix->entries() == cached_snapshot(false).prefix);
}
