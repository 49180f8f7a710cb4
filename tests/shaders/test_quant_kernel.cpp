// The quantize kernel (quant_rows.comp) against the reference quantizer: the codes and scales in
// the pages, and what a gather dequantizes, equal tests/reference/reference_quant.hpp bit for
// bit, for every input dtype, both page layouts, rows spanning the whole f32 exponent range
// (the kernel's integer division), zero and non-finite rows.
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "cache/manager/access.hpp"
#include "cache/snapshot/snapshot_capture.hpp"
#include "reference_quant.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/buffer.hpp"
#include "shaders/vulkan/device.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

// Rows of `dim` random values, each row scaled by its own power of two spanning the input
// dtype's range (2^-120 .. 2^120; f16: 2^-24 .. 2^15), so that amax takes random mantissas at
// every exponent, with a few special rows: all zeros, a tiny row below the 2^-100 floor, exact
// halves (round-half-even ties), an f32 subnormal, an infinity and a NaN.
std::vector<float> spread_rows(size_t rows, uint32_t dim, std::mt19937& rng, DType t) {
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    std::vector<float> x(rows * dim);
    const int lo = t == DType::F16 ? -24 : -120, hi = t == DType::F16 ? 15 : 120;
    for (size_t r = 0; r < rows; ++r) {
        const int e = lo + int(r * 37 % size_t(hi - lo + 1));
        for (uint32_t d = 0; d < dim; ++d)
            x[r * dim + d] = std::ldexp(unit(rng), e);
        switch (r % 11) {
            case 1:
                std::fill_n(&x[r * dim], dim, 0.0f);
                break;
            case 2:
                for (uint32_t d = 0; d < dim; ++d)
                    x[r * dim + d] = std::ldexp(unit(rng), -110);
                break;
            case 3:  // ties: k + 0.5 after scaling by 127 / 127
                for (uint32_t d = 0; d < dim; ++d)
                    x[r * dim + d] = d == 0 ? 127.0f : float(int(d % 9) - 4) + 0.5f;
                break;
            case 4:
                x[r * dim] = std::bit_cast<float>(0x00000123u);  // an f32 subnormal
                break;
            case 5:
                x[r * dim + 1] = -std::numeric_limits<float>::infinity();
                break;
            case 6:
                x[r * dim + 2] = std::numeric_limits<float>::quiet_NaN();
                break;
            default:
                break;
        }
        for (uint32_t d = 0; d < dim; ++d)
            x[r * dim + d] = round_to(t, x[r * dim + d]);
    }
    return x;
}

constexpr uint32_t kFloatBitsCheck[] = {
#include "spirv/float_bits_check_main.inc"
};

// float_bits_check.comp: op (0 div_rounded(c, x), 1 f32_to_fp8, 2 fp8_to_f32) over x.
std::vector<uint32_t> run_float_bits(Context& ctx, uint32_t op, uint32_t c,
                                     const std::vector<uint32_t>& x) {
    detail::Device& dev = detail::Access::device(ctx);
    const uint64_t bytes = x.size() * 4;
    auto src = detail::Buffer::create(dev, bytes, detail::MemoryKind::Tensor);
    auto dst = detail::Buffer::create(dev, bytes, detail::MemoryKind::Tensor);
    src->write(x.data(), bytes);
    struct {
        uint64_t src, dst;
        uint32_t count, c, op;
    } pc{src->address(), dst->address(), uint32_t(x.size()), c, op};
    {
        detail::Device::CallLock lock(dev);
        const auto& pipe = dev.pipeline("float_bits_check", kFloatBitsCheck, sizeof(pc));
        VkCommandBuffer cmd = dev.batches().record({src.get()}, {dst.get()});
        vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe.pipeline);
        vkCmdPushConstants(cmd, pipe.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(pc), &pc);
        vkCmdDispatch(cmd, 4096, 1, 1);
    }
    std::vector<uint32_t> out(x.size());
    dst->read(out.data(), bytes);
    return out;
}

}  // namespace

TEST_CASE("the quantizer's integer arithmetic equals the host's IEEE results", "[quant][gpu]") {
    ValidatedContext g;
    SECTION("C / amax, correctly rounded, for every mantissa and the exponents at the ends") {
        // The quotient's mantissa depends on amax's mantissa only: every one of the 2^23 at
        // 2^0, and a sample at the smallest (2^-100) and largest exponents.
        std::vector<uint32_t> x;
        for (uint32_t m = 0; m < (1u << 23); ++m)
            x.push_back((127u << 23) | m);
        for (uint32_t e : {27u, 28u, 253u, 254u})
            for (uint32_t m = 0; m < (1u << 23); m += 997)
                x.push_back((e << 23) | m);
        for (uint32_t c : {127u, 448u}) {
            const auto got = run_float_bits(g.ctx, 0, c, x);
            size_t wrong = 0;
            for (size_t i = 0; i < x.size(); ++i) {
                const float want = float(c) / std::bit_cast<float>(x[i]);
                if (got[i] != std::bit_cast<uint32_t>(want) && wrong++ < 8)
                    UNSCOPED_INFO("c " << c << ", amax 0x" << std::hex << x[i] << ": got 0x"
                                       << got[i] << ", want 0x" << std::bit_cast<uint32_t>(want)
                                       << std::dec);
            }
            CHECK(wrong == 0);
        }
    }
    SECTION("f32 to fp8: the nearest code, ties to even, for a dense sweep of both signs") {
        std::vector<uint32_t> x;
        for (uint32_t u = 0; u < 0x44000000u; u += 61) {  // 0 .. 512: past the 448 saturation
            x.push_back(u);
            x.push_back(u | 0x80000000u);
        }
        for (uint32_t c = 0; c < 256; ++c) {  // every value exactly, and each midpoint's ties
            const float v = fp8e4m3_value(uint8_t(c));
            if (!std::isfinite(v)) continue;
            x.push_back(std::bit_cast<uint32_t>(v));
            if ((c & 0x7F) < 0x7E) {
                const float mid = (v + fp8e4m3_value(uint8_t(c + 1))) / 2;  // exact
                x.push_back(std::bit_cast<uint32_t>(mid));
            }
        }
        const auto got = run_float_bits(g.ctx, 1, 0, x);
        size_t wrong = 0;
        for (size_t i = 0; i < x.size(); ++i) {
            const uint32_t want = fp8e4m3_nearest(std::bit_cast<float>(x[i]));
            if (got[i] != want && wrong++ < 8)
                UNSCOPED_INFO("0x" << std::hex << x[i] << ": got 0x" << got[i] << ", want 0x"
                                   << want << std::dec);
        }
        CHECK(wrong == 0);
    }
    SECTION("fp8 to f32: every code") {
        std::vector<uint32_t> x(256);
        for (uint32_t c = 0; c < 256; ++c)
            x[c] = c;
        const auto got = run_float_bits(g.ctx, 2, 0, x);
        for (uint32_t c = 0; c < 256; ++c) {
            INFO("code 0x" << std::hex << c);
            const float want = fp8e4m3_value(uint8_t(c));
            if (std::isnan(want))
                CHECK(got[c] == 0x7FC00000u);
            else
                CHECK(got[c] == std::bit_cast<uint32_t>(want));
        }
    }
}

TEST_CASE("quantized pages hold exactly the reference quantizer's codes and scales",
          "[quant][gpu]") {
    // One context for every combination (making one costs more than the checks).
    ValidatedContext g;
    BlockPool warmup(g.ctx, small_config(DType::F32));  // resolves the byte paths first
    for (const PathMode& mode : kPathModes)
        for (DType q : {DType::Int8, DType::FP8E4M3})
            for (DType in : {DType::F32, DType::F16, DType::BF16})
                for (PageLayout l : {PageLayout::HeadMajor, PageLayout::TokenMajor})
                    for (auto [dk, dv] : {std::pair{16u, 8u}, std::pair{264u, 12u}}) {
                        // Threads: a row each (whole_rows) or a word each, a row's amax
                        // reduced in shared memory; 264: a row of more words (66) than a
                        // workgroup has threads.
                        INFO(mode.name << ", " << to_string(q) << " from " << to_string(in) << ", "
                                       << to_string(l) << ", dims " << dk << "/" << dv);
                        use_path(g.ctx, mode);
                        PoolConfig c = small_config(q, 2, 3, dk, 4, 64);
                        c.v_head_dim = dv;
                        c.layout = l;
                        c.compute_dtype = DType::F32;
                        BlockPool pool(g.ctx, c);
                        DynamicKVCache cache(pool);
                        std::mt19937 rng(uint32_t(q) * 7 + uint32_t(in));
                        const uint32_t B = 2, S = 23, H = c.num_kv_heads;
                        const auto k = spread_rows(size_t(B) * H * S, c.head_dim, rng, in);
                        const auto v = spread_rows(size_t(B) * H * S, c.v_head_dim, rng, in);
                        cache.update(Tensor::from_host(g.ctx, k, shape4(B, H, S, c.head_dim), in),
                                     Tensor::from_host(g.ctx, v, shape4(B, H, S, c.v_head_dim), in),
                                     1);
                        // What get() dequantizes (f32: no rounding after the multiply).
                        const auto got = cache.get(1);
                        REQUIRE(got);
                        REQUIRE(got->first.dtype() == DType::F32);
                        const auto want_k = quantize_rows(q, DType::F32, k, c.head_dim);
                        const auto want_v = quantize_rows(q, DType::F32, v, c.v_head_dim);
                        const auto gk = got->first.to_host(), gv = got->second.to_host();
                        REQUIRE(gk.size() == want_k.size());
                        CHECK(std::memcmp(gk.data(), want_k.data(), gk.size() * 4) == 0);
                        CHECK(std::memcmp(gv.data(), want_v.data(), gv.size() * 4) == 0);

                        // The bytes in the pages.
                        const PagedKVCache* caches[] = {&cache};
                        const SnapshotData s =
                            detail::capture_snapshot(pool, caches, {}, true, "quant test");
                        const PageFormat& f = s.layout;
                        std::vector<uint64_t> index_of(s.layout.num_blocks, UINT64_MAX);
                        for (size_t b = 0, i = 0; b < s.allocator.refcounts.size(); ++b)
                            if (s.allocator.refcounts[b] > 0) index_of[b] = i++;
                        size_t wrong = 0, rows = 0;
                        for (uint32_t b = 0; b < B; ++b)
                            for (uint32_t t = 0; t < S; ++t)
                                for (uint32_t h = 0; h < H; ++h)
                                    for (bool value : {false, true}) {
                                        const uint32_t dim = value ? f.v_head_dim : f.head_dim;
                                        const auto& x = value ? v : k;
                                        const size_t row = (size_t(b) * H + h) * S + t;
                                        const QuantizedRow want =
                                            quantize_row(q, std::span(x).subspan(row * dim, dim));
                                        const uint32_t block =
                                            index(s.caches[0].rows[b][t / f.block_size]);
                                        const uint8_t* page = s.pages.data() +
                                                              index_of[block] * f.block_bytes() +
                                                              f.page_offset(1, value);
                                        const uint32_t slot = t % f.block_size;
                                        const uint8_t* codes =
                                            page +
                                            f.row_offset(slot, h,
                                                         value ? f.v_row_bytes() : f.k_row_bytes());
                                        const uint8_t* scale = page + f.scales_offset(value) +
                                                               f.row_offset(slot, h, 4);
                                        wrong += std::memcmp(codes, want.codes.data(), dim) != 0 ||
                                                 std::memcmp(scale, &want.scale, 4) != 0;
                                        ++rows;
                                    }
                        INFO(wrong << " of " << rows
                                   << " rows differ from the reference quantizer");
                        CHECK(wrong == 0);
                        CHECK(pool.validate());
                    }
}

TEST_CASE("quantized pool sizes count the scales", "[quant]") {
    PageFormat f{2, 4, 64, 32, 16, DType::Int8, PageLayout::TokenMajor};
    CHECK(f.k_page_bytes() == 4 * 16 * (64 + 4));
    CHECK(f.v_page_bytes() == 4 * 16 * (32 + 4));
    CHECK(f.scales_offset(false) == 4 * 16 * 64);
    CHECK(f.block_bytes() == 2 * (f.k_page_bytes() + f.v_page_bytes()));
    PoolShape bad;
    static_cast<PageFormat&>(bad) = f;
    bad.num_blocks = 1;
    bad.head_dim = 6;
    const auto problem = check_pool_shape(bad);
    REQUIRE(problem);
    CHECK(problem->field == ShapeProblem::Field::HeadDim);
}
