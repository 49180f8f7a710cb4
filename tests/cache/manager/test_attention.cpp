// cached_attention: decode attention read straight from the pages
// (shaders/kernels/paged_attention.comp), checked against attention computed on the CPU over the
// reference cache's K/V, and against the same shader run on the contiguous K/V that get() gathers,
// which must agree bit for bit. Quantized pools (Int8, FP8E4M3) are read directly: checked
// against CPU attention over the reference-dequantized K/V (f32), and for accuracy against
// attention over the original K/V.
#include <cmath>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cache/manager/attention.hpp"
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"
#include "reference_attention.hpp"
#include "reference_quant.hpp"
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
    std::optional<DType> compute = {};  // the pool's compute_dtype (unset: its default)
};

std::string compute_name(const std::optional<DType>& t) {
    return t ? std::string(", compute ") + to_string(*t) : std::string();
}

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

// Bytes of one block of a pool (values and, quantized, scales), for max_slab_bytes.
uint64_t block_bytes(const PoolConfig& c) {
    const uint32_t dv = c.v_head_dim ? c.v_head_dim : c.head_dim;
    const uint64_t row =
        (uint64_t(c.head_dim) + dv) * dtype_size(c.dtype) + 2 * dtype_scale_size(c.dtype);
    return row * c.num_kv_heads * c.block_size * c.num_layers;
}

// Runs cached_attention on every layer of the harness's cache and checks it both ways, on
// every path of the kernel. expect_dispatches: how many dispatches the host's rule records (1: no
// split, 2: split and reduce), or 0 to not check. A quantized pool: the query and the output are
// in its compute dtype, the CPU attention reads the reference's dequantized (f32) K/V (the
// kernel differs only in summation order: it scales a row's sum once), and the contiguous
// shader (float K/V only) is not comparable bit for bit.
void check_attention(CacheHarness& h, PagedKVCache& cache, uint32_t q_heads, float scale,
                     uint32_t expect_dispatches = 0) {
    const PoolConfig& c = h.pool.config();
    const bool quant = is_quantized(c.dtype);
    const DType io = *c.compute_dtype;  // the query's and the output's dtype
    // The dtype the kernel computes in (a float pool's own: its output converted to io), and
    // its tolerance; query values exact in both.
    const DType kernel = quant ? io : c.dtype;
    const uint32_t B = cache.batch_size();
    auto qv = random_values(size_t(B) * q_heads * c.head_dim, h.rng, kernel);
    for (float& x : qv)
        x *= 0.125f;  // exact in every dtype; keeps scores moderate
    Tensor q = Tensor::from_host(h.ctx, qv, shape4(B, q_heads, 1, c.head_dim), io);
    const float used_scale = scale > 0 ? scale : 1.0f / std::sqrt(float(c.head_dim));
    for (uint32_t layer = 0; layer < c.num_layers; ++layer) {
        INFO("layer " << layer << ", lengths " << h.ref.lengths(layer).size() << " rows");
        const auto lengths = cache.seq_lengths(layer);
        const auto want =
            reference_attention(qv, h.ref.keys(layer), h.ref.values(layer), h.ref.lengths(layer),
                                q_heads, c.num_kv_heads, c.head_dim, c.v_head_dim, used_scale);
        for (const PathMode& mode : kModes) {
            INFO("path: " << mode.name);
            set_attention_paths(h.ctx, {mode.no_subgroups, mode.chunk_tokens});
            const uint64_t before = h.ctx.counters().dispatches;
            Tensor paged = cache.cached_attention(q, layer, scale);
            if (layer == 0 && mode.chunk_tokens == 0 && expect_dispatches != 0)
                REQUIRE(h.ctx.counters().dispatches - before == expect_dispatches);
            REQUIRE(paged.shape() == shape4(B, q_heads, 1, c.v_head_dim));
            REQUIRE(paged.dtype() == io);
            const auto got = paged.to_host();
            REQUIRE(got.size() == want.size());
            for (size_t i = 0; i < got.size(); ++i) {
                INFO("element " << i << ": got " << got[i] << ", want " << want[i]);
                REQUIRE(std::abs(double(got[i]) - want[i]) <=
                        tolerance(kernel) * std::max(1.0, std::abs(want[i])));
            }
            // The same shader over the gathered, contiguous K/V: the same tiles and chunks,
            // the same arithmetic in the same order, so the same bits.
            // (Quantized: get()'s K/V are the pages' values in the compute dtype; the float
            // shader over them agrees to the compute dtype's tolerance.)
            auto kv = cache.get(layer);
            if (kv && (quant || io != c.dtype)) {
                const auto flat =
                    detail::contiguous_attention(q, kv->first, kv->second, lengths, scale)
                        .to_host();
                for (size_t i = 0; i < got.size(); ++i) {
                    INFO("element " << i << ": paged " << got[i] << ", contiguous " << flat[i]);
                    REQUIRE(std::abs(double(got[i]) - double(flat[i])) <=
                            tolerance(kernel) * std::max(1.0, std::abs(double(flat[i]))));
                }
            } else if (kv) {
                Tensor contiguous =
                    detail::contiguous_attention(q, kv->first, kv->second, lengths, scale);
                const auto flat = contiguous.to_host();
                INFO("paged vs contiguous, first difference: " << first_difference(got, flat));
                REQUIRE(bit_equal(got, flat));
            } else {
                REQUIRE(bit_equal(got, std::vector<float>(got.size(), 0.0f)));  // no tokens
            }
        }
        set_attention_paths(h.ctx, {});
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
        {DType::F16, 8, 8, 2, 4, DType::F32},  // the output converted to the compute dtype
        // Quantized pages, read directly: the output in the compute dtype (default f16).
        {DType::Int8, 64, 32, 2, 4},
        {DType::FP8E4M3, 64, 128, 2, 8},
        {DType::Int8, 128, 128, 1, 8, DType::F32},
        {DType::FP8E4M3, 128, 64, 2, 2, DType::F32},
        {DType::Int8, 8, 4, 1, 4, DType::BF16},
        {DType::FP8E4M3, 256, 256, 1, 2, DType::F32},  // the largest head dim
    };
    for (const AttentionCase& ac : cases) {
        DYNAMIC_SECTION(to_string(ac.dtype) << " head_dim " << ac.head_dim << " v " << ac.v_head_dim
                                            << ", " << ac.q_heads << " query heads over "
                                            << ac.kv_heads << compute_name(ac.compute)) {
            ValidatedContext vc;
            PoolConfig cfg = small_config(ac.dtype, 3, ac.kv_heads, ac.head_dim, 4, 160);
            cfg.v_head_dim = ac.v_head_dim;
            cfg.compute_dtype = ac.compute;
            cfg.max_slab_bytes = 8 * block_bytes(cfg);  // 8 blocks a slab
            TestPool pool(vc.ctx, cfg);
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
    const DType dtype = GENERATE(DType::F16, DType::Int8, DType::FP8E4M3);
    INFO("pool dtype " << to_string(dtype));
    ValidatedContext vc;
    TestPool pool(vc.ctx, small_config(dtype, 2, 2, 8, 4, 96));
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
        std::optional<DType> compute = {};
    };
    // Groups of 1, 4 and 8 query heads a kv head, and 16 (two slices of 8 a workgroup); rows
    // of 16-byte words (uvec4 loads) and of 4-byte words (head_dim 6 f16, 10 f32; 4 and 36
    // codes).
    const Case cases[] = {
        {DType::F16, 8, 2, 2},
        {DType::F16, 64, 1, 4},
        {DType::BF16, 8, 1, 8},
        {DType::F32, 10, 1, 16},
        {DType::F16, 6, 2, 8},
        {DType::F32, 256, 1, 4},
        {DType::Int8, 64, 1, 4},
        {DType::FP8E4M3, 64, 2, 8, DType::F32},
        {DType::Int8, 128, 1, 16, DType::F32},
        {DType::FP8E4M3, 128, 1, 4},
        {DType::Int8, 36, 2, 2},
        {DType::FP8E4M3, 4, 1, 8, DType::BF16},
    };
    for (const Case& ac : cases) {
        DYNAMIC_SECTION(to_string(ac.dtype)
                        << " head_dim " << ac.head_dim << ", " << ac.q_heads << " query heads over "
                        << ac.kv_heads << compute_name(ac.compute)) {
            ValidatedContext vc;
            PoolConfig cfg = small_config(ac.dtype, 2, ac.kv_heads, ac.head_dim, 4, 420);
            cfg.compute_dtype = ac.compute;
            cfg.max_slab_bytes = 8 * block_bytes(cfg);
            TestPool pool(vc.ctx, cfg);
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
    TestPool pool(ctx, small_config(DType::F16, 2, 2, 8, 4, 32));
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
    {
        // Quantized rows: 4 codes a word, at most 256 codes a row (the accumulator's registers).
        PoolConfig cfg = small_config(DType::Int8, 1, 1, 260, 4, 8);
        cfg.v_head_dim = 8;
        BlockPool wide(ctx, cfg);
        DynamicKVCache c(wide);
        CacheHarness ho(ctx, wide, c, 2);
        ho.append(1, 3, 0);
        rejected(c, ErrorCode::Unsupported, "head dim 260 of int8 exceeds the shader's 256 bytes",
                 q({1, 1, 1, 260}), 0);
        ho.check();
    }
    REQUIRE(pool.stats().used_blocks == used);
    h.check();
}

TEST_CASE("attention over quantized pages is close to attention over the original K/V",
          "[attention][gpu]") {
    // The accuracy target: over Gaussian data, attention read from int8 pages is within
    // 1e-2 mean relative error (sum |got - want| / sum |want|) of f32 attention over the K/V
    // before quantization; FP8E4M3 (3 mantissa bits) within 5e-2.
    const DType dtype = GENERATE(DType::Int8, DType::FP8E4M3);
    const double bound = dtype == DType::Int8 ? 1e-2 : 5e-2;
    const uint32_t B = 2, H = 2, QH = 8, D = 128, L = 300;
    ValidatedContext vc;
    PoolConfig cfg = small_config(dtype, 1, H, D, 16, 64);
    cfg.compute_dtype = DType::F32;
    TestPool pool(vc.ctx, cfg);
    DynamicKVCache cache(pool);
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto gaussian = [&](size_t n) {
        std::vector<float> v(n);
        for (float& x : v)
            x = normal(rng);
        return v;
    };
    const auto k = gaussian(size_t(B) * H * L * D), v = gaussian(k.size());
    const auto qv = gaussian(size_t(B) * QH * D);
    (void)cache.update(Tensor::from_host(vc.ctx, k, shape4(B, H, L, D), DType::F32),
                       Tensor::from_host(vc.ctx, v, shape4(B, H, L, D), DType::F32), 0);
    const Tensor q = Tensor::from_host(vc.ctx, qv, shape4(B, QH, 1, D), DType::F32);
    const float scale = 1.0f / std::sqrt(float(D));
    const std::vector<int64_t> lengths(B, L);
    const auto exact = reference_attention(qv, k, v, lengths, QH, H, D, D, scale);
    for (const auto& mode : kModes) {
        INFO(to_string(dtype) << ", path: " << mode.name);
        set_attention_paths(vc.ctx, {mode.no_subgroups, mode.chunk_tokens});
        const auto got = cache.cached_attention(q, 0).to_host();
        double err = 0, norm = 0;
        for (size_t i = 0; i < got.size(); ++i) {
            err += std::abs(double(got[i]) - exact[i]);
            norm += std::abs(exact[i]);
        }
        INFO("mean relative error " << err / norm);
        REQUIRE(err / norm < bound);
    }
    set_attention_paths(vc.ctx, {});
}
