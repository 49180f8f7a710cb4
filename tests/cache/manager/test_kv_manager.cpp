// KVManager and Step: sequences by id under random engine traces (ragged steps, forks,
// truncation, frees) against the CPU reference bit for bit; a step's causal attention against
// CPU attention and, bit for bit, against the same kernel over contiguous K/V; admission,
// reservation and copy-on-write; every error path changing nothing; and a step of 64
// sequences over 32 layers being one submit with no per-layer upload.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <random>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "allocator/block_table.hpp"
#include "cache/manager/attention.hpp"
#include "cache/manager/step_plan.hpp"
#include "reference_quant.hpp"
#include "reference_sequences.hpp"
#include "shaders/vulkan/device.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

Tensor upload(Context& ctx, const std::vector<float>& data, std::vector<int64_t> shape, DType t) {
    return Tensor::from_host(ctx, data, std::move(shape), t);
}

// Every live sequence's length and every layer's K/V equal the reference's (a quantized
// pool's reference holds its dequantized f32 values: gathers round them to `compute`).
void check_all(KVManager& mgr, const ReferenceSequences& ref, uint32_t layers,
               std::optional<DType> compute = {}) {
    const std::vector<uint64_t> ids = ref.ids();
    REQUIRE(mgr.sequences() == ids);
    for (uint64_t id : ids) {
        REQUIRE(mgr.length(id) == ref.length(id));
        for (uint32_t l = 0; l < layers; ++l) {
            auto [k, v] = mgr.gather(id, l);
            const auto gk = k.to_host(), gv = v.to_host();
            auto wk = ref.keys(id, l), wv = ref.values(id, l);
            if (compute)
                for (auto* w : {&wk, &wv})
                    for (float& x : *w)
                        x = round_to(*compute, x);
            INFO("sequence " << id << " layer " << l);
            INFO("K: " << first_difference(gk, wk) << ", V: " << first_difference(gv, wv));
            REQUIRE(bit_equal(gk, wk));
            REQUIRE(bit_equal(gv, wv));
        }
    }
}

double tolerance(DType t) {
    return t == DType::F32 ? 1e-4 : t == DType::F16 ? 4e-3 : 2e-2;
}

}  // namespace

TEST_CASE("step planning: appended pages and copies of the shared pages a step writes") {
    BlockAllocator alloc(16);
    BlockTable a(alloc);
    std::vector<BlockId> fresh;
    alloc.allocate(2, fresh);
    a.adopt_back(fresh);  // 2 pages of 4 slots: 6 tokens, the second page half full
    BlockTable b = a.fork();
    const BlockTable* tables[] = {&a, &b};
    const int64_t lengths[] = {6, 6};
    SECTION("a write into the shared half-full page copies it; a new page is appended") {
        const uint32_t counts[] = {3, 0};
        const detail::GrowthPlan p = detail::plan_growth(tables, lengths, counts, 0, 4, alloc);
        REQUIRE(p.seqs[0].extra == 1);
        REQUIRE(p.seqs[0].copies == std::vector<size_t>{1});
        REQUIRE(p.seqs[1].extra == 0);
        REQUIRE(p.seqs[1].copies.empty());
        REQUIRE(p.needed == 2);
    }
    SECTION("lookahead reserves pages past the new tokens") {
        const uint32_t counts[] = {1, 2};
        const detail::GrowthPlan p = detail::plan_growth(tables, lengths, counts, 5, 4, alloc);
        REQUIRE(p.seqs[0].extra == 1);  // 6 + 1 + 5 = 12 slots: 3 pages
        REQUIRE(p.seqs[1].extra == 2);  // 6 + 2 + 5 = 13 slots: 4 pages
        REQUIRE(p.needed == 1 + 1 + 2 + 1);
    }
    SECTION("no new token and no lookahead needs nothing, even in a shared page") {
        const uint32_t counts[] = {0, 0};
        REQUIRE(detail::plan_growth(tables, lengths, counts, 0, 4, alloc).needed == 0);
    }
}

TEST_CASE("KVManager: random engine traces match the CPU reference bit for bit", "[kvmanager]") {
    for (DType dtype : kPoolDTypes)
        for (const PathMode& mode : kPathModes) {
            DYNAMIC_SECTION(to_string(dtype) << ", " << mode.name) {
                ValidatedContext vc;
                use_path(vc.ctx, mode);
                const PoolConfig c = small_config(dtype, 2, 2, 8, 4, 96);
                TestPool pool(vc.ctx, c);
                KVManager mgr(pool, {0.0});
                ReferenceSequences ref(c.num_layers, c.num_kv_heads, c.head_dim, c.head_dim);
                std::mt19937 rng(7 + unsigned(dtype) * 3 + unsigned(&mode - kPathModes));
                auto pick = [&](const std::vector<uint64_t>& ids) {
                    return ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng)];
                };
                for (int round = 0; round < 40; ++round) {
                    const std::vector<uint64_t> ids = ref.ids();
                    const int op = std::uniform_int_distribution<int>(0, 9)(rng);
                    if (ids.size() < 2 || op == 0) {
                        const SeqId id = mgr.add_sequence();
                        ref.add(id);
                    } else if (op == 1) {
                        const uint64_t from = pick(ids);
                        const SeqId id = mgr.fork(from);
                        ref.fork(from, id);
                    } else if (op == 2) {
                        const uint64_t id = pick(ids);
                        const int64_t len = std::uniform_int_distribution<int64_t>(-5, 12)(rng);
                        mgr.truncate(id, len);
                        ref.truncate(id, len);
                    } else if (op == 3 && ids.size() > 3) {
                        const uint64_t id = pick(ids);
                        mgr.free(id);
                        ref.free(id);
                    } else {
                        std::vector<uint64_t> seqs = ids;
                        std::shuffle(seqs.begin(), seqs.end(), rng);
                        seqs.resize(std::min<size_t>(seqs.size(), 4));
                        std::vector<uint32_t> counts;
                        for (size_t i = 0; i < seqs.size(); ++i)
                            counts.push_back(std::uniform_int_distribution<uint32_t>(
                                0, ref.length(seqs[i]) == 0 ? 9 : 3)(rng));
                        const std::vector<SeqId> sids(seqs.begin(), seqs.end());
                        if (mgr.pages_needed(sids, counts) > pool.stats().free_blocks) continue;
                        Step st = mgr.begin_step(sids, counts);
                        ref.begin_step(seqs, counts);
                        const uint32_t total = st.total_tokens();
                        for (uint32_t l = 0; l < c.num_layers; ++l) {
                            // Quantized pools: input in the compute dtype, the reference
                            // keeps the reference quantizer's values.
                            const DType in = input_dtype(pool.config());
                            const auto k = random_values(size_t(total) * 2 * 8, rng, in);
                            const auto v = random_values(size_t(total) * 2 * 8, rng, in);
                            mgr.write(st, l, upload(vc.ctx, k, {total, 2, 8}, in),
                                      upload(vc.ctx, v, {total, 2, 8}, in));
                            ref.write(seqs, counts, l, stored_values(pool.config(), k, 8),
                                      stored_values(pool.config(), v, 8));
                        }
                        mgr.end_step(std::move(st));
                    }
                    INFO("round " << round << ", op " << op);
                    REQUIRE(pool.check() == "");
                    if (round % 8 == 7) check_all(mgr, ref, c.num_layers);
                }
                check_all(mgr, ref, c.num_layers);
            }
        }
}

TEST_CASE("KVManager::attention: prefill, chunked prefill and decode in one ragged step",
          "[kvmanager]") {
    // Quantized pools: K/V and the query in the compute dtype (f16 by default; f32 for the FP8
    // pool), the pages read directly, checked against CPU attention over the reference-
    // dequantized K/V with and without split-K (the float kernel over contiguous K/V is not
    // the same arithmetic).
    struct Case {
        DType dtype;
        std::optional<DType> compute;
        uint32_t chunk_tokens;  // the attention path forced (0: the host's rule)
        bool no_subgroups;
    };
    const Case cases[] = {{DType::F32, {}, 0, false},
                          {DType::F16, {}, 0, false},
                          {DType::BF16, {}, 0, false},
                          {DType::Int8, {}, 0, false},
                          {DType::Int8, {}, 4, true},
                          {DType::FP8E4M3, DType::F32, 0, false},
                          {DType::FP8E4M3, DType::F32, 4, false}};
    for (const Case& cs : cases) {
        const DType dtype = cs.dtype;
        DYNAMIC_SECTION(to_string(dtype)
                        << (cs.compute ? std::string(", compute ") + to_string(*cs.compute)
                                       : std::string())
                        << (cs.chunk_tokens ? ", split into 4-token chunks" : "")
                        << (cs.no_subgroups ? ", shared-memory reductions" : "")) {
            ValidatedContext vc;
            PoolConfig c = small_config(dtype, 2, 2, 8, 4, 64);
            c.compute_dtype = cs.compute;
            TestPool pool(vc.ctx, c);
            const bool quant = is_quantized(dtype);
            const DType io = *pool.config().compute_dtype;  // K/V, query and output
            set_attention_paths(vc.ctx, {cs.no_subgroups, cs.chunk_tokens});
            KVManager mgr(pool);
            const uint32_t H = 2, D = 8, QH = 4;
            ReferenceSequences ref(2, H, D, D);
            std::mt19937 rng(11);
            const SeqId a = mgr.add_sequence(), b = mgr.add_sequence(), d = mgr.add_sequence();
            for (SeqId id : {a, b, d})
                ref.add(id);
            auto step = [&](std::vector<SeqId> seqs, std::vector<uint32_t> counts, bool attend) {
                Step st = mgr.begin_step(seqs, counts);
                const std::vector<uint64_t> ids(seqs.begin(), seqs.end());
                ref.begin_step(ids, counts);
                const uint32_t T = st.total_tokens();
                for (uint32_t l = 0; l < 2; ++l) {
                    const auto k = random_values(size_t(T) * H * D, rng, io);
                    const auto v = random_values(size_t(T) * H * D, rng, io);
                    mgr.write(st, l, upload(vc.ctx, k, {T, H, D}, io),
                              upload(vc.ctx, v, {T, H, D}, io));
                    if (quant)
                        ref.write(ids, counts, l, quantize_rows(dtype, DType::F32, k, D),
                                  quantize_rows(dtype, DType::F32, v, D));
                    else
                        ref.write(ids, counts, l, k, v);
                    if (!attend) continue;
                    const auto q = random_values(size_t(T) * QH * D, rng, io);
                    const Tensor out =
                        mgr.attention(st, l, upload(vc.ctx, q, {T, QH, D}, io), 0.0f);
                    REQUIRE(out.shape() == std::vector<int64_t>{T, QH, D});
                    REQUIRE(out.dtype() == io);
                    const std::vector<float> got = out.to_host();
                    // The same kernel over contiguous K/V: row t holds its sequence's first
                    // position + 1 tokens.
                    const uint32_t L = uint32_t(*std::max_element(st.first_positions().begin(),
                                                                  st.first_positions().end()) +
                                                *std::max_element(counts.begin(), counts.end()));
                    std::vector<float> ck(size_t(T) * H * L * D, 0.0f), cv(ck.size(), 0.0f);
                    std::vector<int64_t> lens;
                    const float scale = 1.0f / std::sqrt(float(D));
                    uint32_t t = 0;
                    for (size_t i = 0; i < seqs.size(); ++i)
                        for (uint32_t j = 0; j < counts[i]; ++j, ++t) {
                            const int64_t n = st.first_positions()[i] + j + 1;
                            lens.push_back(n);
                            const auto& rk = ref.raw_keys(seqs[i], l);
                            const auto& rv = ref.raw_values(seqs[i], l);
                            for (int64_t s = 0; s < n; ++s)
                                for (uint32_t h = 0; h < H; ++h)
                                    for (uint32_t x = 0; x < D; ++x) {
                                        const size_t dst = ((size_t(t) * H + h) * L + s) * D + x;
                                        ck[dst] = rk[(size_t(s) * H + h) * D + x];
                                        cv[dst] = rv[(size_t(s) * H + h) * D + x];
                                    }
                            const auto want = causal_attention_row(&q[size_t(t) * QH * D], rk, rv,
                                                                   n, QH, H, D, D, scale);
                            for (size_t e = 0; e < want.size(); ++e)
                                REQUIRE(std::abs(double(got[t * QH * D + e]) - want[e]) <=
                                        tolerance(io) * std::max(1.0, std::abs(want[e])));
                        }
                    if (quant) continue;
                    const Tensor same = detail::contiguous_attention(
                        upload(vc.ctx, q, {T, QH, 1, D}, dtype),
                        upload(vc.ctx, ck, {T, H, L, D}, dtype),
                        upload(vc.ctx, cv, {T, H, L, D}, dtype), lens, 0.0f);
                    const std::vector<float> want = same.to_host();
                    INFO(first_difference(got, want));
                    REQUIRE(bit_equal(got, want));
                }
            };
            step({a, d}, {5, 13}, false);
            // a: chunked prefill (5 -> 12), b: prefill from nothing (9), d: decode (13 -> 14).
            step({a, b, d}, {7, 9, 1}, true);
            // Decode for all three, and a sequence in the step with no new token.
            const SeqId e = mgr.add_sequence();
            ref.add(e);
            step({d, e, a, b}, {1, 0, 1, 1}, true);
            check_all(mgr, ref, 2, quant ? std::optional<DType>(io) : std::nullopt);
            set_attention_paths(vc.ctx, {});
        }
    }
}

TEST_CASE("KVManager: admission, reservation, copy-on-write and rollback", "[kvmanager]") {
    ValidatedContext vc;
    for (DType dtype : {DType::F32, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        PoolConfig c = small_config(dtype, 2, 2, 8, 4, 20);
        c.compute_dtype = DType::F32;  // F32 K/V into the quantized pool too
        TestPool pool(vc.ctx, c);
        KVManager mgr(pool, {0.25});  // keep 5 of 20 pages for running sequences
        const SeqId a = mgr.add_sequence();
        const uint32_t big[] = {60};  // 15 pages: 20 - 15 = 5 left, as the watermark wants
        const SeqId one[] = {a};
        REQUIRE(mgr.pages_needed(one, big) == 15);
        REQUIRE(mgr.can_allocate(one, big));
        const uint32_t bigger[] = {61};  // 16 pages would leave 4
        REQUIRE_FALSE(mgr.can_allocate(one, bigger));
        // allocate() itself ignores the watermark (it serves running sequences).
        const uint32_t six[] = {6};
        mgr.allocate(one, six, 3);  // 9 slots: 3 pages reserved
        REQUIRE(mgr.block_table(a).size() == 3);
        REQUIRE(mgr.length(a) == 0);
        REQUIRE(pool.stats().used_blocks == 3);
        {
            Step st = mgr.begin_step(one, six);  // within the reservation: no new page
            REQUIRE(pool.stats().used_blocks == 3);
            REQUIRE(mgr.length(a) == 6);
            std::vector<float> k(6 * 16);
            for (size_t i = 0; i < k.size(); ++i)
                k[i] = float(i);
            for (uint32_t l = 0; l < 2; ++l)
                mgr.write(st, l, upload(vc.ctx, k, {6, 2, 8}, DType::F32),
                          upload(vc.ctx, k, {6, 2, 8}, DType::F32));
        }
        // The lookahead page stays reserved after the step.
        REQUIRE(mgr.block_table(a).size() == 3);
        const SeqId f = mgr.fork(a);  // shares the 2 pages holding tokens, not the reserved one
        REQUIRE(mgr.block_table(f).size() == 2);
        REQUIRE(pool.stats().shared_blocks == 2);
        const auto parent_k = mgr.gather(a, 1).first.to_host();
        {
            const SeqId two[] = {f};
            const uint32_t n[] = {1};
            Step st = mgr.begin_step(two, n);  // writes into the shared half-full page: one copy
            REQUIRE(pool.stats().shared_blocks == 1);
            REQUIRE(pool.stats().pages_copied == 1);
            std::vector<float> k(16, -1.0f);
            for (uint32_t l = 0; l < 2; ++l)
                mgr.write(st, l, upload(vc.ctx, k, {1, 2, 8}, DType::F32),
                          upload(vc.ctx, k, {1, 2, 8}, DType::F32));
        }
        REQUIRE(bit_equal(mgr.gather(a, 1).first.to_host(), parent_k));
        REQUIRE(mgr.length(f) == 7);
        // Speculative rollback: 4 draft tokens, 3 rejected.
        {
            const SeqId two[] = {f};
            const uint32_t n[] = {4};
            Step st = mgr.begin_step(two, n);
            REQUIRE(mgr.length(f) == 11);
        }
        mgr.truncate(f, -3);
        REQUIRE(mgr.length(f) == 8);
        REQUIRE(mgr.block_table(f).size() == 2);
        mgr.free(a);
        mgr.free(f);
        REQUIRE(pool.stats().used_blocks == 0);
        REQUIRE(pool.validate());
    }
}

TEST_CASE("KVManager: every error is clear and changes nothing", "[kvmanager][errors]") {
    ValidatedContext vc;
    for (DType dtype : {DType::F16, DType::Int8}) {  // Int8: F16 compute
        INFO("dtype " << to_string(dtype));
        const PoolConfig c = small_config(dtype, 2, 2, 8, 4, 8);
        TestPool pool(vc.ctx, c);
        KVManager mgr(pool);
        const SeqId a = mgr.add_sequence(), b = mgr.add_sequence();
        std::mt19937 rng(3);
        {
            const SeqId ids[] = {a, b};
            const uint32_t n[] = {5, 3};
            Step st = mgr.begin_step(ids, n);
            for (uint32_t l = 0; l < 2; ++l)
                mgr.write(
                    st, l,
                    upload(vc.ctx, random_values(8 * 16, rng, DType::F16), {8, 2, 8}, DType::F16),
                    upload(vc.ctx, random_values(8 * 16, rng, DType::F16), {8, 2, 8}, DType::F16));
        }
        struct State {
            std::vector<SeqId> seqs;
            std::vector<int64_t> lengths;
            std::vector<std::vector<uint32_t>> tables;
            std::vector<std::vector<float>> kv;
            uint64_t used;
            bool operator==(const State&) const = default;
        };
        auto state = [&] {
            State s;
            s.seqs = mgr.sequences();
            for (SeqId id : s.seqs) {
                s.lengths.push_back(mgr.length(id));
                s.tables.push_back(mgr.block_table(id));
                for (uint32_t l = 0; l < 2; ++l) {
                    auto [k, v] = mgr.gather(id, l);
                    s.kv.push_back(k.to_host());
                    s.kv.push_back(v.to_host());
                }
            }
            s.used = pool.stats().used_blocks;
            return s;
        };
        const State before = state();
        auto expect = [&](auto&& f, ErrorCode code, const char* text) {
            require_error(f, code, text);
            REQUIRE(state() == before);
            REQUIRE(pool.validate());
        };
        const SeqId ab[] = {a, b};
        const SeqId aa[] = {a, a};
        const SeqId unknown[] = {a, 99};
        const uint32_t two[] = {1, 1};
        const uint32_t one[] = {1};
        const uint32_t huge[] = {40, 1};  // 10 pages for a, the pool has 8 - 3 = 5 free
        expect([&] { mgr.length(99); }, ErrorCode::InvalidArgument, "unknown sequence 99");
        expect([&] { mgr.free(99); }, ErrorCode::InvalidArgument, "free: unknown sequence 99");
        expect([&] { mgr.fork(99); }, ErrorCode::InvalidArgument, "fork: unknown sequence 99");
        expect([&] { mgr.truncate(99, 1); }, ErrorCode::InvalidArgument, "unknown sequence");
        expect([&] { mgr.gather(a, 2); }, ErrorCode::InvalidArgument, "layer 2 out of range");
        expect([&] { mgr.allocate(ab, one); }, ErrorCode::InvalidArgument, "2 sequences but 1");
        expect([&] { mgr.allocate(aa, two); }, ErrorCode::InvalidArgument, "listed twice");
        expect([&] { mgr.allocate(unknown, two); }, ErrorCode::InvalidArgument,
               "unknown sequence 99");
        expect([&] { mgr.can_allocate(unknown, two); }, ErrorCode::InvalidArgument, "unknown");
        expect([&] { mgr.begin_step(unknown, two); }, ErrorCode::InvalidArgument, "unknown");
        expect([&] { mgr.allocate(ab, huge); }, ErrorCode::OutOfBlocks,
               "needs 10 pages (sequence 1: 10), the pool has 5 free");
        expect([&] { mgr.begin_step(ab, huge); }, ErrorCode::OutOfBlocks, "sequence 1: 10");
        expect([&] { KVManager bad(pool, {1.5}); }, ErrorCode::InvalidArgument, "watermark");

        // A step's calls: bad tensors, a stale step, an empty step.
        Step st = mgr.begin_step(ab, two);
        State stepped = state();
        auto expect_step = [&](auto&& f, const char* text) {
            try {
                f();
                FAIL("no error for: " << text);
            } catch (const Error& e) {
                INFO(e.what());
                REQUIRE(e.code() == ErrorCode::InvalidArgument);
                REQUIRE_THAT(e.what(), Catch::Contains(text));
            }
            REQUIRE(state() == stepped);
        };
        const Tensor good =
            upload(vc.ctx, random_values(32, rng, DType::F16), {2, 2, 8}, DType::F16);
        const Tensor three =
            upload(vc.ctx, random_values(48, rng, DType::F16), {3, 2, 8}, DType::F16);
        const Tensor heads =
            upload(vc.ctx, random_values(64, rng, DType::F16), {2, 4, 8}, DType::F16);
        const Tensor four_d =
            upload(vc.ctx, random_values(32, rng, DType::F16), {2, 2, 1, 8}, DType::F16);
        const Tensor qbad =
            upload(vc.ctx, random_values(48, rng, DType::F16), {2, 3, 8}, DType::F16);
        expect_step([&] { mgr.write(st, 0, three, good); }, "key has 3 tokens, the step has 2");
        expect_step([&] { mgr.write(st, 0, good, heads); }, "value has 4 heads");
        expect_step([&] { mgr.write(st, 0, four_d, good); },
                    "must be (total_tokens, heads, head_dim)");
        // (A key of another float dtype is converted, not refused: test_convert.cpp.)
        expect_step([&] { mgr.write(st, 5, good, good); }, "layer 5 out of range");
        expect_step([&] { mgr.write(st, 0, Tensor(), good); }, "key is undefined");
        expect_step([&] { mgr.attention(st, 0, qbad); }, "query has 3 heads");
        expect_step([&] { (void)st.view(9); }, "layer 9 out of range");
        mgr.write(st, 0, good, good);
        const SeqId fresh = mgr.add_sequence();  // adding a sequence does not touch the step's
        mgr.write(st, 1, good, good);
        REQUIRE(mgr.attention(st, 1, heads).shape() == std::vector<int64_t>{2, 4, 8});
        mgr.free(fresh);  // frees change sequences: the step is stale now
        stepped = state();
        expect_step([&] { mgr.write(st, 0, good, good); }, "the step is stale");
        expect_step([&] { mgr.attention(st, 0, good); }, "the step is stale");
        Step moved = std::move(st);
        expect_step([&] { mgr.write(st, 0, good, good); }, "the step is empty");
    }
}

TEST_CASE("KVManager: a step of 64 sequences over 32 layers is one submit, no per-layer upload",
          "[kvmanager][submits]") {
    ValidatedContext vc;
    for (const PathMode& mode : kPathModes) {
        DYNAMIC_SECTION(mode.name) {
            use_path(vc.ctx, mode);
            const PoolConfig c = small_config(DType::F16, 32, 2, 8, 16, 160);
            TestPool pool(vc.ctx, c);
            KVManager mgr(pool);
            std::vector<SeqId> seqs;
            for (int i = 0; i < 64; ++i)
                seqs.push_back(mgr.add_sequence());
            std::vector<uint32_t> prompt(64), decode(64, 1);
            for (int i = 0; i < 64; ++i)
                prompt[size_t(i)] = uint32_t(5 + i % 7);
            std::mt19937 rng(5);
            for (const auto* counts : {&prompt, &decode}) {
                vc.ctx.synchronize();
                Step st = mgr.begin_step(seqs, *counts);
                const uint32_t T = st.total_tokens();
                const Tensor k = upload(vc.ctx, random_values(size_t(T) * 16, rng, DType::F16),
                                        {T, 2, 8}, DType::F16);
                const Tensor q = upload(vc.ctx, random_values(size_t(T) * 32, rng, DType::F16),
                                        {T, 4, 8}, DType::F16);
                vc.ctx.synchronize();  // the inputs' uploads are not the step's
                const DeviceCounters mid = vc.ctx.counters();
                for (uint32_t l = 0; l < 32; ++l) {
                    mgr.write(st, l, k, k);
                    (void)mgr.attention(st, l, q);
                }
                const DeviceCounters recorded = vc.ctx.counters();
                REQUIRE(recorded.submits == mid.submits);
                REQUIRE(recorded.uploads == mid.uploads);
                vc.ctx.synchronize();
                REQUIRE(vc.ctx.counters().submits == mid.submits + 1);
            }
            REQUIRE(pool.validate());
        }
    }
}

TEST_CASE("KVManager: snapshots record a manager's sequences as a dynamic cache's rows",
          "[kvmanager]") {
    ValidatedContext vc;
    const PoolConfig c = small_config(DType::F32, 2, 2, 8, 4, 32);
    TestPool pool(vc.ctx, c);
    KVManager mgr(pool);
    DynamicKVCache cache(pool);
    std::mt19937 rng(9);
    cache.update(upload(vc.ctx, random_values(2 * 2 * 3 * 8, rng, DType::F32), shape4(2, 2, 3, 8),
                        DType::F32),
                 upload(vc.ctx, random_values(2 * 2 * 3 * 8, rng, DType::F32), shape4(2, 2, 3, 8),
                        DType::F32),
                 0);
    const SeqId a = mgr.add_sequence(), b = mgr.add_sequence();
    {
        const SeqId ids[] = {a, b};
        const uint32_t n[] = {6, 2};
        mgr.allocate(ids, n, 4);  // a reservation past the tokens is recorded too
        Step st = mgr.begin_step(ids, n);
        for (uint32_t l = 0; l < 2; ++l) {
            const Tensor k =
                upload(vc.ctx, random_values(8 * 16, rng, DType::F32), {8, 2, 8}, DType::F32);
            mgr.write(st, l, k, k);
        }
    }
    const SeqId f = mgr.fork(a);
    const std::string path = "kv_manager_snapshot.pkvs";
    const PagedKVCache* caches[] = {&cache};
    const KVManager* managers[] = {&mgr};
    try {
        save_snapshot(path, pool, caches, {}, {true});
        FAIL("a manager's pages were not explained");
    } catch (const Error& e) {
        REQUIRE_THAT(e.what(), Catch::Contains("caches not given; pass every cache and KVManager"));
    }
    save_snapshot(path, pool, caches, managers, {true});
    const DetailedStats stats = detailed_stats(pool, caches, managers);
    RestoredSnapshot r = restore_snapshot(vc.ctx, path);
    std::remove(path.c_str());
    REQUIRE(r.caches.size() == 2);
    REQUIRE(r.caches[1]->batch_size() == 3);  // a, b, f in id order
    REQUIRE(r.pool->stats().used_blocks == pool.stats().used_blocks);
    REQUIRE(r.pool->validate());
    const SeqId order[] = {a, b, f};
    for (uint32_t l = 0; l < 2; ++l) {
        const auto got = r.caches[1]->get(l)->first.to_host();  // (3, 2, 6, 8), padded
        for (uint32_t row = 0; row < 3; ++row) {
            const auto want = mgr.gather(order[row], l).first.to_host();  // (2, len, 8)
            const int64_t len = mgr.length(order[row]);
            REQUIRE(r.caches[1]->block_table(row) == mgr.block_table(order[row]));
            for (uint32_t h = 0; h < 2; ++h)
                for (int64_t t = 0; t < len; ++t)
                    for (uint32_t x = 0; x < 8; ++x)
                        REQUIRE(got[((row * 2 + h) * 6 + size_t(t)) * 8 + x] ==
                                want[(h * size_t(len) + size_t(t)) * 8 + x]);
        }
    }
    REQUIRE(stats.used_blocks == pool.stats().used_blocks);
    REQUIRE(stats.references == mgr.block_table(a).size() + mgr.block_table(b).size() +
                                    mgr.block_table(f).size() + cache.block_table(0).size() +
                                    cache.block_table(1).size());
}
