// libFuzzer harness: random operation sequences of the whole cache API on lavapipe with small
// shapes, compared with the CPU reference after every operation. An operation that throws
// pagedkv::Error must leave the cache exactly as before (the reference is not touched). After
// each operation the paged view, and after the last cached_attention, are checked against get().
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "cache/manager/attention.hpp"
#include "pagedkv/pagedkv.hpp"
#include "reference_cache.hpp"

using namespace pagedkv;

namespace {

constexpr uint32_t kLayers = 2, kHeads = 2, kDim = 4, kQueryHeads = 4;

Context& context() {
    // No validation layer here: under ASan it makes each execution several times slower, and
    // the test suite already runs every path under it.
    static Context ctx = Context::create();
    return ctx;
}

[[noreturn]] void fail(const char* what, size_t op) {
    std::fprintf(stderr, "fuzz_cache: %s after operation %zu\n", what, op);
    std::abort();
}

bool same(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// attention: also check cached_attention (costly: done after an input's last operation).
void compare(const PagedKVCache& cache, const test::ReferenceCache& ref, size_t op,
             bool attention) {
    if (!cache.pool().validate()) fail("pool invariants broken", op);
    const uint32_t batch = cache.batch_size();
    for (uint32_t l = 0; l < kLayers; ++l) {
        if (cache.seq_lengths(l) != ref.lengths(l)) fail("lengths differ", op);
        auto kv = cache.get(l);
        if (kv.has_value() != (ref.seq_length(l) > 0)) fail("get() presence differs", op);
        if (kv &&
            (!same(kv->first.to_host(), ref.keys(l)) || !same(kv->second.to_host(), ref.values(l))))
            fail("K/V differ", op);
        // The paged view's table and the attention read through it agree with what get()
        // gathers, whatever crops, reorders and copies made of the rows.
        const PagedView view = cache.paged_view(l);
        if (view.lengths != cache.seq_lengths(l) || view.host_indptr.size() != batch + 1 ||
            view.host_indptr.back() != view.host_indices.size())
            fail("paged view disagrees with the cache", op);
        if (batch == 0 || !attention) continue;
        std::vector<float> qv(size_t(batch) * kQueryHeads * kDim);
        for (size_t i = 0; i < qv.size(); ++i)
            qv[i] = float(int(i % 7) - 3) * 0.125f;
        Tensor q = Tensor::from_host(context(), qv, {batch, kQueryHeads, 1, kDim}, DType::F16);
        std::vector<float> paged;
        try {
            paged = cache.cached_attention(q, l).to_host();
        } catch (const Error& e) {
            // Repeated batch_repeat_interleave reaches batches past one dispatch (a row per
            // workgroup, at most 65535: Vulkan's guaranteed limit), which it refuses as it says.
            if (e.code() != ErrorCode::CapacityExceeded || batch <= 65535)
                fail("cached_attention refused a batch within the dispatch limit", op);
            continue;
        }
        const auto flat =
            kv ? detail::contiguous_attention(q, kv->first, kv->second, cache.seq_lengths(l))
                     .to_host()
               : std::vector<float>(paged.size(), 0.0f);
        if (!same(paged, flat)) fail("cached_attention differs from attention on get()", op);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) return 0;
    Context& ctx = context();
    PoolConfig c;
    c.num_layers = kLayers;
    c.num_kv_heads = kHeads;
    c.head_dim = kDim;
    c.block_size = 1 + data[0] % 4;
    c.dtype = DType::F16;
    c.num_blocks = 8 + data[1] % 40;
    BlockPool pool(ctx, c);
    const bool fixed = data[1] & 0x80;  // a static cache, else dynamic
    std::unique_ptr<PagedKVCache> cache;
    test::ReferenceCache ref(kLayers, kHeads, kDim, kDim);
    try {
        if (fixed)
            cache = std::make_unique<StaticKVCache>(pool, 2, 12);
        else
            cache = std::make_unique<DynamicKVCache>(pool);
    } catch (const Error&) {
        return 0;  // too small a pool for the reservation
    }
    if (fixed) ref.set_batch(2);
    float next_value = 0.5f;
    for (size_t i = 2; i + 2 < size; i += 3) {
        const uint8_t op = data[i] % 8, a = data[i + 1], b = data[i + 2];
        const uint32_t batch = cache->batch_size();
        try {
            switch (op) {
                case 0:
                case 1: {  // update: append (op 0) or at 2-D positions (op 1)
                    const uint32_t rows = batch ? batch : 1 + a % 3, seq = 1 + b % 4;
                    const uint32_t layer = a % kLayers;
                    std::vector<float> k(size_t(rows) * kHeads * seq * kDim);
                    for (float& x : k)
                        x = round_to(DType::F16, next_value += 0.25f);  // exact in f16
                    std::vector<std::vector<int64_t>> pos(rows);
                    const auto lens = ref.lengths(layer);
                    for (uint32_t r = 0; r < rows; ++r)
                        for (uint32_t s = 0; s < seq; ++s)
                            pos[r].push_back(op == 0 ? (lens.empty() ? 0 : lens[r]) + s
                                                     : int64_t((a + 7 * s + r) % 10));
                    const std::vector<int64_t> shape{rows, kHeads, seq, kDim};
                    Tensor t = Tensor::from_host(ctx, k, shape, DType::F16);
                    if (op == 0)
                        cache->update(t, t, layer);
                    else
                        cache->update(t, t, layer, pos);
                    ref.update(k, k, rows, seq, layer, pos);
                    break;
                }
                case 2: {  // reorder with arbitrary (possibly out-of-range) indices
                    std::vector<int32_t> idx;
                    for (uint32_t r = 0; r < batch; ++r)
                        idx.push_back(int32_t((a >> (r % 8)) % (batch + 1)));
                    cache->reorder_cache(idx);
                    ref.select(idx);
                    break;
                }
                case 3: {
                    std::vector<int32_t> idx;
                    for (uint32_t r = 0; r < 1 + a % 3; ++r)
                        idx.push_back(int32_t((b + r) % (batch + 1)));
                    cache->batch_select_indices(idx);
                    ref.select(idx);
                    break;
                }
                case 4:
                    cache->batch_repeat_interleave(a % 3);
                    ref.repeat_interleave(a % 3);
                    break;
                case 5:
                    cache->crop(int64_t(a % 10) - 1);
                    ref.crop(int64_t(a % 10) - 1);
                    break;
                case 6:
                    cache->truncate(int64_t(a % 12) - 6);
                    ref.truncate(int64_t(a % 12) - 6);
                    break;
                case 7:
                    cache->reset();
                    if (fixed)
                        ref.clear_rows();
                    else
                        ref.reset();
                    break;
            }
        } catch (const Error&) {
            // Refused: the reference was not touched, so the comparison proves nothing changed.
        }
        compare(*cache, ref, i, i + 5 >= size);
    }
    return 0;
}
