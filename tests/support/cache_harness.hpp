// CacheHarness: one paged cache on the GPU and the CPU reference, driven with the same
// operations; check() compares everything the API exposes, bit for bit. A quantized pool
// (Int8, FP8E4M3) is written with tensors in its compute dtype; the reference then holds what
// the pages store, dequantized in f32 (reference_quant.hpp), and what the cache returns is that
// rounded to the compute dtype.
#pragma once

#include <functional>
#include <memory>
#include <sstream>

#include "reference_cache.hpp"
#include "reference_quant.hpp"
#include "test_support.hpp"

namespace pagedkv::test {

struct CacheHarness {
    Context& ctx;
    BlockPool& pool;
    KVCache& cache;
    ReferenceCache ref;
    // With keep_inputs, the K/V as written (before a quantized pool's quantization), kept by
    // write() and append() only: a test that sets it (page-byte checks) mirrors its other
    // operations (crop, select, ...) on it too.
    bool keep_inputs = false;
    ReferenceCache inputs;
    std::mt19937 rng;
    std::ostringstream trace;  // the operations so far, printed when a check fails

    CacheHarness(Context& c, BlockPool& p, KVCache& k, uint32_t seed)
        : ctx(c),
          pool(p),
          cache(k),
          ref(p.config().num_layers, p.config().num_kv_heads, p.config().head_dim,
              p.config().v_head_dim),
          inputs(ref),
          rng(seed) {}

    struct KV {
        std::vector<float> k, v;  // what the pages hold (dequantized in f32 for a quantized pool)
        std::vector<float> k_in, v_in;  // the input, exact in tk / tv's dtype
        Tensor tk, tv;
    };
    // Random K/V for a write (in input_dtype) and, in k / v, what the pool keeps of them (for a
    // quantized pool the reference quantizer's values in f32: rows are whole (token, head)
    // vectors, so per-row quantization commutes with every cache operation).
    KV make_kv(uint32_t batch, uint32_t seq) {
        const PoolConfig& c = pool.config();
        const DType in = input_dtype(c);  // the pool's, or a quantized pool's compute dtype
        KV kv;
        kv.k_in = random_values(size_t(batch) * c.num_kv_heads * seq * c.head_dim, rng, in);
        kv.v_in = random_values(size_t(batch) * c.num_kv_heads * seq * c.v_head_dim, rng, in);
        kv.tk = Tensor::from_host(ctx, kv.k_in, shape4(batch, c.num_kv_heads, seq, c.head_dim), in);
        kv.tv =
            Tensor::from_host(ctx, kv.v_in, shape4(batch, c.num_kv_heads, seq, c.v_head_dim), in);
        kv.k = kv.k_in;
        kv.v = kv.v_in;
        if (is_quantized(c.dtype)) {
            kv.k = quantize_rows(c.dtype, DType::F32, kv.k_in, c.head_dim);
            kv.v = quantize_rows(c.dtype, DType::F32, kv.v_in, c.v_head_dim);
        }
        return kv;
    }

    // What the reference does after each update of a layer (a sliding window's trim).
    std::function<void(uint32_t)> after_update = [](uint32_t) {};

    // Appends seq tokens to every row of a layer and checks what update returned.
    void append(uint32_t batch, uint32_t seq, uint32_t layer) {
        write(batch, seq, layer, CachePosition{}, {});
    }

    // Writes seq tokens per row at cache_position; pos spells the positions out again for the
    // reference (the oracle does not share the library's position logic). Empty pos: append.
    void write(uint32_t batch, uint32_t seq, uint32_t layer, const CachePosition& cp,
               std::vector<std::vector<int64_t>> pos) {
        if (pos.empty()) {
            const auto lens = ref.lengths(layer);
            pos.resize(batch);
            for (uint32_t b = 0; b < batch; ++b)
                for (uint32_t s = 0; s < seq; ++s)
                    pos[b].push_back((lens.empty() ? 0 : lens[b]) + s);
        }
        trace << "update(batch=" << batch << ", seq=" << seq << ", layer=" << layer << ", row 0 at "
              << (seq ? pos[0][0] : -1) << ")\n";
        KV kv = make_kv(batch, seq);
        auto [k, v] = cache.update(kv.tk, kv.tv, layer, cp);
        ref.update(kv.k, kv.v, batch, seq, layer, pos);
        if (keep_inputs) inputs.update(kv.k_in, kv.v_in, batch, seq, layer, pos);
        after_update(layer);
        compare(k, v, layer, "update result");
    }

    void compare(const Tensor& k, const Tensor& v, uint32_t layer, const char* what) {
        INFO(what << " of layer " << layer << "; operations so far:\n" << trace.str());
        const PoolConfig& c = pool.config();
        REQUIRE(k.shape() ==
                shape4(ref.batch(), c.num_kv_heads, uint32_t(ref.seq_length(layer)), c.head_dim));
        REQUIRE(v.shape() ==
                shape4(ref.batch(), c.num_kv_heads, uint32_t(ref.seq_length(layer)), c.v_head_dim));
        const auto gk = k.to_host(), gv = v.to_host();
        auto wk = ref.keys(layer), wv = ref.values(layer);
        if (is_quantized(c.dtype) || *c.compute_dtype != c.dtype)  // returned in compute dtype
            for (auto* w : {&wk, &wv})
                for (float& x : *w)
                    x = round_to(*c.compute_dtype, x);
        INFO("K first difference: " << first_difference(gk, wk));
        REQUIRE(bit_equal(gk, wk));
        INFO("V first difference: " << first_difference(gv, wv));
        REQUIRE(bit_equal(gv, wv));
    }

    // Everything observable: lengths, get() of every layer, and the pool's invariants.
    void check() {
        INFO("operations so far:\n" << trace.str());
        REQUIRE(pool.check() == "");
        for (uint32_t l = 0; l < pool.config().num_layers; ++l) {
            REQUIRE(cache.seq_lengths(l) == ref.lengths(l));
            REQUIRE(cache.get_seq_length(l) == ref.seq_length(l));
            auto got = cache.get(l);
            REQUIRE(got.has_value() == (ref.seq_length(l) > 0));
            if (got) compare(got->first, got->second, l, "get");
        }
    }
};

}  // namespace pagedkv::test
