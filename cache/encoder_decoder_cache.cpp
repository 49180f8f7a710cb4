#include "pagedkv/encoder_decoder_cache.hpp"

#include <fmt/format.h>

#include "pagedkv/dynamic_cache.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/static_cache.hpp"

namespace pagedkv {

EncoderDecoderCache::EncoderDecoderCache(BlockPool& pool, std::unique_ptr<KVCache> self,
                                         std::unique_ptr<KVCache> cross)
    : self_(self ? std::move(self) : std::make_unique<DynamicKVCache>(pool)),
      cross_(cross ? std::move(cross) : std::make_unique<DynamicKVCache>(pool)) {}

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

void EncoderDecoderCache::check_rows(std::span<const int32_t> indices, size_t rows,
                                     const char* op) const {
    for (const KVCache* c : {self_.get(), cross_.get()}) {
        const uint32_t batch = c->batch_size();
        if (batch == 0) continue;  // an empty cache has nothing to reorder
        for (size_t i = 0; i < indices.size(); ++i)
            if (indices[i] < 0 || uint32_t(indices[i]) >= batch)
                throw Error(
                    ErrorCode::InvalidArgument,
                    fmt::format("{}: index {} at position {} out of range, {} cache has "
                                "batch {}",
                                op, indices[i], i, c == self_.get() ? "self" : "cross", batch));
        if (auto* s = dynamic_cast<const StaticKVCache*>(c); s && rows > s->max_batch_size())
            throw Error(ErrorCode::CapacityExceeded,
                        fmt::format("{}: {} rows exceed the static cache's batch_size {}", op, rows,
                                    s->max_batch_size()));
    }
}

void EncoderDecoderCache::reorder_cache(std::span<const int32_t> beam_idx) {
    for (const KVCache* c : {self_.get(), cross_.get()})
        if (c->batch_size() != 0 && beam_idx.size() != c->batch_size())
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("reorder_cache: {} indices for a batch of {}", beam_idx.size(),
                                    c->batch_size()));
    check_rows(beam_idx, beam_idx.size(), "reorder_cache");
    if (self_->batch_size()) self_->reorder_cache(beam_idx);
    if (cross_->batch_size()) cross_->reorder_cache(beam_idx);
}

void EncoderDecoderCache::batch_select_indices(std::span<const int32_t> indices) {
    check_rows(indices, indices.size(), "batch_select_indices");
    if (self_->batch_size()) self_->batch_select_indices(indices);
    if (cross_->batch_size()) cross_->batch_select_indices(indices);
}

void EncoderDecoderCache::batch_repeat_interleave(uint32_t repeats) {
    if (repeats == 0)
        throw Error(ErrorCode::InvalidArgument,
                    "batch_repeat_interleave: repeats must be at least 1");
    for (const KVCache* c : {self_.get(), cross_.get()})
        if (auto* s = dynamic_cast<const StaticKVCache*>(c);
            s && uint64_t(c->batch_size()) * repeats > s->max_batch_size())
            throw Error(ErrorCode::CapacityExceeded,
                        fmt::format("batch_repeat_interleave: {} rows exceed the static cache's "
                                    "batch_size {}",
                                    uint64_t(c->batch_size()) * repeats, s->max_batch_size()));
    self_->batch_repeat_interleave(repeats);
    cross_->batch_repeat_interleave(repeats);
}

void EncoderDecoderCache::crop(int64_t max_length) {
    self_->crop(max_length);
}
void EncoderDecoderCache::truncate(int64_t length) {
    self_->truncate(length);
}

}  // namespace pagedkv
