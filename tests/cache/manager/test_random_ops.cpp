// Randomized differential test: thousands of steps mixing every cache operation, with
// validate() and a bit-exact comparison of get() against the reference after each step.
#include "cache/manager/cache_state.hpp"
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

enum class Kind { Dynamic, Sliding, Static };

// Pages a growing cache holds are exactly those some layer of the row still reaches: none
// before the earliest layer's first token, none past the furthest layer's last one. (With
// layers in lockstep that is at most window / block_size + 1 pages for a sliding window.)
void require_trimmed(const PagedKVCache& cache) {
    const detail::CacheState& st = detail::Access::cache(cache);
    const uint32_t bs = st.block_size();
    for (uint32_t r = 0; r < st.batch; ++r) {
        int64_t first = INT64_MAX;
        for (uint32_t l = 0; l < st.num_layers(); ++l)
            if (st.len(l, r) > 0) first = std::min(first, st.start(l, r));
        INFO("row " << r);
        REQUIRE(st.table(r).size() == size_t((st.extent(r) + bs - 1) / bs));
        if (first != INT64_MAX) REQUIRE(first < int64_t(bs));
    }
}

const char* name(Kind k) {
    return k == Kind::Dynamic ? "dynamic" : k == Kind::Sliding ? "sliding" : "static";
}

// Runs `steps` random operations on one cache of kind `kind`; a second dynamic cache over the
// same pool supplies rows for insert().
// quant: the pool is quantized (Int8 or FP8E4M3 by seed, head dims multiples of 4, a compute
// dtype by seed).
void run_random_ops(Kind kind, uint32_t seed, int steps, const PathMode* mode = nullptr,
                    bool quant = false) {
    INFO("kind " << name(kind) << " seed " << seed << " path " << (mode ? mode->name : "auto")
                 << (quant ? " quantized" : ""));
    ValidatedContext g;
    if (mode) {
        BlockPool warmup(g.ctx, small_config(DType::F32));  // resolves Auto first
        use_path(g.ctx, *mode);
    }
    std::mt19937 pick(seed);
    const DType dtype =
        quant ? kQuantDTypes[seed % 2] : std::array{DType::F32, DType::F16, DType::BF16}[seed % 3];
    PoolConfig c =
        small_config(dtype, 2, 1 + seed % 3, seed % 2 ? (quant ? 12 : 6) : 8, 1 + seed % 5, 400);
    c.v_head_dim = seed % 4 == 0 ? (quant ? 4 : 3) : c.head_dim;
    if (quant) c.compute_dtype = std::array{DType::F32, DType::F16, DType::BF16}[seed / 2 % 3];
    TestPool pool(g.ctx, c);
    const uint32_t window = 9, max_batch = 4, max_len = 40;
    std::unique_ptr<PagedKVCache> cache;
    if (kind == Kind::Dynamic) cache = std::make_unique<DynamicKVCache>(pool);
    if (kind == Kind::Sliding) cache = std::make_unique<SlidingWindowKVCache>(pool, window);
    if (kind == Kind::Static) cache = std::make_unique<StaticKVCache>(pool, max_batch, max_len);
    DynamicKVCache donor(pool);
    CacheHarness h(g.ctx, pool, *cache, seed), hd(g.ctx, pool, donor, seed + 1000);
    if (kind == Kind::Sliding) h.after_update = [&](uint32_t l) { h.ref.keep_last(l, window); };
    if (kind == Kind::Static) h.ref.set_batch(max_batch);
    const uint32_t fixed_batch = kind == Kind::Static ? max_batch : 0;

    for (int step = 0; step < steps; ++step) {
        const uint32_t batch = h.ref.batch();
        const uint32_t layer = pick() % c.num_layers;
        int op = int(pick() % 10);
        if (batch == 0) op = 0;
        h.trace << "step " << step << ": ";
        switch (op) {
            case 0:
            case 1:
            case 2: {  // append a chunk (prefill or decode)
                const uint32_t b = batch ? batch : (fixed_batch ? fixed_batch : 1 + pick() % 3);
                const uint32_t seq = op == 0 ? 1 + pick() % 6 : 1;
                const auto lens = h.ref.lengths(layer);
                int64_t longest = 0;
                for (int64_t l : lens)
                    longest = std::max(longest, l);
                if (kind == Kind::Static && longest + seq > max_len) {
                    auto kv = h.make_kv(b, seq);
                    require_rejected(*cache, ErrorCode::CapacityExceeded, "max_cache_len",
                                     [&] { cache->update(kv.tk, kv.tv, layer); });
                    break;
                }
                h.append(b, seq, layer);
                break;
            }
            case 3: {  // explicit positions: 2-D, overwriting and growing
                const uint32_t seq = 1 + pick() % 3;
                std::vector<std::vector<int64_t>> pos(batch);
                const auto lens = h.ref.lengths(layer);
                for (uint32_t b = 0; b < batch; ++b)
                    for (uint32_t s = 0; s < seq; ++s)
                        pos[b].push_back(int64_t(pick() % uint32_t(lens[b] + 3)));
                int64_t reach = 0;
                for (auto& row : pos)
                    for (int64_t p : row)
                        reach = std::max(reach, p + 1);
                if (kind == Kind::Static && reach > max_len) break;
                h.write(batch, seq, layer, pos, pos);
                break;
            }
            case 4: {  // reorder (beam search)
                std::vector<int32_t> idx(batch);
                for (auto& i : idx)
                    i = int32_t(pick() % batch);
                h.trace << "reorder\n";
                cache->reorder_cache(idx);
                h.ref.select(idx);
                break;
            }
            case 5: {                             // select a subset, or repeat
                if (kind == Kind::Static) break;  // a static batch keeps batch_size rows
                if (pick() % 2 && batch * 2 <= 6) {
                    h.trace << "repeat_interleave(2)\n";
                    cache->batch_repeat_interleave(2);
                    h.ref.repeat_interleave(2);
                } else {
                    std::vector<int32_t> idx;
                    for (uint32_t b = 0; b < batch; ++b)
                        if (pick() % 3) idx.push_back(int32_t(b));
                    if (idx.empty()) idx.push_back(0);
                    h.trace << "select " << idx.size() << " rows\n";
                    cache->batch_select_indices(idx);
                    h.ref.select(idx);
                }
                break;
            }
            case 6: {
                const int64_t n = int64_t(pick() % 12);
                h.trace << "crop(" << n << ")\n";
                cache->crop(n);
                h.ref.crop(n);
                break;
            }
            case 7: {
                const int64_t n = int64_t(pick() % 12) - 6;
                h.trace << "truncate(" << n << ")\n";
                cache->truncate(n);
                h.ref.truncate(n);
                break;
            }
            case 8: {  // insert a row prefilled alone
                const uint32_t n = 1 + pick() % 8;
                if (kind == Kind::Sliding) break;  // window trimming differs from the donor's
                for (uint32_t l = 0; l < c.num_layers; ++l)
                    hd.append(1, n, l);
                const uint32_t slot = kind == Kind::Static ? pick() % batch : pick() % (batch + 1);
                int64_t longest = 0;
                for (uint32_t l = 0; l < c.num_layers; ++l)
                    longest = std::max(longest, hd.ref.seq_length(l));
                if (kind == Kind::Static && longest > max_len) break;
                if (kind == Kind::Dynamic && slot == batch && batch >= 6) break;
                h.trace << "insert into slot " << slot << "\n";
                cache->insert(donor, 0, slot);
                h.ref.insert(hd.ref, 0, slot);
                donor.reset();
                hd.ref.reset();
                break;
            }
            case 9: {
                if (pick() % 4) break;  // rare
                h.trace << "reset\n";
                cache->reset();
                if (kind == Kind::Static)
                    h.ref.clear_rows();
                else
                    h.ref.reset();
                break;
            }
        }
        h.check();
        if (kind != Kind::Static) require_trimmed(*cache);
    }
}

}  // namespace

TEST_CASE("thousands of random operations on a dynamic cache match the reference",
          "[random][gpu]") {
    for (uint32_t seed : {101u, 102u, 103u})
        run_random_ops(Kind::Dynamic, seed, 700);
}

TEST_CASE("random operations on a sliding window cache match the reference", "[random][gpu]") {
    for (uint32_t seed : {201u, 202u})
        run_random_ops(Kind::Sliding, seed, 500);
}

TEST_CASE("random operations on a static cache match the reference", "[random][gpu]") {
    for (uint32_t seed : {301u, 302u})
        run_random_ops(Kind::Static, seed, 500);
}

TEST_CASE("random operations match the reference on every byte path", "[random][gpu]") {
    for (const PathMode& mode : kPathModes)
        run_random_ops(Kind::Dynamic, 401, 300, &mode);
}

TEST_CASE("random operations on quantized pools match the reference quantizer", "[random][gpu]") {
    // Int8 (even seeds) and FP8E4M3 (odd), compute dtypes F32, F16 and BF16 among them.
    run_random_ops(Kind::Dynamic, 500, 300, nullptr, true);
    run_random_ops(Kind::Dynamic, 503, 300, nullptr, true);
    run_random_ops(Kind::Sliding, 504, 250, nullptr, true);
    run_random_ops(Kind::Static, 507, 250, nullptr, true);
    run_random_ops(Kind::Dynamic, 502, 150, &kPathModes[1], true);
}
