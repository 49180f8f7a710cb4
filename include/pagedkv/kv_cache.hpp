// KVCache: the interface every cache implements (dynamic, static, sliding window), and
// CachePosition, which says where update() writes the new tokens.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "pagedkv/export.h"
#include "pagedkv/tensor.hpp"

namespace pagedkv {

// Where the new tokens of an update go. Implicitly made from nothing (append after each row's
// last token), an int64_t (0-D: the first new token's position, the rest follow), a 1-D list
// (one position per new token, shared by every row) or a 2-D list (batch x seq_len).
// Writing an existing position overwrites it; writing past the end grows the row.
class PAGEDKV_API CachePosition {
  public:
    enum class Kind { Append, Scalar, Vector, Matrix };

    CachePosition() = default;
    CachePosition(int64_t position) : kind_(Kind::Scalar), scalar_(position) {}
    CachePosition(int position) : CachePosition(int64_t(position)) {}
    CachePosition(std::vector<int64_t> positions)
        : kind_(Kind::Vector), vector_(std::move(positions)) {}
    CachePosition(std::vector<std::vector<int64_t>> positions)
        : kind_(Kind::Matrix), matrix_(std::move(positions)) {}

    Kind kind() const noexcept { return kind_; }
    int64_t scalar() const noexcept { return scalar_; }
    const std::vector<int64_t>& vector() const noexcept { return vector_; }
    const std::vector<std::vector<int64_t>>& matrix() const noexcept { return matrix_; }

  private:
    Kind kind_ = Kind::Append;
    int64_t scalar_ = 0;
    std::vector<int64_t> vector_;
    std::vector<std::vector<int64_t>> matrix_;
};

class PAGEDKV_API KVCache {
  public:
    virtual ~KVCache() = default;

    // Writes key/value (batch, kv_heads, seq_len, head_dim) of one layer and returns that
    // layer's whole K and V, (batch, kv_heads, get_seq_length(layer_idx), head_dim). Rows
    // shorter than the longest are zero-padded at the end.
    virtual std::pair<Tensor, Tensor> update(const Tensor& key, const Tensor& value,
                                             uint32_t layer_idx,
                                             const CachePosition& cache_position = {}) = 0;
    // The layer's K and V, or nullopt when the layer holds no token.
    virtual std::optional<std::pair<Tensor, Tensor>> get(uint32_t layer_idx) const = 0;
    // Tokens in the longest row of the layer.
    virtual int64_t get_seq_length(uint32_t layer_idx = 0) const = 0;
    virtual std::vector<int64_t> seq_lengths(uint32_t layer_idx = 0) const = 0;
    // Rows in the batch (0 before the first update).
    virtual uint32_t batch_size() const = 0;

    // Row i becomes old row beam_idx[i]. Copies no K/V: rows share pages. An index may be
    // negative, counting from the end as in Python (-1 is the last row).
    virtual void reorder_cache(std::span<const int32_t> beam_idx) = 0;
    // Keeps those rows, in that order (rows may repeat; negative indices count from the end).
    // Copies no K/V.
    virtual void batch_select_indices(std::span<const int32_t> indices) = 0;
    // B -> B * repeats; row r * repeats + j is old row r. Copies no K/V.
    virtual void batch_repeat_interleave(uint32_t repeats) = 0;
    // Keeps only the most recent max_length tokens of each row; positions renumber from 0.
    virtual void crop(int64_t max_length) = 0;
    // Keeps the first length tokens; a negative length removes -length tokens from the end.
    virtual void truncate(int64_t length) = 0;
    // Empties the cache and returns every page to the pool.
    virtual void reset() = 0;
};

}  // namespace pagedkv
