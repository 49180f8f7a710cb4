// EncoderDecoderCache: a self-attention cache and a cross-attention cache over one pool, for
// encoder-decoder models. The cross cache is written once per layer (the encoder's K/V) and
// kept across decode steps; is_updated() records which layers have it.
#pragma once

#include <map>
#include <memory>

#include "pagedkv/block_pool.hpp"
#include "pagedkv/export.h"
#include "pagedkv/kv_cache.hpp"

namespace pagedkv {

class PAGEDKV_API EncoderDecoderCache {
  public:
    // A missing cache is created as a DynamicKVCache over the pool.
    explicit EncoderDecoderCache(BlockPool& pool, std::unique_ptr<KVCache> self = nullptr,
                                 std::unique_ptr<KVCache> cross = nullptr);

    std::pair<Tensor, Tensor> update(const Tensor& key, const Tensor& value, uint32_t layer_idx,
                                     const CachePosition& cache_position = {},
                                     bool is_cross_attention = false);
    std::optional<std::pair<Tensor, Tensor>> get(uint32_t layer_idx,
                                                 bool is_cross_attention = false) const;
    int64_t get_seq_length(uint32_t layer_idx = 0, bool is_cross_attention = false) const;

    // Both caches, all or nothing (every part is checked before either changes; a cache of
    // the caller's own that is not a PagedKVCache is run first and must itself refuse cleanly).
    // Indices may be negative, counting from the end as in Python.
    void reset();
    void reorder_cache(std::span<const int32_t> beam_idx);
    void batch_select_indices(std::span<const int32_t> indices);
    void batch_repeat_interleave(uint32_t repeats);
    // The self-attention cache only (the encoder's K/V do not change while decoding).
    void crop(int64_t max_length);
    void truncate(int64_t length);

    // Layers whose cross-attention cache has been written (or held tokens when this cache was
    // made over it).
    std::map<uint32_t, bool>& is_updated() noexcept { return is_updated_; }

    KVCache& self_attention_cache() noexcept { return *self_; }
    KVCache& cross_attention_cache() noexcept { return *cross_; }

  private:
    // A batch operation on both caches, all or nothing: rows_of(cache) says which old rows a
    // library cache would keep (throwing, unchanged, when it would refuse); apply(cache) runs
    // the operation on a cache of the caller's own. skip_empty: leave caches without rows alone.
    template <class Rows, class Apply>
    void both(bool skip_empty, Rows&& rows_of, Apply&& apply);

    std::unique_ptr<KVCache> self_, cross_;
    std::map<uint32_t, bool> is_updated_;
};

}  // namespace pagedkv
