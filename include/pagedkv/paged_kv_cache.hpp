// PagedKVCache: the KVCache implementation shared by every cache kind. Each batch row owns a
// block table into the pool; update() turns positions into page slots, allocates (all or
// nothing), copies shared pages before writing them, and records one scatter and one gather.
#pragma once

#include <memory>
#include <string>

#include "pagedkv/block_pool.hpp"
#include "pagedkv/export.h"
#include "pagedkv/kv_cache.hpp"
#include "pagedkv/paged_view.hpp"

namespace pagedkv {

namespace detail {
struct CacheState;
class CachePolicy;
struct UpdatePlan;
struct Access;
}  // namespace detail

class PAGEDKV_API PagedKVCache : public KVCache {
  public:
    ~PagedKVCache() override;
    PagedKVCache(const PagedKVCache&) = delete;
    PagedKVCache& operator=(const PagedKVCache&) = delete;

    std::pair<Tensor, Tensor> update(const Tensor& key, const Tensor& value, uint32_t layer_idx,
                                     const CachePosition& cache_position = {}) override;
    // update() without the gather: the new tokens go into pages and nothing is returned (for
    // runtimes whose attention kernels read pages directly). Same checks and errors.
    void write(const Tensor& key, const Tensor& value, uint32_t layer_idx,
               const CachePosition& cache_position = {});
    std::optional<std::pair<Tensor, Tensor>> get(uint32_t layer_idx) const override;
    int64_t get_seq_length(uint32_t layer_idx = 0) const override;
    std::vector<int64_t> seq_lengths(uint32_t layer_idx = 0) const override;
    uint32_t batch_size() const override;

    void reorder_cache(std::span<const int32_t> beam_idx) override;
    void batch_select_indices(std::span<const int32_t> indices) override;
    void batch_repeat_interleave(uint32_t repeats) override;
    void crop(int64_t max_length) override;
    void truncate(int64_t length) override;
    void reset() override;

    // Puts row other_row of another cache over the same pool into batch slot `slot` of this
    // one (slot == batch_size() appends a row). Shares the row's pages instead of copying them:
    // a request prefilled alone joins a running batch without a copy (continuous batching).
    void insert(const KVCache& other, uint32_t other_row, uint32_t slot);

    // One layer's pages and a device-side CSR block table, for a runtime's own attention
    // kernels (see PagedView). Rows without tokens in the layer have no pages in the view.
    PagedView paged_view(uint32_t layer_idx) const;

    // Decode attention straight from the pages (shaders/kernels/paged_attention.comp): query is
    // (batch, q_heads, 1, head_dim) of any float dtype (converted to the pool's, or for a
    // quantized pool to its compute dtype), q_heads a multiple of the pool's kv heads (GQA:
    // query head h reads kv head h / (q_heads / kv_heads)). Each row's query attends to every
    // token the row holds in this layer; returns softmax(q k^T * scale) v as
    // (batch, q_heads, 1, v_head_dim) in the pool's compute dtype, zeros for a row without
    // tokens. scale <= 0 means 1 / sqrt(head_dim). Accumulates in f32; quantized pages (Int8,
    // FP8E4M3) are read directly, each score and value scaled by its row's scale.
    Tensor cached_attention(const Tensor& query, uint32_t layer_idx, float scale = 0.0f) const;

    // The pool; InvalidArgument when it was destroyed before this cache (a misuse).
    BlockPool& pool() const;
    // The pages of one row, in logical order (for inspection and tests).
    std::vector<uint32_t> block_table(uint32_t row) const;
    // Pages this cache references (shared pages counted once per cache).
    uint64_t pages_held() const;

  protected:
    // policy: the cache kind (cache/manager/cache_policy.hpp; the kinds implement it in
    // cache/kinds/), fixed for the cache's life.
    PAGEDKV_LOCAL PagedKVCache(BlockPool& pool, std::unique_ptr<const detail::CachePolicy> policy);

    // Drops the first n tokens of one layer's row (no bytes move: the row's start advances).
    void drop_front(uint32_t layer, uint32_t row, int64_t n);
    // Returns pages no layer of the row reaches any more to the pool.
    void trim_pages(uint32_t row);

    std::unique_ptr<detail::CacheState> state_;

  private:
    friend class EncoderDecoderCache;  // checks both of its caches before changing either
    friend struct detail::Access;

    // update() (out set: the layer's K/V are gathered into it) and write(); op names the call
    // in error messages.
    void write_rows(const Tensor& key, const Tensor& value, uint32_t layer,
                    const CachePosition& cache_position, const char* op,
                    std::pair<Tensor, Tensor>* out);
    // Commits a plan of plan_update (cache/manager/update_plan.hpp): pages, lengths, the scatter.
    PAGEDKV_LOCAL void apply(detail::UpdatePlan& plan, const Tensor& key, const Tensor& value);
    // Tensors the pages gather into (the compute dtype, or the pool's for unquantized pages).
    std::pair<Tensor, Tensor> empty_kv(uint32_t batch, int64_t tokens) const;
    std::pair<Tensor, Tensor> gather(uint32_t layer) const;
    void gather_into(uint32_t layer, std::pair<Tensor, Tensor>& kv) const;
    // The old row of each new row for reorder_cache / batch_select_indices (negative indices
    // count from the end, as in Python) or batch_repeat_interleave; throws, changing nothing,
    // when the cache would refuse them.
    std::vector<int32_t> rows_for_select(std::span<const int32_t> indices, const char* op) const;
    std::vector<int32_t> rows_for_reorder(std::span<const int32_t> beam_idx) const;
    std::vector<int32_t> rows_for_repeat(uint32_t repeats) const;
    // Makes the rows those old rows (checked by rows_for_*).
    void select_rows(std::span<const int32_t> rows);
    void select_rows_by_copy(std::span<const int32_t> rows);
    void compact_rows(std::pair<Tensor, Tensor>& scratch);
    // Copies tokens of one layer between page slots (both K and V), through scratch tensors of
    // shape (1, kv_heads, >= from.size(), dim), allocated before the caller changed anything.
    void move_tokens(uint32_t layer, std::span<const uint32_t> from, std::span<const uint32_t> to,
                     std::pair<Tensor, Tensor>& scratch);
};

}  // namespace pagedkv
