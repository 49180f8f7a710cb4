// Pools over several devices (tensor parallelism), on two logical devices over the one physical
// device: every head written and read on the first device and each device's share through the
// *_shards calls, both against the CPU reference bit for bit for every pool dtype; attention's
// all-heads and per-device forms agree bit for bit; a snapshot of a two-device pool restores
// onto one device; every error path of the new calls changes nothing. (Every other GPU test
// runs over two devices as well: tests/CMakeLists.txt, "pagedkv 2 devices".)
#include <random>
#include <vector>

#include "cache_harness.hpp"
#include "reference_quant.hpp"
#include "reference_sequences.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

// Rows [outer][heads][inner] of x cut into n equal shares of the heads.
std::vector<std::vector<float>> split_heads(const std::vector<float>& x, size_t heads, size_t inner,
                                            size_t n) {
    const size_t outer = x.size() / (heads * inner), share = heads / n * inner;
    std::vector<std::vector<float>> out(n);
    for (size_t d = 0; d < n; ++d)
        for (size_t o = 0; o < outer; ++o) {
            const auto from = x.begin() + long(o * heads * inner + d * share);
            out[d].insert(out[d].end(), from, from + long(share));
        }
    return out;
}

struct TwoDevices {
    ValidatedContext first, second;
    Context* list[2] = {&first.ctx, &second.ctx};
    std::span<Context* const> span() const { return {list, 2}; }
};

PoolConfig config(DType dtype) {
    return small_config(dtype, 2, 4, 8, 4, 64);  // 4 kv heads: 2 on each device
}

}  // namespace

TEST_CASE("a pool over two devices: construction, errors and stats", "[gpu][devices]") {
    TwoDevices g;
    const PoolConfig c = config(DType::F16);
    TestPool one(g.first.ctx, c);
    BlockPool two(g.span(), c);
    REQUIRE(two.num_devices() == 2);
    REQUIRE(two.config().num_kv_heads == 4);
    REQUIRE(two.stats().total_bytes == 64 * one.stats().block_bytes);
    REQUIRE(two.stats().block_bytes == one.stats().block_bytes);
    REQUIRE(two.validate());

    require_error([&] { BlockPool p(std::span<Context* const>(), c); }, ErrorCode::InvalidArgument,
                  "no devices given");
    Context* with_null[] = {&g.first.ctx, nullptr};
    require_error([&] { BlockPool p(with_null, c); }, ErrorCode::InvalidArgument,
                  "device 1 is a null Context");
    Context* twice[] = {&g.first.ctx, &g.first.ctx};
    require_error([&] { BlockPool p(twice, c); }, ErrorCode::InvalidArgument,
                  "devices 0 and 1 are the same Context");
    PoolConfig odd = c;
    odd.num_kv_heads = 3;
    require_error([&] { BlockPool p(g.span(), odd); }, ErrorCode::InvalidArgument,
                  "num_kv_heads 3 cannot be split evenly over 2 devices");
}

TEST_CASE("a pool over two devices against the reference: all heads and per-device shares",
          "[gpu][devices]") {
    TwoDevices g;
    for (const DType dtype : kPoolDTypes) {
        INFO("dtype " << to_string(dtype));
        BlockPool pool(g.span(), config(dtype));
        const PoolConfig& c = pool.config();
        const DType io = input_dtype(c);
        const uint32_t H = c.num_kv_heads, D = c.head_dim, QH = 8;
        KVManager mgr(pool);
        ReferenceSequences ref(c.num_layers, H, D, D);
        std::mt19937 rng(23);
        const SeqId a = mgr.add_sequence(), b = mgr.add_sequence();
        ref.add(a);
        ref.add(b);
        Context* ctxs[2] = {&g.first.ctx, &g.second.ctx};
        // Steps written alternately through write (every head on the first device) and
        // write_shards (each device's heads on it); attention both ways.
        const std::vector<std::vector<uint32_t>> steps = {{5, 3}, {1, 1}, {6, 0}, {1, 2}, {1, 1}};
        for (size_t i = 0; i < steps.size(); ++i) {
            INFO("step " << i);
            const std::vector<uint64_t> ids = {a, b};
            const uint32_t total = steps[i][0] + steps[i][1];
            Step st = mgr.begin_step(std::vector<SeqId>{a, b}, steps[i]);
            ref.begin_step(ids, steps[i]);
            for (uint32_t l = 0; l < c.num_layers; ++l) {
                auto k = random_values(size_t(total) * H * D, rng, io);
                auto v = random_values(size_t(total) * H * D, rng, io);
                const std::vector<int64_t> shape = {total, H, D};
                if (i % 2 == 0) {
                    mgr.write(st, l, Tensor::from_host(g.first.ctx, k, shape, io),
                              Tensor::from_host(g.first.ctx, v, shape, io));
                } else {
                    const auto ks = split_heads(k, H, D, 2), vs = split_heads(v, H, D, 2);
                    std::vector<Tensor> kt, vt;
                    for (size_t d = 0; d < 2; ++d) {
                        kt.push_back(Tensor::from_host(*ctxs[d], ks[d], {total, H / 2, D}, io));
                        vt.push_back(Tensor::from_host(*ctxs[d], vs[d], {total, H / 2, D}, io));
                    }
                    mgr.write_shards(st, l, kt, vt);
                }
                if (is_quantized(c.dtype)) {
                    k = quantize_rows(c.dtype, DType::F32, k, D);
                    v = quantize_rows(c.dtype, DType::F32, v, D);
                }
                ref.write(ids, steps[i], l, k, v);

                // Attention: all heads on the first device vs each device's query heads.
                std::vector<float> q = random_values(size_t(total) * QH * D, rng, io);
                for (float& x : q)
                    x *= 0.25f;
                const Tensor all =
                    mgr.attention(st, l, Tensor::from_host(g.first.ctx, q, {total, QH, D}, io));
                const auto qs = split_heads(q, QH, D, 2);
                std::vector<Tensor> qt;
                for (size_t d = 0; d < 2; ++d)
                    qt.push_back(Tensor::from_host(*ctxs[d], qs[d], {total, QH / 2, D}, io));
                const std::vector<Tensor> parts = mgr.attention_shards(st, l, qt);
                REQUIRE(parts.size() == 2);
                const auto whole = split_heads(all.to_host(), QH, D, 2);
                for (size_t d = 0; d < 2; ++d) {
                    INFO("device " << d);
                    REQUIRE(parts[d].shape() == std::vector<int64_t>{total, QH / 2, D});
                    REQUIRE(bit_equal(parts[d].to_host(), whole[d]));
                }
            }
        }
        const DType compute = *c.compute_dtype;
        auto rounded = [&](std::vector<float> x) {
            for (float& f : x)
                f = round_to(compute, f);
            return x;
        };
        for (SeqId id : {a, b})
            for (uint32_t l = 0; l < c.num_layers; ++l) {
                INFO("sequence " << id << " layer " << l);
                const auto wk = rounded(ref.keys(id, l)), wv = rounded(ref.values(id, l));
                auto [k, v] = mgr.gather(id, l);
                REQUIRE(bit_equal(k.to_host(), wk));
                REQUIRE(bit_equal(v.to_host(), wv));
                // (heads, length, dim): each device's heads are a contiguous part.
                const auto len = size_t(mgr.length(id));
                const auto wks = split_heads(wk, H, len * D, 2),
                           wvs = split_heads(wv, H, len * D, 2);
                const auto shards = mgr.gather_shards(id, l);
                REQUIRE(shards.size() == 2);
                for (size_t d = 0; d < 2; ++d) {
                    INFO("device " << d);
                    REQUIRE(shards[d].first.shape() ==
                            std::vector<int64_t>{H / 2, int64_t(len), D});
                    REQUIRE(bit_equal(shards[d].first.to_host(), wks[d]));
                    REQUIRE(bit_equal(shards[d].second.to_host(), wvs[d]));
                }
            }
        // Copy-on-write on both devices: a fork written past a shared page.
        const SeqId f = mgr.fork(a);
        ref.fork(a, f);
        {
            Step st = mgr.begin_step(std::vector<SeqId>{f}, std::vector<uint32_t>{1});
            ref.begin_step({f}, {1});
            for (uint32_t l = 0; l < c.num_layers; ++l) {
                auto k = random_values(size_t(H) * D, rng, io), v = random_values(H * D, rng, io);
                mgr.write(st, l, Tensor::from_host(g.first.ctx, k, {1, H, D}, io),
                          Tensor::from_host(g.first.ctx, v, {1, H, D}, io));
                if (is_quantized(c.dtype)) {
                    k = quantize_rows(c.dtype, DType::F32, k, D);
                    v = quantize_rows(c.dtype, DType::F32, v, D);
                }
                ref.write({f}, {1}, l, k, v);
            }
        }
        for (SeqId id : {a, f})
            for (uint32_t l = 0; l < c.num_layers; ++l) {
                auto [k, v] = mgr.gather(id, l);
                REQUIRE(bit_equal(k.to_host(), rounded(ref.keys(id, l))));
                REQUIRE(bit_equal(v.to_host(), rounded(ref.values(id, l))));
            }
        REQUIRE(pool.check() == "");
    }
}

TEST_CASE("a snapshot of a pool over two devices restores onto one device", "[gpu][devices]") {
    TwoDevices g;
    for (const DType dtype : {DType::F32, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        BlockPool pool(g.span(), config(dtype));
        DynamicKVCache cache(pool);
        CacheHarness h(g.first.ctx, pool, cache, 5);
        h.append(2, 7, 0);
        h.append(2, 7, 1);
        h.append(2, 3, 0);
        h.append(2, 3, 1);
        h.check();
        TempFile file("two-devices.snap");
        SnapshotOptions o;
        o.page_contents = true;
        save_snapshot(file.path, pool, {&cache}, o);
        RestoredSnapshot r = restore_snapshot(g.first.ctx, file.path);
        REQUIRE(r.pool->num_devices() == 1);
        REQUIRE(r.pool->validate());
        REQUIRE(r.caches.size() == 1);
        PagedKVCache& back = *r.caches[0];
        for (uint32_t l = 0; l < 2; ++l) {
            auto kv = back.get(l);
            auto want = cache.get(l);
            REQUIRE(kv);
            REQUIRE(want);
            REQUIRE(bit_equal(kv->first.to_host(), want->first.to_host()));
            REQUIRE(bit_equal(kv->second.to_host(), want->second.to_host()));
        }
    }
}

TEST_CASE("the per-device calls refuse bad tensors and change nothing", "[gpu][devices][errors]") {
    TwoDevices g;
    BlockPool pool(g.span(), config(DType::F32));
    KVManager mgr(pool);
    const SeqId a = mgr.add_sequence();
    Step st = mgr.begin_step(std::vector<SeqId>{a}, std::vector<uint32_t>{3});
    std::mt19937 rng(3);
    auto tensor = [&](Context& ctx, int64_t tokens, int64_t heads) {
        return Tensor::from_host(ctx, random_values(size_t(tokens * heads * 8), rng, DType::F32),
                                 {tokens, heads, 8}, DType::F32);
    };
    for (uint32_t l = 0; l < 2; ++l)
        mgr.write(st, l, tensor(g.first.ctx, 3, 4), tensor(g.first.ctx, 3, 4));
    const auto before = mgr.gather(a, 0).first.to_host();
    const auto stats = pool.stats();
    const std::vector<Tensor> ok = {tensor(g.first.ctx, 3, 2), tensor(g.second.ctx, 3, 2)};
    const std::vector<Tensor> one = {tensor(g.first.ctx, 3, 2)};
    const std::vector<Tensor> swapped = {tensor(g.second.ctx, 3, 2), tensor(g.first.ctx, 3, 2)};
    const std::vector<Tensor> all_heads = {tensor(g.first.ctx, 3, 4), tensor(g.second.ctx, 3, 4)};
    const std::vector<Tensor> short_step = {tensor(g.first.ctx, 2, 2), tensor(g.second.ctx, 2, 2)};
    require_error([&] { mgr.write_shards(st, 0, one, one); }, ErrorCode::InvalidArgument,
                  "1 tensors for a pool over 2 devices");
    require_error([&] { mgr.write_shards(st, 0, ok, one); }, ErrorCode::InvalidArgument,
                  "1 tensors for a pool over 2 devices");
    require_error([&] { mgr.write_shards(st, 0, swapped, ok); }, ErrorCode::InvalidArgument,
                  "keys[0] lives on another Context than the pool's device 0");
    require_error([&] { mgr.write_shards(st, 0, ok, all_heads); }, ErrorCode::InvalidArgument,
                  "values[0] has 4 heads, pool layout has 2 kv heads");
    require_error([&] { mgr.write_shards(st, 0, short_step, ok); }, ErrorCode::InvalidArgument,
                  "keys[0] has 2 tokens, the step has 3");
    require_error([&] { mgr.write_shards(st, 2, ok, ok); }, ErrorCode::InvalidArgument,
                  "layer 2 out of range");
    require_error([&] { mgr.attention_shards(st, 0, one); }, ErrorCode::InvalidArgument,
                  "1 tensors for a pool over 2 devices");
    const std::vector<Tensor> uneven = {tensor(g.first.ctx, 3, 2), tensor(g.second.ctx, 3, 4)};
    require_error([&] { mgr.attention_shards(st, 0, uneven); }, ErrorCode::InvalidArgument,
                  "queries[1] has 4 heads, queries[0] 2");
    require_error([&] { mgr.attention_shards(st, 0, swapped); }, ErrorCode::InvalidArgument,
                  "queries[0] lives on another Context than the pool's device 0");
    require_error([&] { mgr.gather_shards(a + 7, 0); }, ErrorCode::InvalidArgument,
                  "gather_shards");
    require_error([&] { (void)st.view(0); }, ErrorCode::NotImplemented,
                  "a PagedView of a pool over 2 devices is not implemented");
    REQUIRE(bit_equal(mgr.gather(a, 0).first.to_host(), before));
    REQUIRE(pool.stats().used_blocks == stats.used_blocks);
    REQUIRE(pool.check() == "");
}

// Run by every registration of the GPU tests: under "pagedkv 2 devices" (--devices=2) the test
// pools really span two devices, so that run tests what it says.
TEST_CASE("the tests' pools span the devices the run asks for", "[gpu]") {
    ValidatedContext g;
    TestPool even(g.ctx, small_config(DType::F16, 1, 2));
    REQUIRE(even.num_devices() == test_devices());
    REQUIRE((even.second() != nullptr) == (test_devices() == 2));
    TestPool odd(g.ctx, small_config(DType::F16, 1, 1));  // one head cannot be split
    REQUIRE(odd.num_devices() == 1);
}

TEST_CASE("a sequence exported from a pool over two devices imports onto one, and back",
          "[gpu][devices]") {
    TwoDevices g;
    for (const DType dtype : {DType::BF16, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        PoolConfig c = config(dtype);
        c.num_host_blocks = 8;
        BlockPool two(g.span(), c);
        BlockPool one(g.first.ctx, c);
        KVManager from(two), to(one);
        const DType io = input_dtype(two.config());
        std::mt19937 rng(9);
        const SeqId a = from.add_sequence();
        {
            Step st = from.begin_step(std::vector<SeqId>{a}, std::vector<uint32_t>{11});
            for (uint32_t l = 0; l < c.num_layers; ++l) {
                const auto k = random_values(size_t(11) * 4 * 8, rng, io);
                from.write(st, l, Tensor::from_host(g.first.ctx, k, {11, 4, 8}, io),
                           Tensor::from_host(g.first.ctx, k, {11, 4, 8}, io));
            }
        }
        // Through the host tier first: swapped out, the sequence cannot be exported.
        from.swap_out(a);
        require_error([&] { (void)from.export_sequence(a); }, ErrorCode::InvalidArgument,
                      "swapped out to the host tier");
        from.swap_in(a);
        const SeqId b = to.import_sequence(from.export_sequence(a));
        const SeqId back = from.import_sequence(to.export_sequence(b));
        for (uint32_t l = 0; l < c.num_layers; ++l) {
            const auto [wk, wv] = from.gather(a, l);
            const auto [k1, v1] = to.gather(b, l);
            const auto [k2, v2] = from.gather(back, l);
            REQUIRE(bit_equal(k1.to_host(), wk.to_host()));
            REQUIRE(bit_equal(v1.to_host(), wv.to_host()));
            REQUIRE(bit_equal(k2.to_host(), wk.to_host()));
            REQUIRE(bit_equal(v2.to_host(), wv.to_host()));
        }
        REQUIRE(two.check() == "");
        REQUIRE(one.check() == "");
    }
}
