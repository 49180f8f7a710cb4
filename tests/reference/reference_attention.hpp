// reference_attention: decode attention on the CPU in double precision, the oracle that
// cached_attention is checked against (tests, and the demo's per-step check).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace pagedkv::test {

// softmax(q k^T * scale) v in double, row b over its first lengths[b] tokens; q is
// (B, Hq, 1, D), k/v (B, Hkv, L, D/Dv) padded; GQA: query head h reads kv head h / group.
inline std::vector<double> reference_attention(const std::vector<float>& q,
                                               const std::vector<float>& k,
                                               const std::vector<float>& v,
                                               const std::vector<int64_t>& lengths,
                                               uint32_t q_heads, uint32_t kv_heads, uint32_t d,
                                               uint32_t dv, float scale) {
    const size_t B = lengths.size();
    const size_t L = B ? k.size() / (B * kv_heads * d) : 0;
    std::vector<double> out(B * q_heads * dv, 0.0);
    for (size_t b = 0; b < B; ++b)
        for (uint32_t h = 0; h < q_heads; ++h) {
            const size_t g = h / (q_heads / kv_heads);
            const float* qr = &q[(b * q_heads + h) * d];
            std::vector<double> s(size_t(lengths[b]));
            double m = -INFINITY;
            for (size_t t = 0; t < s.size(); ++t) {
                const float* kr = &k[((b * kv_heads + g) * L + t) * d];
                double dot = 0;
                for (uint32_t i = 0; i < d; ++i)
                    dot += double(qr[i]) * double(scale) * double(kr[i]);
                s[t] = dot;
                m = std::max(m, dot);
            }
            double sum = 0;
            for (double& x : s)
                sum += (x = std::exp(x - m));
            for (size_t t = 0; t < s.size(); ++t)
                for (uint32_t i = 0; i < dv; ++i)
                    out[(b * q_heads + h) * dv + i] +=
                        s[t] / sum * double(v[((b * kv_heads + g) * L + t) * dv + i]);
        }
    return out;
}

}  // namespace pagedkv::test
