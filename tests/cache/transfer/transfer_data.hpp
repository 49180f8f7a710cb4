// Known K/V for the transfer tests: a sequence of n tokens written from a fixed seed, so that
// the process that prefills it and the process that imports it compute the same reference.
// No Catch2 here: the peer program (transfer_peer.cpp) uses it too.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "pagedkv/pagedkv.hpp"
#include "reference_quant.hpp"

namespace pagedkv::transfer_test {

constexpr uint32_t kLayers = 2, kHeads = 2, kDim = 8, kBlock = 4;

inline PoolConfig config(DType dtype, PageLayout layout, uint64_t blocks = 64) {
    PoolConfig c;
    c.num_layers = kLayers;
    c.num_kv_heads = kHeads;
    c.head_dim = kDim;
    c.block_size = kBlock;
    c.dtype = dtype;
    c.num_blocks = blocks;
    c.layout = layout;
    return c;
}

// The dtype written (and gathered): a float pool's own, a quantized pool's compute dtype.
inline DType io_dtype(const PoolConfig& resolved) {
    return *resolved.compute_dtype;
}

// (n, heads, dim) values of one layer's K (value = false) or V, exact in t.
inline std::vector<float> values(uint32_t seed, uint32_t layer, bool value, uint32_t n, DType t) {
    std::mt19937 rng(seed * 1000 + layer * 2 + (value ? 1 : 0));
    std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
    std::vector<float> out(size_t(n) * kHeads * kDim);
    for (float& x : out)
        x = round_to(t, dist(rng));
    return out;
}

inline std::vector<int32_t> token_ids(uint32_t seed, uint32_t n) {
    std::vector<int32_t> t(n);
    for (uint32_t i = 0; i < n; ++i)
        t[i] = int32_t(seed * 7919 + i * 31);
    return t;
}

// A new sequence of n tokens: a prefill of all but the last three, then three one-token
// decode steps (with their token ids, so that prefix caching registers the pages).
inline SeqId prefill(Context& ctx, KVManager& m, uint32_t n, uint32_t seed) {
    const PoolConfig& c = m.pool().config();
    const DType io = io_dtype(c);
    std::vector<std::vector<float>> k, v;
    for (uint32_t l = 0; l < kLayers; ++l) {
        k.push_back(values(seed, l, false, n, io));
        v.push_back(values(seed, l, true, n, io));
    }
    const std::vector<int32_t> ids = token_ids(seed, n);
    const SeqId id = m.add_sequence();
    const size_t row = size_t(kHeads) * kDim;
    uint32_t done = 0;
    while (done < n) {
        const uint32_t count = done == 0 && n > 3 ? n - 3 : 1;
        const SeqId seqs[] = {id};
        const std::span<const int32_t> tokens[] = {std::span(ids).subspan(done, count)};
        Step st = m.begin_step(seqs, tokens);
        for (uint32_t l = 0; l < kLayers; ++l) {
            const std::vector<int64_t> shape = {count, kHeads, kDim};
            m.write(
                st, l,
                Tensor::from_host(ctx, std::span(k[l]).subspan(done * row, count * row), shape, io),
                Tensor::from_host(ctx, std::span(v[l]).subspan(done * row, count * row), shape,
                                  io));
        }
        m.end_step(std::move(st));
        done += count;
    }
    return id;
}

// What gather returns for that sequence: (heads, n, dim), quantized values as the pool's
// quantizer leaves them.
inline std::vector<float> expected(const PoolConfig& c, uint32_t seed, uint32_t layer, bool value,
                                   uint32_t n) {
    const DType io = io_dtype(c);
    std::vector<float> x = values(seed, layer, value, n, io);
    if (is_quantized(c.dtype)) x = test::quantize_rows(c.dtype, io, x, kDim);
    std::vector<float> out(x.size());
    for (uint32_t t = 0; t < n; ++t)
        for (uint32_t h = 0; h < kHeads; ++h)
            std::memcpy(&out[(size_t(h) * n + t) * kDim], &x[(size_t(t) * kHeads + h) * kDim],
                        kDim * sizeof(float));
    return out;
}

// "" when the sequence holds n tokens whose K/V equal expected() bit for bit; else what differs.
inline std::string check(KVManager& m, SeqId id, uint32_t n, uint32_t seed) {
    if (m.length(id) != n)
        return "length " + std::to_string(m.length(id)) + ", want " + std::to_string(n);
    for (uint32_t l = 0; l < kLayers; ++l) {
        auto [k, v] = m.gather(id, l);
        const std::vector<float> got[] = {k.to_host(), v.to_host()};
        for (int value = 0; value < 2; ++value) {
            const std::vector<float> want = expected(m.pool().config(), seed, l, value != 0, n);
            if (got[value].size() != want.size())
                return "layer " + std::to_string(l) + ": size differs";
            for (size_t i = 0; i < want.size(); ++i)
                if (std::memcmp(&got[value][i], &want[i], sizeof(float)) != 0)
                    return "layer " + std::to_string(l) + (value ? " V" : " K") + " element " +
                           std::to_string(i) + ": got " + std::to_string(got[value][i]) +
                           ", want " + std::to_string(want[i]);
        }
    }
    return {};
}

}  // namespace pagedkv::transfer_test
