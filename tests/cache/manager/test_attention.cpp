// cached_attention: decode attention read straight from the pages
// (shaders/kernels/paged_attention.comp), checked against attention computed on the CPU over the
// reference cache's K/V, and against the same shader run on the contiguous K/V that get() gathers,
// which must agree bit for bit.
#include <cmath>
#include <vector>

#include "cache/manager/attention.hpp"
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"
#include "reference_attention.hpp"
#include "shaders/vulkan/device.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

double tolerance(DType t) {
    switch (t) {
        case DType::F32:
            return 1e-4;
        case DType::F16:
            return 4e-3;
        case DType::BF16:
        case DType::Int8:
        case DType::FP8E4M3:
            break;
    }
    return 2e-2;
}

struct AttentionCase {
    DType dtype;
    uint32_t head_dim, v_head_dim, kv_heads, q_heads;
};

// The kernel's paths (shaders/kernels/attention.cpp), forced through the device's test hook:
// the host's split rule, never split, split into small chunks, with subgroup reductions
// where the device has them or with the shared-memory fallback.
struct PathMode {
    const char* name;
    bool no_subgroups;
    uint32_t chunk_tokens;
};
constexpr uint32_t kNoSplit = detail::Device::kNoSplit;
const PathMode kModes[] = {
    {"the host's rule", false, 0},
    {"no split", false, kNoSplit},
    {"split into 16-token chunks", false, 16},
    {"split into 64-token chunks, shared-memory reductions", true, 64},
    {"no split, shared-memory reductions", true, kNoSplit},
};

// Runs cached_attention on every layer of the harness's cache and checks it both ways, on
// every path of the kernel. expect_dispatches: how many dispatches the host's rule records (1: no
// split, 2: split and reduce), or 0 to not check.
void check_attention(CacheHarness& h, PagedKVCache& cache, uint32_t q_heads, float scale,
                     uint32_t expect_dispatches = 0) {
    const PoolConfig& c = h.pool.config();
    const uint32_t B = cache.batch_size();
    detail::Device& dev = detail::Access::device(h.ctx);
    auto qv = random_values(size_t(B) * q_heads * c.head_dim, h.rng, c.dtype);
    for (float& x : qv)
        x *= 0.125f;  // exact in every dtype; keeps scores moderate
    Tensor q = Tensor::from_host(h.ctx, qv, shape4(B, q_heads, 1, c.head_dim), c.dtype);
    const float used_scale = scale > 0 ? scale : 1.0f / std::sqrt(float(c.head_dim));
    for (uint32_t layer = 0; layer < c.num_layers; ++layer) {
        INFO("layer " << layer << ", lengths " << h.ref.lengths(layer).size() << " rows");
        const auto lengths = cache.seq_lengths(layer);
        const auto want =
            reference_attention(qv, h.ref.keys(layer), h.ref.values(layer), h.ref.lengths(layer),
                                q_heads, c.num_kv_heads, c.head_dim, c.v_head_dim, used_scale);
        for (const PathMode& mode : kModes) {
            INFO("path: " << mode.name);
            dev.set_attention_paths({mode.no_subgroups, mode.chunk_tokens});
            const uint64_t before = h.ctx.counters().dispatches;
            Tensor paged = cache.cached_attention(q, layer, scale);
            if (layer == 0 && mode.chunk_tokens == 0 && expect_dispatches != 0)
                REQUIRE(h.ctx.counters().dispatches - before == expect_dispatches);
            REQUIRE(paged.shape() == shape4(B, q_heads, 1, c.v_head_dim));
            REQUIRE(paged.dtype() == c.dtype);
            const auto got = paged.to_host();
            REQUIRE(got.size() == want.size());
            for (size_t i = 0; i < got.size(); ++i) {
                INFO("element " << i << ": got " << got[i] << ", want " << want[i]);
                REQUIRE(std::abs(double(got[i]) - want[i]) <=
                        tolerance(c.dtype) * std::max(1.0, std::abs(want[i])));
            }
            // The same shader over the gathered, contiguous K/V: the same tiles and chunks,
            // the same arithmetic in the same order, so the same bits.
            if (auto kv = cache.get(layer)) {
                Tensor contiguous =
                    detail::contiguous_attention(q, kv->first, kv->second, lengths, scale);
                const auto flat = contiguous.to_host();
                INFO("paged vs contiguous, first difference: " << first_difference(got, flat));
                REQUIRE(bit_equal(got, flat));
            } else {
                REQUIRE(bit_equal(got, std::vector<float>(got.size(), 0.0f)));  // no tokens
            }
        }
        dev.set_attention_paths({});
    }
}

}  // namespace

TEST_CASE("cached_attention matches CPU attention and the contiguous shader bit for bit",
          "[attention][gpu]") {
    const AttentionCase cases[] = {
        {DType::F32, 8, 6, 2, 4},      // GQA, v_head_dim != head_dim
        {DType::F16, 8, 8, 2, 2},      // MHA
        {DType::BF16, 8, 4, 1, 4},     // MQA
        {DType::F32, 160, 160, 1, 2},  // rows of several words a thread
        {DType::F16, 256, 128, 1, 1},
    };
    for (const AttentionCase& ac : cases) {
        DYNAMIC_SECTION(to_string(ac.dtype)
                        << " head_dim " << ac.head_dim << " v " << ac.v_head_dim << ", "
                        << ac.q_heads << " query heads over " << ac.kv_heads) {
            ValidatedContext vc;
            PoolConfig cfg = small_config(ac.dtype, 3, ac.kv_heads, ac.head_dim, 4, 160);
            cfg.v_head_dim = ac.v_head_dim;
            cfg.max_slab_bytes = 8 * (uint64_t(ac.head_dim) + ac.v_head_dim) * ac.kv_heads * 4 * 3 *
                                 dtype_size(ac.dtype);  // 8 blocks a slab
            BlockPool pool(vc.ctx, cfg);
            DynamicKVCache cache(pool);
            CacheHarness h(vc.ctx, pool, cache, 21);
            // Layer 0: 3 rows of 70 tokens (two tiles of 64), cropped to start part-way into a
            // page, a shorter row joined from another cache, rows sharing pages; layer 1 a
            // few tokens; layer 2 nothing (zeros out).
            h.append(3, 70, 0);
            h.append(3, 5, 1);
            cache.crop(67);
            h.ref.crop(67);
            DynamicKVCache other(pool);
            CacheHarness ho(vc.ctx, pool, other, 22);
            ho.append(1, 9, 0);
            ho.append(1, 2, 1);
            cache.insert(other, 0, 3);
            h.ref.insert(ho.ref, 0, 3);
            const std::vector<int32_t> beams{3, 1, 1, 0};
            cache.reorder_cache(beams);
            h.ref.select(beams);
            h.append(4, 1, 0);
            h.check();
            check_attention(h, cache, ac.q_heads, 0.0f);
            check_attention(h, cache, ac.q_heads, 0.07f);
            REQUIRE(pool.check() == "");
        }
    }
}

TEST_CASE("cached_attention over sliding-window and static caches", "[attention][gpu]") {
    ValidatedContext vc;
    BlockPool pool(vc.ctx, small_config(DType::F16, 2, 2, 8, 4, 96));
    SECTION("a sliding window's rows start part-way into their first page") {
        const int64_t window = 10;
        SlidingWindowKVCache cache(pool, uint32_t(window));
        CacheHarness h(vc.ctx, pool, cache, 31);
        h.after_update = [&](uint32_t l) { h.ref.keep_last(l, window); };
        for (int step = 0; step < 3; ++step)
            for (uint32_t layer = 0; layer < 2; ++layer)
                h.append(3, 7, layer);
        h.check();
        check_attention(h, cache, 4, 0.0f);
    }
    SECTION("a static cache after crop and batch selection") {
        StaticKVCache cache(pool, 4, 24);
        CacheHarness h(vc.ctx, pool, cache, 32);
        h.ref.set_batch(4);
        for (uint32_t layer = 0; layer < 2; ++layer)
            h.append(4, 11, layer);
        cache.crop(6);
        h.ref.crop(6);
        const std::vector<int32_t> rows{2, 2, 0, 1};
        cache.batch_select_indices(rows);
        h.ref.select(rows);
        h.append(4, 1, 0);
        h.check();
        check_attention(h, cache, 2, 0.0f);
    }
}

TEST_CASE("cached_attention over GQA groups, long rows across many pages and slabs, empty rows",
          "[attention][gpu]") {
    struct Case {
        DType dtype;
        uint32_t head_dim, kv_heads, q_heads;
    };
    // Groups of 1, 4 and 8 query heads a kv head, and 16 (two slices of 8 a workgroup); rows
    // of 16-byte words (uvec4 loads) and of 4-byte words (head_dim 6 f16, 10 f32).
    const Case cases[] = {
        {DType::F16, 8, 2, 2},   {DType::F16, 64, 1, 4}, {DType::BF16, 8, 1, 8},
        {DType::F32, 10, 1, 16}, {DType::F16, 6, 2, 8},  {DType::F32, 256, 1, 4},
    };
    for (const Case& ac : cases) {
        DYNAMIC_SECTION(to_string(ac.dtype) << " head_dim " << ac.head_dim << ", " << ac.q_heads
                                            << " query heads over " << ac.kv_heads) {
            ValidatedContext vc;
            PoolConfig cfg = small_config(ac.dtype, 2, ac.kv_heads, ac.head_dim, 4, 420);
            cfg.max_slab_bytes =
                8 * uint64_t(ac.head_dim) * 2 * ac.kv_heads * 4 * 2 * dtype_size(ac.dtype);
            BlockPool pool(vc.ctx, cfg);
            DynamicKVCache cache(pool);
            CacheHarness h(vc.ctx, pool, cache, 41);
            // Two rows of 600 tokens (150 pages of 4 over ~19 slabs; few workgroups and long
            // rows: the host's rule splits), cropped so they start mid-page; then a row empty
            // in layer 0, joined from another cache.
            h.append(2, 601, 0);
            h.append(2, 7, 1);
            cache.crop(599);
            h.ref.crop(599);
            DynamicKVCache other(pool);
            CacheHarness ho(vc.ctx, pool, other, 42);
            ho.append(1, 5, 1);
            cache.insert(other, 0, 2);
            h.ref.insert(ho.ref, 0, 2);
            h.append(3, 2, 1);
            h.check();
            check_attention(h, cache, ac.q_heads, 0.0f, 2);
            REQUIRE(pool.check() == "");
        }
    }
}

TEST_CASE("cached_attention rejects bad queries with clear errors and changes nothing",
          "[attention][errors][gpu]") {
    ValidatedContext vc;
    Context& ctx = vc.ctx;
    BlockPool pool(ctx, small_config(DType::F16, 2, 2, 8, 4, 32));
    DynamicKVCache cache(pool);
    CacheHarness h(ctx, pool, cache, 9);
    auto q = [&](std::vector<int64_t> shape, DType t = DType::F16) {
        return Tensor::empty(ctx, std::move(shape), t);
    };
    // Each refusal names what was wrong, and the cache and pool are exactly as before.
    auto rejected = [&](PagedKVCache& c, ErrorCode code, const std::string& text,
                        const Tensor& query, uint32_t layer) {
        require_rejected(c, code, text, [&] { (void)c.cached_attention(query, layer); });
    };
    const ErrorCode bad = ErrorCode::InvalidArgument;
    rejected(cache, bad, "the cache holds no rows yet", q({1, 2, 1, 8}), 0);
    h.append(2, 6, 0);
    const uint64_t used = pool.stats().used_blocks;
    rejected(cache, bad, "query is undefined", Tensor(), 0);
    rejected(cache, bad, "one query token per row, got shape [2, 2, 2, 8]", q({2, 2, 2, 8}), 0);
    rejected(cache, bad, "query has batch 3, the cache holds 2 rows", q({3, 2, 1, 8}), 0);
    rejected(cache, bad, "query has 3 heads, not a multiple of the 2 kv heads", q({2, 3, 1, 8}), 0);
    rejected(cache, bad, "query has head_dim 6, the cache has 8", q({2, 2, 1, 6}), 0);
    rejected(cache, bad, "got shape [2, 2, 8]", q({2, 2, 8}), 0);
    rejected(cache, bad, "cached_attention: layer_idx 2 out of range, pool has 2 layers",
             q({2, 2, 1, 8}), 2);
    {
        // f16 rows of an odd head_dim are not whole 32-bit words.
        BlockPool odd(ctx, small_config(DType::F16, 1, 1, 5, 4, 8));
        DynamicKVCache c(odd);
        CacheHarness ho(ctx, odd, c, 1);
        ho.append(1, 3, 0);
        rejected(c, ErrorCode::Unsupported, "head dim 5 of f16 is not a whole number of them",
                 q({1, 1, 1, 5}), 0);
        ho.check();
    }
    REQUIRE(pool.stats().used_blocks == used);
    h.check();
}
