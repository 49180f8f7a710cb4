// ReferenceCache: the correctness oracle. The obvious implementation of the API.md cache
// semantics: contiguous per-row token arrays on the CPU, no pages, no sharing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace pagedkv::test {

class ReferenceCache {
  public:
    ReferenceCache(uint32_t layers, uint32_t heads, uint32_t head_dim, uint32_t v_head_dim)
        : layers_(layers), heads_(heads), dk_(head_dim), dv_(v_head_dim) {}

    // key (B, H, S, Dk) and value (B, H, S, Dv) as flat floats; pos[b][s] the positions.
    void update(const std::vector<float>& key, const std::vector<float>& value, uint32_t batch,
                uint32_t seq, uint32_t layer, const std::vector<std::vector<int64_t>>& pos) {
        if (batch_ == 0) {
            batch_ = batch;
            rows_.assign(layers_, std::vector<Row>(batch));
        }
        for (uint32_t b = 0; b < batch; ++b)
            for (uint32_t s = 0; s < seq; ++s) {
                Row& r = rows_[layer][b];
                const size_t p = size_t(pos[b][s]);
                if (r.k.size() <= p) {
                    r.k.resize(p + 1, std::vector<float>(size_t(heads_) * dk_, 0.0f));
                    r.v.resize(p + 1, std::vector<float>(size_t(heads_) * dv_, 0.0f));
                }
                for (uint32_t h = 0; h < heads_; ++h) {
                    const size_t src = (size_t(b) * heads_ + h) * seq + s;
                    std::copy_n(&key[src * dk_], dk_, &r.k[p][size_t(h) * dk_]);
                    std::copy_n(&value[src * dv_], dv_, &r.v[p][size_t(h) * dv_]);
                }
            }
    }

    // (B, H, L, D) with L the longest row; shorter rows zero-padded.
    std::vector<float> keys(uint32_t layer) const { return flat(layer, false); }
    std::vector<float> values(uint32_t layer) const { return flat(layer, true); }

    int64_t seq_length(uint32_t layer) const {
        int64_t n = 0;
        for (int64_t l : lengths(layer))
            n = std::max(n, l);
        return n;
    }
    std::vector<int64_t> lengths(uint32_t layer) const {
        std::vector<int64_t> out;
        if (batch_ == 0) return out;
        for (const Row& r : rows_[layer])
            out.push_back(int64_t(r.k.size()));
        return out;
    }
    uint32_t batch() const { return batch_; }
    // A cache whose rows exist before the first update (a static cache).
    void set_batch(uint32_t batch) {
        batch_ = batch;
        rows_.assign(layers_, std::vector<Row>(batch));
    }
    // Keeps the last `window` tokens of every row of one layer (a sliding window).
    void keep_last(uint32_t layer, int64_t window) {
        for (Row& r : rows_[layer])
            if (int64_t(r.k.size()) > window) {
                const auto drop = std::ptrdiff_t(int64_t(r.k.size()) - window);
                r.k.erase(r.k.begin(), r.k.begin() + drop);
                r.v.erase(r.v.begin(), r.v.begin() + drop);
            }
    }
    // Row `row` of another reference into slot `slot` (slot == batch appends).
    void insert(const ReferenceCache& other, uint32_t row, uint32_t slot) {
        if (batch_ == 0) rows_.assign(layers_, {});
        for (uint32_t l = 0; l < layers_; ++l) {
            if (slot == batch_)
                rows_[l].push_back(other.rows_[l][row]);
            else
                rows_[l][slot] = other.rows_[l][row];
        }
        if (slot == batch_) ++batch_;
    }

    void select(const std::vector<int32_t>& idx) {
        for (auto& layer : rows_) {
            std::vector<Row> next;
            for (int32_t i : idx)
                next.push_back(layer[size_t(i)]);
            layer = std::move(next);
        }
        batch_ = uint32_t(idx.size());
        if (batch_ == 0) reset();
    }
    void repeat_interleave(uint32_t r) {
        std::vector<int32_t> idx;
        for (uint32_t b = 0; b < batch_; ++b)
            for (uint32_t j = 0; j < r; ++j)
                idx.push_back(int32_t(b));
        select(idx);
    }
    void crop(int64_t max_length) {
        for (uint32_t l = 0; l < rows_.size(); ++l)
            keep_last(l, max_length);
    }
    void truncate(int64_t length) {
        for (auto& layer : rows_)
            for (Row& r : layer) {
                const int64_t n = int64_t(r.k.size());
                const int64_t keep =
                    length >= 0 ? std::min(n, length) : std::max<int64_t>(0, n + length);
                r.k.resize(size_t(keep));
                r.v.resize(size_t(keep));
            }
    }
    void reset() {
        rows_.clear();
        batch_ = 0;
    }
    // A static cache's reset: rows stay, emptied.
    void clear_rows() { set_batch(batch_); }

  private:
    struct Row {
        std::vector<std::vector<float>> k, v;  // [token][head * dim]
    };
    std::vector<float> flat(uint32_t layer, bool value) const {
        const uint32_t d = value ? dv_ : dk_;
        const size_t L = size_t(seq_length(layer));
        std::vector<float> out(size_t(batch_) * heads_ * L * d, 0.0f);
        for (uint32_t b = 0; b < batch_; ++b) {
            const Row& r = rows_[layer][b];
            const auto& toks = value ? r.v : r.k;
            for (size_t t = 0; t < toks.size(); ++t)
                for (uint32_t h = 0; h < heads_; ++h)
                    std::copy_n(&toks[t][size_t(h) * d], d,
                                &out[((size_t(b) * heads_ + h) * L + t) * d]);
        }
        return out;
    }

    uint32_t layers_, heads_, dk_, dv_;
    uint32_t batch_ = 0;
    std::vector<std::vector<Row>> rows_;  // [layer][row]
};

}  // namespace pagedkv::test
