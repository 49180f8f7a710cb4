#include "cache/manager/shards.hpp"

#include <cstring>

#include "cache/manager/access.hpp"
#include "cache/manager/kv_copy.hpp"
#include "shaders/kernels/page_copy.hpp"

namespace pagedkv::detail {

namespace {

// Rows [outer][heads][head_stride]: how many outer groups a buffer of `bytes` holds.
uint64_t outer_groups(uint64_t bytes, const HeadRows& r) {
    return bytes / (uint64_t(r.heads) * r.head_stride * r.row_bytes);
}

}  // namespace

std::vector<std::shared_ptr<Buffer>> split_heads(const PoolState& ps, Buffer& src, uint64_t bytes,
                                                 const HeadRows& rows) {
    const auto n = uint32_t(ps.shards.size());
    const uint64_t outer = outer_groups(bytes, rows);
    const uint64_t all = outer * rows.heads * rows.head_stride * rows.row_bytes;
    std::vector<uint8_t> host(all), part(all / n);
    if (all) src.read(host.data(), all);
    const uint64_t group = uint64_t(rows.heads) * rows.head_stride * rows.row_bytes;
    const uint64_t share = group / n;  // bytes of one device's heads in one outer group
    std::vector<std::shared_ptr<Buffer>> out;
    for (uint32_t d = 0; d < n; ++d) {
        for (uint64_t o = 0; o < outer; ++o)
            std::memcpy(part.data() + o * share, host.data() + o * group + d * share, share);
        out.push_back(Buffer::create(*ps.shards[d].device, std::max<uint64_t>(part.size(), 4),
                                     MemoryKind::Tensor));
        if (!part.empty()) out.back()->write(part.data(), part.size());
    }
    return out;
}

void join_heads(const PoolState& ps, std::span<const std::shared_ptr<Buffer>> parts, Buffer& dst,
                uint64_t bytes, const HeadRows& rows) {
    const auto n = uint32_t(ps.shards.size());
    const uint64_t outer = outer_groups(bytes, rows);
    const uint64_t group = uint64_t(rows.heads) * rows.head_stride * rows.row_bytes;
    const uint64_t share = group / n;
    std::vector<uint8_t> host(outer * group), part(outer * share);
    if (host.empty()) return;
    for (uint32_t d = 0; d < n; ++d) {
        parts[d]->read(part.data(), part.size());
        for (uint64_t o = 0; o < outer; ++o)
            std::memcpy(host.data() + o * group + d * share, part.data() + o * share, share);
    }
    dst.write(host.data(), host.size());
}

std::vector<std::shared_ptr<Buffer>> per_shard_buffers(const PoolState& ps, uint64_t bytes) {
    std::vector<std::shared_ptr<Buffer>> out;
    for (const Shard& s : ps.shards)
        out.push_back(Buffer::create(*s.device, std::max<uint64_t>(bytes / ps.shards.size(), 4),
                                     MemoryKind::Tensor));
    return out;
}

std::vector<RowEntry> shard_entries(std::span<const RowEntry> entries, uint32_t heads,
                                    uint32_t head_stride, uint32_t shard_heads) {
    const uint64_t group = uint64_t(heads) * head_stride,
                   share = uint64_t(shard_heads) * head_stride;
    std::vector<RowEntry> out(entries.begin(), entries.end());
    for (RowEntry& e : out)
        if (e.tensor_row != kNone)
            e.tensor_row = uint32_t(e.tensor_row / group * share + e.tensor_row % group);
    return out;
}

void record_page_copies(PoolState& ps, std::span<const std::pair<uint32_t, uint32_t>> copies) {
    for (Shard& s : ps.shards)
        record_page_copies(*s.device, *s.pages, copies);
}

void record_kv_shards(PoolState& ps, uint32_t layer, std::span<Buffer* const> ks,
                      std::span<Buffer* const> vs, std::span<const DType> dtypes,
                      std::span<const RowEntry> entries, uint32_t head_stride, bool gather,
                      Buffer* entries_buffer, uint64_t entries_offset) {
    const uint32_t share = ps.shards[0].format.num_kv_heads;
    std::vector<RowEntry> readdressed;
    if (ps.sharded()) {
        readdressed = shard_entries(entries, ps.format.num_kv_heads, head_stride, share);
        entries = readdressed;
        entries_buffer = nullptr;  // the uploaded entries address every head
    }
    for (size_t d = 0; d < ps.shards.size(); ++d) {
        Shard& s = ps.shards[d];
        const DType t = dtypes.size() == 1 ? dtypes[0] : dtypes[d];
        record_kv(*s.device, *s.pages, s.format, ps.page_layer(layer), *ks[d], *vs[d], t, entries,
                  share, head_stride, gather, entries_buffer, entries_offset);
    }
}

void record_kv_all(PoolState& ps, uint32_t layer, const Tensor& kt, const Tensor& vt,
                   std::span<const RowEntry> entries, uint32_t head_stride, bool gather,
                   Buffer* entries_buffer, uint64_t entries_offset) {
    Buffer &k = Access::buffer(kt), &v = Access::buffer(vt);
    const DType dtype[] = {kt.dtype()};
    if (!ps.sharded()) {
        Buffer* const kb[] = {&k};
        Buffer* const vb[] = {&v};
        record_kv_shards(ps, layer, kb, vb, dtype, entries, head_stride, gather, entries_buffer,
                         entries_offset);
        return;
    }
    const uint64_t es = dtype_size(kt.dtype());
    const uint32_t heads = ps.format.num_kv_heads;
    const HeadRows kr{heads, head_stride, ps.format.head_dim * es};
    const HeadRows vr{heads, head_stride, ps.format.v_head_dim * es};
    std::vector<std::shared_ptr<Buffer>> ks, vs;
    if (gather) {
        ks = per_shard_buffers(ps, kt.nbytes());
        vs = per_shard_buffers(ps, vt.nbytes());
    } else {
        ks = split_heads(ps, k, kt.nbytes(), kr);
        vs = split_heads(ps, v, vt.nbytes(), vr);
    }
    std::vector<Buffer*> kb, vb;
    for (size_t d = 0; d < ks.size(); ++d) {
        kb.push_back(ks[d].get());
        vb.push_back(vs[d].get());
    }
    record_kv_shards(ps, layer, kb, vb, dtype, entries, head_stride, gather);
    if (gather) {
        join_heads(ps, ks, k, kt.nbytes(), kr);
        join_heads(ps, vs, v, vt.nbytes(), vr);
    }
}

namespace {

// Calls f(canonical offset, shard offset, bytes) for each row of one block of shard sh: where
// the row sits in a block of the pool's format and in a block of the shard's.
template <class F>
void for_each_shard_row(const PageFormat& all, const Shard& sh, F&& f) {
    const PageFormat& mine = sh.format;
    for (uint32_t layer = 0; layer < all.num_layers; ++layer)
        for (bool value : {false, true}) {
            const uint64_t row = value ? all.v_row_bytes() : all.k_row_bytes();
            const uint64_t a = all.page_offset(layer, value), m = mine.page_offset(layer, value);
            for (uint32_t slot = 0; slot < all.block_size; ++slot)
                for (uint32_t h = 0; h < mine.num_kv_heads; ++h) {
                    const uint32_t head = sh.first_head + h;
                    f(a + all.row_offset(slot, head, row), m + mine.row_offset(slot, h, row), row);
                    if (all.scale_bytes() != 0)
                        f(a + all.scales_offset(value) + all.row_offset(slot, head, 4),
                          m + mine.scales_offset(value) + mine.row_offset(slot, h, 4), 4);
                }
        }
}

}  // namespace

void read_blocks(const PoolState& ps, std::span<const uint32_t> ascending, uint8_t* bytes) {
    const uint64_t bb = ps.format.block_bytes();
    if (!ps.sharded()) {
        const PageSlabs& pages = *ps.shards[0].pages;
        pages.for_each_run(ascending, [&](uint32_t first, size_t index, size_t count) {
            pages.slab_of(first).read(bytes + index * bb, count * bb, pages.offset_of(first));
        });
        return;
    }
    for (const Shard& sh : ps.shards) {
        const uint64_t sb = sh.format.block_bytes();
        std::vector<uint8_t> part(ascending.size() * sb);
        const PageSlabs& pages = *sh.pages;
        pages.for_each_run(ascending, [&](uint32_t first, size_t index, size_t count) {
            pages.slab_of(first).read(part.data() + index * sb, count * sb, pages.offset_of(first));
        });
        for (size_t i = 0; i < ascending.size(); ++i)
            for_each_shard_row(ps.format, sh, [&](uint64_t all, uint64_t mine, uint64_t n) {
                std::memcpy(bytes + i * bb + all, part.data() + i * sb + mine, n);
            });
    }
}

void write_blocks(const PoolState& ps, std::span<const uint32_t> ascending, const uint8_t* bytes) {
    const uint64_t bb = ps.format.block_bytes();
    for (const Shard& sh : ps.shards) {
        const uint64_t sb = sh.format.block_bytes();
        std::vector<uint8_t> part;
        const uint8_t* src = bytes;
        if (ps.sharded()) {
            part.resize(ascending.size() * sb);
            for (size_t i = 0; i < ascending.size(); ++i)
                for_each_shard_row(ps.format, sh, [&](uint64_t all, uint64_t mine, uint64_t n) {
                    std::memcpy(part.data() + i * sb + mine, bytes + i * bb + all, n);
                });
            src = part.data();
        }
        const PageSlabs& pages = *sh.pages;
        pages.for_each_run(ascending, [&](uint32_t first, size_t index, size_t count) {
            pages.slab_of(first).write(src + index * sb, count * sb, pages.offset_of(first));
        });
    }
}

}  // namespace pagedkv::detail
