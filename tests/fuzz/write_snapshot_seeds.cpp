// Writes fuzz_snapshot's seeds: small snapshots with page contents, saved by the real library
// over real caches on lavapipe (the command that regenerates them is in README.md#testing).
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "pagedkv/pagedkv.hpp"

using namespace pagedkv;

namespace {

// Two layers, two heads, head_dim 4, pages of 4 tokens: a block is 256 bytes in F16, so each
// seed stays a few KiB and the fuzzer mutates structure rather than page bytes.
PoolConfig tiny(DType dtype, uint64_t blocks, uint32_t v_head_dim = 0) {
    PoolConfig c;
    c.num_layers = 2;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.v_head_dim = v_head_dim;
    c.block_size = 4;
    c.dtype = dtype;
    c.num_blocks = blocks;
    return c;
}

// Appends `tokens` tokens to every row of every layer, with values distinct per token so that
// the pages are not all alike.
void append(Context& ctx, PagedKVCache& cache, uint32_t rows, int64_t tokens, float base) {
    const PoolConfig& c = cache.pool().config();
    const DType t = *c.compute_dtype;  // what the tensors hold (f16 for quantized pages)
    for (uint32_t l = 0; l < c.num_layers; ++l) {
        std::vector<float> k(size_t(rows) * c.num_kv_heads * tokens * c.head_dim),
            v(size_t(rows) * c.num_kv_heads * tokens * c.v_head_dim);
        for (size_t i = 0; i < k.size(); ++i)
            k[i] = base + 0.125f * float(i % 32) + float(l);
        for (size_t i = 0; i < v.size(); ++i)
            v[i] = -base - 0.25f * float(i % 16);
        cache.update(Tensor::from_host(ctx, k, {rows, c.num_kv_heads, tokens, c.head_dim}, t),
                     Tensor::from_host(ctx, v, {rows, c.num_kv_heads, tokens, c.v_head_dim}, t), l);
    }
}

void save(const std::filesystem::path& path, const BlockPool& pool,
          std::initializer_list<const PagedKVCache*> caches) {
    if (!pool.validate()) throw std::runtime_error(pool.check());
    save_snapshot(path, pool, caches, SnapshotOptions{.page_contents = true});
    std::printf("%s: %ju bytes\n", path.c_str(), uintmax_t(std::filesystem::file_size(path)));
}

// A pool served by a KVManager: its sequences are recorded as a dynamic cache's rows, and with
// prefix caching its cached pages (held and evictable) and the index's entries.
void save(const std::filesystem::path& path, const BlockPool& pool, const KVManager& manager) {
    if (!pool.validate()) throw std::runtime_error(pool.check());
    const KVManager* managers[] = {&manager};
    save_snapshot(path, pool, {}, managers, SnapshotOptions{.page_contents = true});
    std::printf("%s: %ju bytes\n", path.c_str(), uintmax_t(std::filesystem::file_size(path)));
}

// One step of seq with these token ids (prefix caching registers the full pages they fill).
void prefill(Context& ctx, KVManager& m, SeqId seq, std::span<const int32_t> ids, float base) {
    const PoolConfig& c = m.pool().config();
    const SeqId seqs[] = {seq};
    const std::span<const int32_t> spans[] = {ids};
    Step st = m.begin_step(seqs, spans);
    const int64_t n = int64_t(ids.size());
    for (uint32_t l = 0; l < c.num_layers; ++l) {
        std::vector<float> k(size_t(n) * c.num_kv_heads * c.head_dim), v(k.size());
        for (size_t i = 0; i < k.size(); ++i) {
            k[i] = base + 0.125f * float(i % 32) + float(l);
            v[i] = -base - 0.25f * float(i % 16);
        }
        m.write(st, l, Tensor::from_host(ctx, k, {n, c.num_kv_heads, c.head_dim}, c.dtype),
                Tensor::from_host(ctx, v, {n, c.num_kv_heads, c.head_dim}, c.dtype));
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: pagedkv_write_snapshot_seeds DIR\n");
        return 2;
    }
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    Context ctx = Context::create();

    {  // two rows of 6 tokens, growing
        BlockPool pool(ctx, tiny(DType::F16, 12));
        DynamicKVCache cache(pool);
        append(ctx, cache, 2, 6, 0.5f);
        save(dir / "dynamic-f16.snap", pool, {&cache});
    }
    {  // three reserved rows, two kept after a selection: the third's pages become spare
        BlockPool pool(ctx, tiny(DType::F32, 8));
        StaticKVCache cache(pool, 3, 8);
        append(ctx, cache, 3, 5, 1.0f);
        cache.batch_select_indices(std::vector<int32_t>{2, 0});
        save(dir / "static-spare-f32.snap", pool, {&cache});
    }
    {  // nine tokens through a window of six: leading pages dropped, rows start mid-page
        BlockPool pool(ctx, tiny(DType::BF16, 10));
        SlidingWindowKVCache cache(pool, 6);
        append(ctx, cache, 2, 9, 2.0f);
        save(dir / "sliding-bf16.snap", pool, {&cache});
    }
    {  // one row repeated three times shares its pages; the token appended after copies the
       // shared last page of each row (copy-on-write)
        BlockPool pool(ctx, tiny(DType::F16, 12));
        DynamicKVCache cache(pool);
        append(ctx, cache, 1, 6, 3.0f);
        cache.batch_repeat_interleave(3);
        append(ctx, cache, 3, 1, 4.0f);
        save(dir / "shared-repeat-f16.snap", pool, {&cache});
    }
    {  // rows cropped and truncated to different lengths, some pages partly used
        BlockPool pool(ctx, tiny(DType::F16, 12));
        DynamicKVCache cache(pool);
        append(ctx, cache, 2, 11, 5.0f);
        cache.crop(7);
        cache.truncate(-2);
        save(dir / "cropped-f16.snap", pool, {&cache});
    }
    {  // every kind in one pool, V narrower than K, a beam reorder that shares pages
        BlockPool pool(ctx, tiny(DType::F16, 20, 2));
        DynamicKVCache dyn(pool);
        StaticKVCache fixed(pool, 2, 8);
        SlidingWindowKVCache slide(pool, 5);
        append(ctx, dyn, 2, 5, 6.0f);
        dyn.reorder_cache(std::vector<int32_t>{1, 1});
        append(ctx, fixed, 2, 3, 7.0f);
        append(ctx, slide, 1, 7, 8.0f);
        save(dir / "mixed-f16.snap", pool, {&dyn, &fixed, &slide});
    }
    {  // prefix caching (format 2's PRFX section): a prompt's sequence ended, leaving its second
       // page evictable; another holds the shared first page and its own cached sibling page;
       // a third, under another salt, holds a page of the same tokens
        BlockPool pool(ctx, tiny(DType::F16, 12));
        KVManager m(pool, {0.01, true});
        const std::vector<int32_t> p = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        const std::vector<int32_t> q = {1, 2, 3, 4, 20, 21, 22, 23, 24};
        const SeqId a = m.add_sequence(p);
        prefill(ctx, m, a, p, 9.0f);
        const SeqId b = m.add_sequence(q);  // holds p's first page
        prefill(ctx, m, b, std::span(q).subspan(size_t(m.length(b))), 10.0f);
        const SeqId c = m.add_sequence(std::span(p).first(5), 3);
        prefill(ctx, m, c, std::span(p).first(5), 11.0f);
        m.free(a);
        save(dir / "prefix-cached-f16.snap", pool, m);
    }
    {  // quantized pages (codes, then a scale per row), int8 and fp8, with copy-on-write
        for (DType t : {DType::Int8, DType::FP8E4M3}) {
            BlockPool pool(ctx, tiny(t, 10));
            DynamicKVCache cache(pool);
            append(ctx, cache, 1, 5, 12.0f);
            cache.batch_repeat_interleave(2);
            append(ctx, cache, 2, 1, 13.0f);
            save(dir / (std::string("quantized-") + to_string(t) + ".snap"), pool, {&cache});
        }
    }
    {  // a pool with no caches: every block free, an empty PAGE section
        BlockPool pool(ctx, tiny(DType::F32, 4));
        save(dir / "empty-f32.snap", pool, {});
    }
    return 0;
}
