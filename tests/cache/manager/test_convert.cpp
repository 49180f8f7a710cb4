// Converting writes: a cache takes f32, f16 and bf16 K/V whatever its pool holds and rounds to
// the pool's dtype on the device (nearest even), bit for bit as the host's round_to. Checked
// against the reference cache, which is given the values rounded on the host, with values
// that need rounding and the special ones (infinities, NaN, signed zeros, subnormals, overflow).
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "cache/manager/access.hpp"
#include "cache_state_snapshot.hpp"
#include "reference_cache.hpp"
#include "reference_quant.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

constexpr DType kDTypes[] = {DType::F32, DType::F16, DType::BF16};

// Values that need rounding in f16 and bf16 at every scale, with the special values mixed in.
std::vector<float> awkward_values(size_t n, std::mt19937& rng) {
    const float inf = std::numeric_limits<float>::infinity();
    const float special[] = {
        0.0f,
        -0.0f,
        inf,
        -inf,
        std::numeric_limits<float>::quiet_NaN(),
        std::bit_cast<float>(0xffc12345u),  // negative NaN with a payload
        std::bit_cast<float>(0x7f800001u),  // signalling-pattern NaN
        65504.0f,
        65519.99f,
        65520.0f,
        -65520.0f,  // f16's largest, its rounding edge
        3.0e38f,
        std::numeric_limits<float>::max(),  // bf16 overflow edge
        5.96046448e-8f,
        2.98023224e-8f,
        2.98023259e-8f,
        8.9e-8f,
        -1.0e-6f,  // f16 subnormals
        6.10351562e-5f,
        6.1e-5f,  // f16's smallest normal and just below
        std::numeric_limits<float>::denorm_min(),
        -1.0e-40f,  // f32 subnormals
        1.00048828125f,
        1.00146484375f,
        1.00390625f,
        1.01171875f,  // f16 / bf16 ties
    };
    std::normal_distribution<float> mantissa(0.0f, 1.0f);
    std::uniform_int_distribution<int> exponent(-30, 20);
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i)
        out[i] = i % 5 == 0 ? special[(i / 5) % std::size(special)]
                            : std::ldexp(mantissa(rng), exponent(rng));
    return out;
}

std::vector<float> rounded(const std::vector<float>& v, DType t) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); ++i)
        out[i] = round_to(t, v[i]);
    return out;
}

void require_bits(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
    INFO(what << "; first difference: " << first_difference(got, want));
    REQUIRE(bit_equal(got, want));
}

}  // namespace

TEST_CASE(
    "every cache write converts f32, f16 and bf16 inputs to the pool's dtype as the host "
    "rounds",
    "[convert][gpu]") {
    for (DType pool_type : kDTypes)
        for (DType input : kDTypes) {
            INFO("pool " << to_string(pool_type) << ", input " << to_string(input));
            ValidatedContext vc;
            Context& ctx = vc.ctx;
            const PoolConfig c = small_config(pool_type, 2, 2, 12, 4, 64);
            TestPool pool(ctx, c);
            DynamicKVCache cache(pool);
            ReferenceCache ref(2, 2, 12, 12);
            std::mt19937 rng(uint32_t(int(pool_type) * 3 + int(input)));
            for (uint32_t layer = 0; layer < 2; ++layer)
                for (uint32_t seq : {7u, 1u, 2u}) {
                    const auto shape = shape4(2, 2, seq, 12);
                    const size_t n = size_t(2) * 2 * seq * 12;
                    const auto k = awkward_values(n, rng), v = awkward_values(n, rng);
                    // The input tensor holds the values rounded to its dtype (from_host rounds
                    // on the host); the cache then rounds those to the pool's.
                    const Tensor tk = Tensor::from_host(ctx, k, shape, input);
                    const Tensor tv = Tensor::from_host(ctx, v, shape, input);
                    const auto lens = ref.lengths(layer);
                    std::vector<std::vector<int64_t>> pos(2);
                    for (uint32_t b = 0; b < 2; ++b)
                        for (uint32_t s = 0; s < seq; ++s)
                            pos[b].push_back((lens.empty() ? 0 : lens[b]) + s);
                    ref.update(rounded(rounded(k, input), pool_type),
                               rounded(rounded(v, input), pool_type), 2, seq, layer, pos);
                    if (seq == 2) {
                        cache.write(tk, tv, layer);  // the write without a gather converts too
                    } else {
                        const auto [gk, gv] = cache.update(tk, tv, layer);
                        CHECK(gk.dtype() == pool_type);
                        require_bits(gk.to_host(), ref.keys(layer), "update's keys");
                        require_bits(gv.to_host(), ref.values(layer), "update's values");
                    }
                    // The caller's tensors are untouched.
                    require_bits(tk.to_host(), rounded(k, input), "the input key");
                }
            for (uint32_t layer = 0; layer < 2; ++layer) {
                const auto got = cache.get(layer);
                REQUIRE(got.has_value());
                require_bits(got->first.to_host(), ref.keys(layer), "get's keys");
                require_bits(got->second.to_host(), ref.values(layer), "get's values");
            }
            REQUIRE(pool.check() == "");
        }
}

TEST_CASE("get, update and gather return the pool's compute dtype, quantized pools included",
          "[convert][gpu]") {
    // A float pool with another compute dtype converts its gathers (exactly when wider); a
    // quantized pool quantizes any float input and dequantizes to its compute dtype, exactly
    // as the reference quantizer.
    struct Case {
        DType pool, compute;
    };
    const Case cases[] = {
        {DType::F16, DType::F32},     {DType::BF16, DType::F32},    {DType::F32, DType::F16},
        {DType::Int8, DType::F32},    {DType::Int8, DType::F16},    {DType::Int8, DType::BF16},
        {DType::FP8E4M3, DType::F32}, {DType::FP8E4M3, DType::F16}, {DType::FP8E4M3, DType::BF16}};
    ValidatedContext vc;
    Context& ctx = vc.ctx;
    for (const Case& cs : cases)
        for (DType input : kDTypes) {
            INFO("pool " << to_string(cs.pool) << ", compute " << to_string(cs.compute)
                         << ", input " << to_string(input));
            PoolConfig c = small_config(cs.pool, 2, 2, 12, 4, 64);
            c.compute_dtype = cs.compute;
            TestPool pool(ctx, c);
            REQUIRE(pool.config().compute_dtype == cs.compute);
            auto expect = [&](const std::vector<float>& x) {
                const auto in = rounded(x, input);
                return is_quantized(cs.pool) ? quantize_rows(cs.pool, cs.compute, in, 12)
                                             : rounded(rounded(in, cs.pool), cs.compute);
            };
            {
                DynamicKVCache cache(pool);
                ReferenceCache ref(2, 2, 12, 12);
                std::mt19937 rng(uint32_t(int(cs.pool) * 7 + int(cs.compute) * 3 + int(input)));
                for (uint32_t layer = 0; layer < 2; ++layer)
                    for (uint32_t seq : {7u, 2u, 1u}) {
                        const auto shape = shape4(2, 2, seq, 12);
                        const size_t n = size_t(2) * 2 * seq * 12;
                        const auto k = awkward_values(n, rng), v = awkward_values(n, rng);
                        const Tensor tk = Tensor::from_host(ctx, k, shape, input);
                        const Tensor tv = Tensor::from_host(ctx, v, shape, input);
                        const auto lens = ref.lengths(layer);
                        std::vector<std::vector<int64_t>> pos(2);
                        for (uint32_t b = 0; b < 2; ++b)
                            for (uint32_t t = 0; t < seq; ++t)
                                pos[b].push_back((lens.empty() ? 0 : lens[b]) + t);
                        ref.update(expect(k), expect(v), 2, seq, layer, pos);
                        if (seq == 2) {
                            cache.write(tk, tv, layer);
                            continue;
                        }
                        const auto [gk, gv] = cache.update(tk, tv, layer);
                        CHECK(gk.dtype() == cs.compute);
                        CHECK(gv.dtype() == cs.compute);
                        require_bits(gk.to_host(), ref.keys(layer), "update's keys");
                        require_bits(gv.to_host(), ref.values(layer), "update's values");
                    }
                for (uint32_t layer = 0; layer < 2; ++layer) {
                    const auto got = cache.get(layer);
                    REQUIRE(got.has_value());
                    CHECK(got->first.dtype() == cs.compute);
                    CHECK(got->second.dtype() == cs.compute);
                    require_bits(got->first.to_host(), ref.keys(layer), "get's keys");
                    require_bits(got->second.to_host(), ref.values(layer), "get's values");
                }
            }
            {
                KVManager mgr(pool);
                const SeqId a = mgr.add_sequence(), b = mgr.add_sequence();
                const SeqId seqs[] = {a, b};
                const uint32_t counts[] = {5, 2};
                Step step = mgr.begin_step(seqs, counts);
                std::mt19937 rng(5);
                const auto k = awkward_values(7 * 2 * 12, rng), v = awkward_values(7 * 2 * 12, rng);
                mgr.write(step, 1, Tensor::from_host(ctx, k, {7, 2, 12}, input),
                          Tensor::from_host(ctx, v, {7, 2, 12}, input));
                mgr.end_step(std::move(step));
                const auto rk = expect(k), rv = expect(v);
                std::vector<float> wk, wv;  // sequence a: tokens 0..4, as (head, token, dim)
                for (size_t h = 0; h < 2; ++h)
                    for (size_t t = 0; t < 5; ++t)
                        for (size_t d = 0; d < 12; ++d) {
                            wk.push_back(rk[(t * 2 + h) * 12 + d]);
                            wv.push_back(rv[(t * 2 + h) * 12 + d]);
                        }
                const auto [gk, gv] = mgr.gather(a, 1);
                CHECK(gk.dtype() == cs.compute);
                CHECK(gv.dtype() == cs.compute);
                require_bits(gk.to_host(), wk, "gathered keys");
                require_bits(gv.to_host(), wv, "gathered values");
            }
            REQUIRE(pool.check() == "");
            REQUIRE(pool.stats().used_blocks == 0);
        }
}

TEST_CASE("converting writes of an odd element count use 16-bit element access", "[convert][gpu]") {
    ValidatedContext vc;
    Context& ctx = vc.ctx;
    if (!detail::Access::device(ctx).has_16bit_storage()) {
        SUCCEED("the device lacks storageBuffer16BitAccess (such a write is Unsupported)");
        return;
    }
    for (DType pool_type : kDTypes)
        for (DType input : kDTypes) {
            if (dtype_size(pool_type) == 4 && dtype_size(input) == 4) continue;
            INFO("pool " << to_string(pool_type) << ", input " << to_string(input));
            // head_dim 5: (1, 1, 3, 5) holds 15 elements.
            TestPool pool(ctx, small_config(pool_type, 1, 1, 5, 4, 16));
            DynamicKVCache cache(pool);
            std::mt19937 rng(1);
            const auto k = awkward_values(15, rng), v = awkward_values(15, rng);
            const auto [gk, gv] = cache.update(Tensor::from_host(ctx, k, {1, 1, 3, 5}, input),
                                               Tensor::from_host(ctx, v, {1, 1, 3, 5}, input), 0);
            require_bits(gk.to_host(), rounded(rounded(k, input), pool_type), "keys");
            require_bits(gv.to_host(), rounded(rounded(v, input), pool_type), "values");
        }
}

TEST_CASE("a converting update that runs out of memory changes nothing", "[convert][errors][gpu]") {
    ValidatedContext vc;
    Context& ctx = vc.ctx;
    TestPool pool(ctx, small_config(DType::F16, 1, 2, 8, 4, 32));
    DynamicKVCache cache(pool);
    std::mt19937 rng(4);
    const auto shape = shape4(2, 2, 3, 8);
    const auto k = awkward_values(96, rng), v = awkward_values(96, rng);
    cache.update(Tensor::from_host(ctx, k, shape, DType::BF16),
                 Tensor::from_host(ctx, v, shape, DType::BF16), 0);
    const std::vector<float> k1(k.begin(), k.begin() + 32), v1(v.begin(), v.begin() + 32);
    const Tensor tk = Tensor::from_host(ctx, k1, shape4(2, 2, 1, 8), DType::F32);
    const Tensor tv = Tensor::from_host(ctx, v1, shape4(2, 2, 1, 8), DType::F32);
    detail::Device& dev = detail::Access::device(ctx);
    // Tensors made by the update: the converted K, the converted V, then the K and V it
    // returns. Failing each in turn leaves the cache as it was.
    for (int64_t after = 0; after < 4; ++after) {
        INFO("tensor allocation " << after << " fails");
        require_rejected(cache, ErrorCode::Vulkan, "out of memory (injected)", [&] {
            dev.fail_allocations(detail::MemoryKind::Tensor, after);
            try {
                cache.update(tk, tv, 0);
            } catch (...) {
                dev.fail_allocations(detail::MemoryKind::Tensor, -1);
                throw;
            }
            dev.fail_allocations(detail::MemoryKind::Tensor, -1);
        });
    }
    const auto [gk, gv] = cache.update(tk, tv, 0);  // memory back: appended once
    CHECK(cache.get_seq_length(0) == 4);
    const std::vector<float> first = rounded(rounded(k, DType::BF16), DType::F16);
    const auto got = gk.to_host();
    // Row 0: its first token from the first update, its fourth the f32 key's first row.
    for (size_t h = 0; h < 2; ++h)
        for (size_t d = 0; d < 8; ++d) {
            CHECK(std::bit_cast<uint32_t>(got[(h * 4 + 0) * 8 + d]) ==
                  std::bit_cast<uint32_t>(first[(h * 3 + 0) * 8 + d]));
            CHECK(std::bit_cast<uint32_t>(got[(h * 4 + 3) * 8 + d]) ==
                  std::bit_cast<uint32_t>(round_to(DType::F16, k1[h * 8 + d])));
        }
}

TEST_CASE("cached_attention takes a query of any float dtype, converted to the pool's",
          "[convert][attention][gpu]") {
    for (DType pool_type : kDTypes)
        for (DType input : kDTypes) {
            INFO("pool " << to_string(pool_type) << ", query " << to_string(input));
            ValidatedContext vc;
            Context& ctx = vc.ctx;
            TestPool pool(ctx, small_config(pool_type, 1, 2, 8, 4, 32));
            DynamicKVCache cache(pool);
            std::mt19937 rng(8);
            const auto kv = random_values(2 * 2 * 9 * 8, rng, pool_type);
            const auto kv_shape = shape4(2, 2, 9, 8);
            cache.update(Tensor::from_host(ctx, kv, kv_shape, pool_type),
                         Tensor::from_host(ctx, kv, kv_shape, pool_type), 0);
            std::normal_distribution<float> dist(0.0f, 1.0f);
            std::vector<float> q(2 * 4 * 8);
            for (float& x : q)
                x = dist(rng);
            const auto q_shape = shape4(2, 4, 1, 8);
            const Tensor got = cache.cached_attention(Tensor::from_host(ctx, q, q_shape, input), 0);
            const Tensor want = cache.cached_attention(
                Tensor::from_host(ctx, rounded(rounded(q, input), pool_type), q_shape, pool_type),
                0);
            CHECK(got.dtype() == pool_type);
            require_bits(got.to_host(), want.to_host(), "attention");
        }
}

TEST_CASE("KVManager writes and attention take any float dtype, converted to the pool's",
          "[convert][manager][gpu]") {
    for (DType pool_type : kDTypes)
        for (DType input : kDTypes) {
            INFO("pool " << to_string(pool_type) << ", input " << to_string(input));
            ValidatedContext vc;
            Context& ctx = vc.ctx;
            TestPool pool(ctx, small_config(pool_type, 1, 2, 8, 4, 32));
            KVManager mgr(pool);
            const SeqId a = mgr.add_sequence(), b = mgr.add_sequence();
            const SeqId seqs[] = {a, b};
            const uint32_t counts[] = {5, 2};
            Step step = mgr.begin_step(seqs, counts);
            std::mt19937 rng(6);
            const auto k = awkward_values(7 * 2 * 8, rng), v = awkward_values(7 * 2 * 8, rng);
            mgr.write(step, 0, Tensor::from_host(ctx, k, {7, 2, 8}, input),
                      Tensor::from_host(ctx, v, {7, 2, 8}, input));
            // Sequence a holds tokens 0..4 of the packed (token, head, dim) input, as
            // (head, token, dim).
            const auto [gk, gv] = mgr.gather(a, 0);
            const auto rk = rounded(rounded(k, input), pool_type);
            const auto rv = rounded(rounded(v, input), pool_type);
            std::vector<float> wk, wv;
            for (size_t h = 0; h < 2; ++h)
                for (size_t t = 0; t < 5; ++t)
                    for (size_t d = 0; d < 8; ++d) {
                        wk.push_back(rk[(t * 2 + h) * 8 + d]);
                        wv.push_back(rv[(t * 2 + h) * 8 + d]);
                    }
            require_bits(gk.to_host(), wk, "gathered keys");
            require_bits(gv.to_host(), wv, "gathered values");
            // Attention with a query of the input's dtype equals one already in the pool's.
            std::vector<float> q(7 * 4 * 8);
            std::normal_distribution<float> dist(0.0f, 1.0f);
            for (float& x : q)
                x = dist(rng);
            const Tensor got = mgr.attention(step, 0, Tensor::from_host(ctx, q, {7, 4, 8}, input));
            const Tensor want =
                mgr.attention(step, 0,
                              Tensor::from_host(ctx, rounded(rounded(q, input), pool_type),
                                                {7, 4, 8}, pool_type));
            require_bits(got.to_host(), want.to_host(), "attention");
            mgr.end_step(std::move(step));
        }
}
