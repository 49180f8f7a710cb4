#include "pagedkv/encoder_decoder_cache.hpp"

#include <fmt/format.h>

#include <optional>

#include "cache/manager/cache_state.hpp"
#include "pagedkv/dynamic_cache.hpp"
#include "pagedkv/error.hpp"

namespace pagedkv {

EncoderDecoderCache::EncoderDecoderCache(BlockPool& pool, std::unique_ptr<KVCache> self,
                                         std::unique_ptr<KVCache> cross)
    : self_(self ? std::move(self) : std::make_unique<DynamicKVCache>(pool)),
      cross_(cross ? std::move(cross) : std::make_unique<DynamicKVCache>(pool)) {
    // A cross cache that already holds layers (rebuilt after a restore) counts as written, as
    // in Hugging Face: the runtime must not write the encoder's K/V a second time.
    for (uint32_t layer = 0; layer < pool.config().num_layers; ++layer)
        if (cross_->get_seq_length(layer) > 0) is_updated_[layer] = true;
}

std::pair<Tensor, Tensor> EncoderDecoderCache::update(const Tensor& key, const Tensor& value,
                                                      uint32_t layer_idx,
                                                      const CachePosition& cache_position,
                                                      bool is_cross_attention) {
    if (!is_cross_attention) return self_->update(key, value, layer_idx, cache_position);
    auto out = cross_->update(key, value, layer_idx, cache_position);
    is_updated_[layer_idx] = true;
    return out;
}

std::optional<std::pair<Tensor, Tensor>> EncoderDecoderCache::get(uint32_t layer_idx,
                                                                  bool is_cross_attention) const {
    return (is_cross_attention ? cross_ : self_)->get(layer_idx);
}

int64_t EncoderDecoderCache::get_seq_length(uint32_t layer_idx, bool is_cross_attention) const {
    return (is_cross_attention ? cross_ : self_)->get_seq_length(layer_idx);
}

void EncoderDecoderCache::reset() {
    self_->reset();
    cross_->reset();
    is_updated_.clear();
}

template <class Rows, class Apply>
void EncoderDecoderCache::both(bool skip_empty, Rows&& rows_of, Apply&& apply) {
    // Every part is checked before either changes. The library's caches say what they would
    // refuse without changing; a cache of the caller's own cannot be asked, so it goes first
    // (if it refuses, nothing has changed) and the checked ones after it.
    struct Part {
        KVCache* cache;
        PagedKVCache* paged;  // null: a cache of the caller's own
        std::optional<detail::CacheLock> lock;
        bool active = false;  // takes part (skip_empty leaves caches without rows alone)
        std::vector<int32_t> rows;
    };
    Part parts[2] = {{self_.get(), dynamic_cast<PagedKVCache*>(self_.get()), {}, false, {}},
                     {cross_.get(), dynamic_cast<PagedKVCache*>(cross_.get()), {}, false, {}}};
    for (Part& p : parts) {
        if (p.paged) p.lock.emplace(*p.paged->state_);
        p.active = !skip_empty || p.cache->batch_size() != 0;
        if (p.active && p.paged) p.rows = rows_of(*p.paged);
    }
    for (Part& p : parts)
        if (p.active && !p.paged) apply(*p.cache);
    for (Part& p : parts)
        if (p.active && p.paged) p.paged->select_rows(p.rows);
}

void EncoderDecoderCache::reorder_cache(std::span<const int32_t> beam_idx) {
    both(
        true, [&](const PagedKVCache& c) { return c.rows_for_reorder(beam_idx); },
        [&](KVCache& c) { c.reorder_cache(beam_idx); });
}

void EncoderDecoderCache::batch_select_indices(std::span<const int32_t> indices) {
    both(
        true,
        [&](const PagedKVCache& c) { return c.rows_for_select(indices, "batch_select_indices"); },
        [&](KVCache& c) { c.batch_select_indices(indices); });
}

void EncoderDecoderCache::batch_repeat_interleave(uint32_t repeats) {
    both(
        false, [&](const PagedKVCache& c) { return c.rows_for_repeat(repeats); },
        [&](KVCache& c) { c.batch_repeat_interleave(repeats); });
}

void EncoderDecoderCache::crop(int64_t max_length) {
    self_->crop(max_length);
}
void EncoderDecoderCache::truncate(int64_t length) {
    self_->truncate(length);
}

}  // namespace pagedkv
