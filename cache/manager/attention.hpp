// Attention of one query token per row over contiguous K/V (what get() returns), by the same
// shader and arithmetic as PagedKVCache::cached_attention: the baseline pagedkv-bench compares
// paged attention against (gather, then this), and a cross-check in the tests.
#pragma once

#include <span>

#include "pagedkv/tensor.hpp"

namespace pagedkv::detail {

// query (batch, q_heads, 1, head_dim); k (batch, kv_heads, len, head_dim) and v likewise;
// row b attends to its first lengths[b] tokens. scale <= 0: 1 / sqrt(head_dim).
Tensor contiguous_attention(const Tensor& query, const Tensor& k, const Tensor& v,
                            std::span<const int64_t> lengths, float scale = 0.0f);

}  // namespace pagedkv::detail
