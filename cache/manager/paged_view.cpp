// PagedKVCache::paged_view: a layer's rows as a CSR block table (FlashInfer's indptr / indices /
// last_page_len, plus the first slot our rows may start at) in host-visible device memory,
// next to the addresses of the pool's slabs. And cached_attention, which reads the pages
// through the same table.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstring>

#include "cache/manager/attention.hpp"
#include "cache/manager/cache_state.hpp"
#include "cache/manager/converted.hpp"
#include "cache/manager/kv_copy.hpp"
#include "cache/manager/shards.hpp"
#include "cache/manager/view_pages.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/paged_kv_cache.hpp"
#include "shaders/kernels/attention.hpp"
#include "shaders/vulkan/batch.hpp"

namespace pagedkv {

namespace {

// What a view keeps alive; the device is declared first so it outlives the buffers.
struct ViewKeep {
    std::shared_ptr<detail::Device> device;
    std::shared_ptr<detail::PageSlabs> pages;
    std::shared_ptr<detail::Buffer> table;
};

uint64_t align16(uint64_t v) {
    return (v + 15) / 16 * 16;
}

struct Csr {
    std::vector<uint32_t> indptr{0}, indices, last_page_len, first_slot;
    std::vector<int64_t> lengths;
};

// The layer's rows as a CSR table: each row's pages from the one holding its first token to
// the one holding its last.
Csr build_csr(const detail::CacheState& st, uint32_t layer) {
    Csr t;
    const uint32_t bs = st.block_size();
    for (uint32_t r = 0; r < st.batch; ++r) {
        const int64_t len = st.len(layer, r);
        const int64_t start = st.start(layer, r);
        t.lengths.push_back(len);
        if (len == 0) {
            t.first_slot.push_back(0);
            t.last_page_len.push_back(0);
        } else {
            for (int64_t p = start / bs; p <= (start + len - 1) / bs; ++p)
                t.indices.push_back(index(st.table(r, layer)[size_t(p)]));
            t.first_slot.push_back(uint32_t(start % bs));
            t.last_page_len.push_back(uint32_t((start + len - 1) % bs + 1));
        }
        t.indptr.push_back(uint32_t(t.indices.size()));
    }
    return t;
}

Error invalid(const std::string& m) {
    return Error(ErrorCode::InvalidArgument, m);
}

float default_scale(float scale, uint32_t head_dim) {
    return scale > 0.0f ? scale : 1.0f / std::sqrt(float(head_dim));
}

// Checks a decode query against the layout: (batch, q_heads, 1, head_dim) on dev.
void check_query(const Tensor& q, const detail::Device& dev, uint32_t batch, uint32_t head_dim,
                 const char* op) {
    if (!q.defined()) throw invalid(fmt::format("{}: query is undefined", op));
    if (&detail::Access::device(q) != &dev)
        throw invalid(fmt::format("{}: query lives on another Context than the cache", op));
    const auto& s = q.shape();
    if (s.size() != 4 || s[2] != 1)
        throw invalid(
            fmt::format("{}: query must be (batch, q_heads, 1, head_dim): one query "
                        "token per row, got shape [{}]",
                        op, fmt::join(s, ", ")));
    if (s[0] != batch)
        throw invalid(
            fmt::format("{}: query has batch {}, the cache holds {} rows", op, s[0], batch));
    if (s[3] != head_dim)
        throw invalid(
            fmt::format("{}: query has head_dim {}, the cache has {}", op, s[3], head_dim));
    if (s[1] < 1 || s[1] > INT32_MAX)
        throw invalid(fmt::format("{}: query has {} heads", op, s[1]));
}

}  // namespace

PagedView PagedKVCache::paged_view(uint32_t layer) const {
    const detail::CacheState& st = *state_;
    detail::CacheLock l(st);
    st.check_layer(layer, "paged_view");
    // Outside a recording, the writes recorded so far go to the queue now, ahead of the
    // caller's own submission that reads through the view (their batch ends with a barrier
    // that makes them visible to later compute and transfer commands).
    detail::Batches& batches = st.ps->device->batches();
    if (!batches.recording_external()) batches.flush();
    PagedView v = detail::view_pages(*st.ps, layer);
    v.batch = st.batch;

    Csr csr = build_csr(st, layer);
    v.host_indptr = std::move(csr.indptr);
    v.host_indices = std::move(csr.indices);
    v.host_last_page_len = std::move(csr.last_page_len);
    v.host_first_slot = std::move(csr.first_slot);
    v.lengths = std::move(csr.lengths);

    // One buffer, four arrays at 16-byte aligned offsets.
    const auto bytes = [](const std::vector<uint32_t>& a) { return a.size() * sizeof(uint32_t); };
    v.indptr_offset = 0;
    v.indices_offset = align16(v.indptr_offset + bytes(v.host_indptr));
    v.last_page_len_offset = align16(v.indices_offset + bytes(v.host_indices));
    v.first_slot_offset = align16(v.last_page_len_offset + bytes(v.host_last_page_len));
    const uint64_t total = align16(v.first_slot_offset + bytes(v.host_first_slot));
    auto keep = std::make_shared<ViewKeep>();
    keep->device = st.ps->device;
    keep->pages = st.ps->shards[0].pages;
    keep->table = detail::Buffer::create(*st.ps->device, total, detail::MemoryKind::Upload);
    char* mapped = static_cast<char*>(keep->table->mapped());
    const std::pair<const std::vector<uint32_t>*, uint64_t> arrays[] = {
        {&v.host_indptr, v.indptr_offset},
        {&v.host_indices, v.indices_offset},
        {&v.host_last_page_len, v.last_page_len_offset},
        {&v.host_first_slot, v.first_slot_offset}};
    for (const auto& [a, offset] : arrays)
        if (!a->empty()) std::memcpy(mapped + offset, a->data(), bytes(*a));
    v.table = keep->table->handle();
    const VkDeviceAddress base = keep->table->address();
    v.indptr = base + v.indptr_offset;
    v.indices = base + v.indices_offset;
    v.last_page_len = base + v.last_page_len_offset;
    v.first_slot = base + v.first_slot_offset;
    v.keep = std::move(keep);
    return v;
}

Tensor PagedKVCache::cached_attention(const Tensor& query, uint32_t layer, float scale) const {
    const detail::CacheState& st = *state_;
    detail::CacheLock l(st);
    const char* op = "cached_attention";
    st.check_layer(layer, op);
    const PoolConfig& c = st.ps->config;
    if (st.batch == 0) throw invalid("cached_attention: the cache holds no rows yet");
    check_query(query, *st.ps->device, st.batch, c.head_dim, op);
    detail::AttentionShape shape;
    shape.batch = st.batch;
    shape.q_heads = uint32_t(query.shape()[1]);
    shape.kv = st.ps->format;
    // The shader reads a float pool's query in the pool's dtype, a quantized pool's in its
    // compute dtype; a query of another float dtype is converted to that.
    shape.io = detail::kv_tensor_dtype(st.ps->format, *c.compute_dtype);
    shape.scale = default_scale(scale, c.head_dim);
    detail::check_attention_shape(shape, op);
    const Csr csr = build_csr(st, layer);
    const Tensor q = detail::converted(query, shape.io);
    Tensor out = detail::Access::empty_tensor(
        st.ps->device, {shape.batch, shape.q_heads, 1, c.v_head_dim}, shape.io);
    const auto record = [&](const detail::Shard& sh, detail::Buffer& qb, detail::Buffer& ob) {
        detail::AttentionShape mine = shape;
        mine.kv = sh.format;
        mine.q_heads /= uint32_t(st.ps->shards.size());
        detail::record_paged_attention(
            *sh.device, mine, qb, ob, *sh.pages, st.ps->page_layer(layer),
            {csr.indptr, csr.indices, csr.last_page_len, csr.first_slot});
    };
    if (!st.ps->sharded()) {
        record(st.ps->shards[0], detail::Access::buffer(q), detail::Access::buffer(out));
    } else {
        // Each device attends with its share of the query heads over its kv heads.
        const uint64_t es = dtype_size(shape.io);
        const auto qs = detail::split_heads(*st.ps, detail::Access::buffer(q), q.nbytes(),
                                            {shape.q_heads, 1, c.head_dim * es});
        const auto outs = detail::per_shard_buffers(*st.ps, out.nbytes());
        for (size_t d = 0; d < st.ps->shards.size(); ++d)
            record(st.ps->shards[d], *qs[d], *outs[d]);
        detail::join_heads(*st.ps, outs, detail::Access::buffer(out), out.nbytes(),
                           {shape.q_heads, 1, c.v_head_dim * es});
    }
    // The output is in the compute dtype (a float pool's own dtype unless configured otherwise).
    if (shape.io != *c.compute_dtype) return detail::converted(out, *c.compute_dtype);
    return out;
}

namespace detail {

Tensor contiguous_attention(const Tensor& query, const Tensor& k, const Tensor& v,
                            std::span<const int64_t> lengths, float scale) {
    const char* op = "contiguous_attention";
    if (!k.defined() || !v.defined() || k.shape().size() != 4 || v.shape().size() != 4)
        throw invalid(fmt::format("{}: k and v must be (batch, kv_heads, len, dim)", op));
    const auto& ks = k.shape();
    Device& dev = Access::device(k);
    Device::CallLock l(dev);
    if (&Access::device(v) != &dev)
        throw invalid(fmt::format("{}: k and v live on different Contexts", op));
    check_query(query, dev, uint32_t(ks[0]), uint32_t(ks[3]), op);
    if (query.dtype() != k.dtype())
        throw invalid(fmt::format("{}: query has dtype {}, k holds {}", op,
                                  to_string(query.dtype()), to_string(k.dtype())));
    if (v.dtype() != k.dtype() || v.shape()[0] != ks[0] || v.shape()[1] != ks[1] ||
        v.shape()[2] != ks[2] || lengths.size() != size_t(ks[0]))
        throw invalid(fmt::format("{}: k [{}], v [{}] and {} lengths disagree", op,
                                  fmt::join(ks, ", "), fmt::join(v.shape(), ", "), lengths.size()));
    std::vector<uint32_t> lens;
    for (int64_t n : lengths) {
        if (n < 0 || n > ks[2])
            throw invalid(fmt::format("{}: length {} outside [0, {}]", op, n, ks[2]));
        lens.push_back(uint32_t(n));
    }
    AttentionShape shape;
    shape.batch = uint32_t(ks[0]);
    shape.q_heads = uint32_t(query.shape()[1]);
    shape.kv.num_kv_heads = uint32_t(ks[1]);
    shape.kv.head_dim = uint32_t(ks[3]);
    shape.kv.v_head_dim = uint32_t(v.shape()[3]);
    shape.kv.dtype = k.dtype();
    shape.io = k.dtype();
    shape.scale = default_scale(scale, shape.kv.head_dim);
    check_attention_shape(shape, op);
    Tensor out = Access::empty_tensor(Access::device_ptr(k),
                                      {ks[0], query.shape()[1], 1, v.shape()[3]}, k.dtype());
    record_contiguous_attention(dev, shape, detail::Access::buffer(query),
                                detail::Access::buffer(out), detail::Access::buffer(k),
                                detail::Access::buffer(v), uint32_t(ks[2]), lens);
    return out;
}

}  // namespace detail

}  // namespace pagedkv
