// ReferenceSequences: the obvious implementation of KVManager's semantics on the CPU: each
// sequence is a plain array of tokens per layer, each token kv_heads rows of K and V. The
// oracle of the manager's tests and of the serve demo's per-token check; ragged_attention is
// the oracle of a step's causal attention.
// For a quantized pool (Int8, FP8E4M3) write() takes what the pool keeps: the reference
// quantizer's values of the rows written (reference_quant.hpp quantize_rows; rows are whole
// (token, head) vectors, so quantizing them commutes with fork, truncate and steps).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

namespace pagedkv::test {

class ReferenceSequences {
  public:
    ReferenceSequences(uint32_t layers, uint32_t heads, uint32_t dim, uint32_t v_dim)
        : layers_(layers), heads_(heads), dim_(dim), v_dim_(v_dim) {}

    // Hybrid models: per layer, 0 for full attention or a sliding window of w tokens, whose
    // layer holds (keys, values) only the last w tokens (PoolConfig::layer_windows).
    void set_windows(std::vector<uint32_t> windows) { windows_ = std::move(windows); }
    // The first position a layer holds.
    int64_t first_held(uint64_t id, uint32_t layer) const {
        const int64_t n = length(id), w = windows_.empty() ? 0 : windows_[layer];
        return w > 0 && n > w ? n - w : 0;
    }

    void add(uint64_t id) { seqs_[id] = Seq{std::vector<Layer>(layers_)}; }
    void fork(uint64_t from, uint64_t to) { seqs_[to] = seqs_.at(from); }
    void free(uint64_t id) { seqs_.erase(id); }
    bool contains(uint64_t id) const { return seqs_.count(id) != 0; }
    void truncate(uint64_t id, int64_t length) {
        Seq& s = seqs_.at(id);
        const int64_t n = this->length(id);
        const int64_t keep = length >= 0 ? std::min(n, length) : std::max<int64_t>(0, n + length);
        for (Layer& l : s.layers) {
            l.k.resize(size_t(keep) * heads_ * dim_);
            l.v.resize(size_t(keep) * heads_ * v_dim_);
        }
        s.length = keep;
    }
    // A step: seqs[i] grows by counts[i] tokens (their K/V come with write()).
    void begin_step(const std::vector<uint64_t>& seqs, const std::vector<uint32_t>& counts) {
        for (size_t i = 0; i < seqs.size(); ++i)
            seqs_.at(seqs[i]).length += counts[i];
    }
    // Packed (total, heads, dim) K and V of one layer for the step's sequences, in order.
    void write(const std::vector<uint64_t>& seqs, const std::vector<uint32_t>& counts,
               uint32_t layer, const std::vector<float>& k, const std::vector<float>& v) {
        size_t tok = 0;
        for (size_t i = 0; i < seqs.size(); ++i) {
            Layer& l = seqs_.at(seqs[i]).layers[layer];
            for (uint32_t j = 0; j < counts[i]; ++j, ++tok) {
                l.k.insert(l.k.end(), k.begin() + long(tok * heads_ * dim_),
                           k.begin() + long((tok + 1) * heads_ * dim_));
                l.v.insert(l.v.end(), v.begin() + long(tok * heads_ * v_dim_),
                           v.begin() + long((tok + 1) * heads_ * v_dim_));
            }
        }
    }
    int64_t length(uint64_t id) const { return seqs_.at(id).length; }
    // (heads, length, dim): what KVManager::gather returns.
    std::vector<float> keys(uint64_t id, uint32_t layer) const {
        return head_major(id, layer, false);
    }
    std::vector<float> values(uint64_t id, uint32_t layer) const {
        return head_major(id, layer, true);
    }
    // Token-major (tokens, heads, dim) as stored.
    const std::vector<float>& raw_keys(uint64_t id, uint32_t layer) const {
        return seqs_.at(id).layers[layer].k;
    }
    const std::vector<float>& raw_values(uint64_t id, uint32_t layer) const {
        return seqs_.at(id).layers[layer].v;
    }
    std::vector<uint64_t> ids() const {
        std::vector<uint64_t> out;
        for (const auto& [id, s] : seqs_)
            out.push_back(id);
        return out;
    }

  private:
    struct Layer {
        std::vector<float> k, v;  // (tokens, heads, dim)
    };
    struct Seq {
        std::vector<Layer> layers;
        int64_t length = 0;
    };
    // The tokens the layer holds (from first_held), head-major.
    std::vector<float> head_major(uint64_t id, uint32_t layer, bool value) const {
        const Layer& l = seqs_.at(id).layers[layer];
        const uint32_t d = value ? v_dim_ : dim_;
        const std::vector<float>& src = value ? l.v : l.k;
        const size_t first = size_t(first_held(id, layer));
        const size_t n = src.size() / (size_t(heads_) * d) - first;
        std::vector<float> out(n * heads_ * d);
        for (size_t t = 0; t < n; ++t)
            for (uint32_t h = 0; h < heads_; ++h)
                for (uint32_t i = 0; i < d; ++i)
                    out[(h * n + t) * d + i] = src[((first + t) * heads_ + h) * d + i];
        return out;
    }
    uint32_t layers_, heads_, dim_, v_dim_;
    std::vector<uint32_t> windows_;
    std::map<uint64_t, Seq> seqs_;
};

// Causal attention of one new token in double: q (q_heads, dim) against tokens [from, n) of
// k/v stored token-major (tokens, kv_heads, dim / v_dim) (from > 0: a sliding window); GQA:
// query head h reads kv head h / (q_heads / kv_heads). Returns (q_heads, v_dim).
inline std::vector<double> causal_attention_row(const float* q, const std::vector<float>& k,
                                                const std::vector<float>& v, int64_t n,
                                                uint32_t q_heads, uint32_t kv_heads, uint32_t d,
                                                uint32_t dv, float scale, int64_t from = 0) {
    std::vector<double> out(size_t(q_heads) * dv, 0.0);
    for (uint32_t h = 0; h < q_heads; ++h) {
        const uint32_t g = h / (q_heads / kv_heads);
        std::vector<double> s(static_cast<size_t>(n - from));
        double m = -HUGE_VAL;
        for (int64_t t = from; t < n; ++t) {
            double dot = 0;
            for (uint32_t i = 0; i < d; ++i)
                dot += double(q[h * d + i]) * double(scale) *
                       double(k[(size_t(t) * kv_heads + g) * d + i]);
            s[size_t(t - from)] = dot;
            m = std::max(m, dot);
        }
        double sum = 0;
        for (double& x : s)
            sum += (x = std::exp(x - m));
        for (int64_t t = from; t < n; ++t)
            for (uint32_t i = 0; i < dv; ++i)
                out[h * dv + i] +=
                    s[size_t(t - from)] / sum * double(v[(size_t(t) * kv_heads + g) * dv + i]);
    }
    return out;
}

}  // namespace pagedkv::test
