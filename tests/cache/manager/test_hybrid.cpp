// Hybrid models (PoolConfig::layer_windows): how layers are grouped onto pages; KVManager over
// sliding and full layers against the CPU reference bit for bit under random engine traces
// (each sliding layer holding its last `window` tokens, the full ones every token); a step's
// attention over each layer's window; a sliding group decoding forever in its own pages; the
// footprint of a Gemma 3-like layout at 32k tokens; snapshots of a manager and a DynamicKVCache
// restored bit for bit; and every error and refusal changing nothing.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>
#include <random>
#include <vector>

#include "allocator/layer_groups.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "reference_cache.hpp"
#include "reference_quant.hpp"
#include "reference_sequences.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

Tensor upload(Context& ctx, const std::vector<float>& data, std::vector<int64_t> shape, DType t) {
    return Tensor::from_host(ctx, data, std::move(shape), t);
}

PoolConfig hybrid_config(DType dtype, std::vector<uint32_t> windows, uint64_t blocks = 96) {
    PoolConfig c = small_config(dtype, uint32_t(windows.size()), 2, 8, 4, blocks);
    c.layer_windows = std::move(windows);
    return c;
}

// Every live sequence's length, each layer's held tokens and their K/V equal the reference's.
void check_all(KVManager& mgr, const ReferenceSequences& ref,
               const std::vector<uint32_t>& windows) {
    const std::vector<uint64_t> ids = ref.ids();
    REQUIRE(mgr.sequences() == ids);
    for (uint64_t id : ids) {
        REQUIRE(mgr.length(id) == ref.length(id));
        for (uint32_t l = 0; l < windows.size(); ++l) {
            INFO("sequence " << id << " layer " << l << " window " << windows[l]);
            const int64_t first = ref.first_held(id, l);
            REQUIRE(mgr.mask_range(id, l) ==
                    std::pair<int64_t, int64_t>{first, ref.length(id) - first});
            REQUIRE(mgr.held(id, l) == ref.length(id) - first);
            auto [k, v] = mgr.gather(id, l);
            REQUIRE(k.shape()[1] == ref.length(id) - first);
            const auto gk = k.to_host(), gv = v.to_host();
            const auto wk = ref.keys(id, l), wv = ref.values(id, l);
            INFO("K: " << first_difference(gk, wk) << ", V: " << first_difference(gv, wv));
            REQUIRE(bit_equal(gk, wk));
            REQUIRE(bit_equal(gv, wv));
        }
    }
}

}  // namespace

TEST_CASE("LayerGroups: kinds of layers cut into groups of the smallest kind's size",
          "[allocator][hybrid]") {
    // Gemma 3-like: 34 layers, every sixth full attention (5 full, 29 sliding of 1024).
    std::vector<uint32_t> w(34, 1024);
    for (uint32_t l = 5; l < 34; l += 6)
        w[l] = 0;
    const LayerGroups g = LayerGroups::make(34, w);
    CHECK(g.per_page == 5);
    REQUIRE(g.num_groups() == 7);  // the full layers, then 29 sliding ones as 5+5+5+5+5+4
    CHECK(g.window == std::vector<uint32_t>{0, 1024, 1024, 1024, 1024, 1024, 1024});
    CHECK(g.layers[0] == std::vector<uint32_t>{5, 11, 17, 23, 29});
    CHECK(g.layers[6].size() == 4);
    CHECK(g.hybrid());
    std::vector<int> seen(34, 0);
    for (uint32_t k = 0; k < g.num_groups(); ++k)
        for (size_t i = 0; i < g.layers[k].size(); ++i) {
            const uint32_t l = g.layers[k][i];
            ++seen[l];
            CHECK(g.group_of[l] == k);
            CHECK(g.slot_of[l] == i);
            CHECK(g.window_of(l) == w[l]);
        }
    CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));

    // No windows: one group of every layer, not hybrid.
    const LayerGroups plain = LayerGroups::make(3, {});
    CHECK(plain.per_page == 3);
    CHECK(plain.num_groups() == 1);
    CHECK_FALSE(plain.hybrid());
    CHECK(check_layer_windows(3, std::vector<uint32_t>{0, 4}).has_value());
    CHECK_FALSE(check_layer_windows(3, std::vector<uint32_t>{0, 4, 0}).has_value());
}

TEST_CASE("Hybrid pool: pages hold one group's layers, and bad windows are refused",
          "[gpu][hybrid][errors]") {
    ValidatedContext vc;
    BlockPool plain(vc.ctx, small_config(DType::F16, 4));
    BlockPool hybrid(vc.ctx, hybrid_config(DType::F16, {0, 8, 8, 0}));
    CHECK(hybrid.stats().block_bytes * 2 == plain.stats().block_bytes);
    CHECK(hybrid.config().layer_windows == std::vector<uint32_t>{0, 8, 8, 0});
    // Every layer full attention is the plain layout.
    BlockPool zeros(vc.ctx, hybrid_config(DType::F16, {0, 0, 0, 0}));
    CHECK(zeros.stats().block_bytes == plain.stats().block_bytes);
    CHECK(zeros.config().layer_windows.empty());
    PoolConfig bad = hybrid_config(DType::F16, {0, 8, 8});
    bad.num_layers = 4;
    try {
        BlockPool p(vc.ctx, bad);
        FAIL("a pool with 3 windows for 4 layers was made");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::InvalidArgument);
        CHECK(std::string(e.what()).find("layer_windows has 3 entries") != std::string::npos);
    }
}

TEST_CASE("KVManager over sliding and full layers: random traces match the reference bit for bit",
          "[gpu][hybrid][kvmanager]") {
    const std::vector<std::vector<uint32_t>> layouts = {
        {0, 6, 6, 0},         // Gemma 2-like: one sliding group, one full
        {5, 0, 9, 5, 0, 9}};  // two windows and full layers: three groups
    for (DType dtype : kPoolDTypes)
        for (const auto& windows : layouts) {
            DYNAMIC_SECTION(to_string(dtype) << ", " << windows.size() << " layers") {
                ValidatedContext vc;
                const PoolConfig c = hybrid_config(dtype, windows, 160);
                BlockPool pool(vc.ctx, c);
                KVManager mgr(pool, {0.0});
                ReferenceSequences ref(c.num_layers, 2, 8, 8);
                ref.set_windows(windows);
                std::mt19937 rng(17 + unsigned(dtype) * 5 + unsigned(windows.size()));
                auto pick = [&](const std::vector<uint64_t>& ids) {
                    return ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng)];
                };
                int refused = 0;
                for (int round = 0; round < 50; ++round) {
                    const std::vector<uint64_t> ids = ref.ids();
                    const int op = std::uniform_int_distribution<int>(0, 9)(rng);
                    if (ids.size() < 2 || op == 0) {
                        ref.add(mgr.add_sequence());
                    } else if (op == 1) {
                        const uint64_t from = pick(ids);
                        ref.fork(from, mgr.fork(from));
                    } else if (op == 2) {
                        const uint64_t id = pick(ids);
                        const int64_t len = std::uniform_int_distribution<int64_t>(-4, 30)(rng);
                        const auto before = pool.stats();
                        try {
                            mgr.truncate(id, len);
                            ref.truncate(id, len);
                        } catch (const Error& e) {
                            // Only a sliding layer whose window's pages are gone refuses.
                            REQUIRE(e.code() == ErrorCode::InvalidArgument);
                            REQUIRE(std::string(e.what()).find("left the window") !=
                                    std::string::npos);
                            REQUIRE(pool.stats().used_blocks == before.used_blocks);
                            ++refused;
                        }
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
                                0, ref.length(seqs[i]) == 0 ? 14 : 4)(rng));
                        const std::vector<SeqId> sids(seqs.begin(), seqs.end());
                        if (mgr.pages_needed(sids, counts) > pool.stats().free_blocks) continue;
                        Step st = mgr.begin_step(sids, counts);
                        ref.begin_step(seqs, counts);
                        const uint32_t total = st.total_tokens();
                        const DType in = input_dtype(pool.config());
                        for (uint32_t l = 0; l < c.num_layers; ++l) {
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
                    if (round % 10 == 9) check_all(mgr, ref, windows);
                }
                check_all(mgr, ref, windows);
                // Every sliding layer's table holds at most its window's pages (+1 straddling,
                // +1 for the tokens of the last step before its release).
                for (uint64_t id : ref.ids())
                    for (uint32_t l = 0; l < windows.size(); ++l)
                        if (windows[l])
                            CHECK(mgr.block_table(id, l).size() <=
                                  size_t((windows[l] + 3) / 4 + 1 + (14 + 3) / 4));
                UNSCOPED_INFO("truncations refused: " << refused);
            }
        }
}

TEST_CASE("KVManager::attention over a hybrid pool: each layer attends over its window",
          "[gpu][hybrid][kvmanager]") {
    for (DType dtype : {DType::F32, DType::F16, DType::Int8}) {
        DYNAMIC_SECTION(to_string(dtype)) {
            ValidatedContext vc;
            const std::vector<uint32_t> windows = {5, 0, 5, 0};
            const PoolConfig c = hybrid_config(dtype, windows);
            BlockPool pool(vc.ctx, c);
            const DType io = *pool.config().compute_dtype;
            KVManager mgr(pool);
            const uint32_t H = 2, D = 8, QH = 4;
            ReferenceSequences ref(4, H, D, D);
            ref.set_windows(windows);
            std::mt19937 rng(23);
            const SeqId a = mgr.add_sequence(), b = mgr.add_sequence();
            ref.add(a);
            ref.add(b);
            auto step = [&](std::vector<SeqId> seqs, std::vector<uint32_t> counts) {
                Step st = mgr.begin_step(seqs, counts);
                const std::vector<uint64_t> ids(seqs.begin(), seqs.end());
                ref.begin_step(ids, counts);
                const uint32_t T = st.total_tokens();
                for (uint32_t l = 0; l < 4; ++l) {
                    const auto k = random_values(size_t(T) * H * D, rng, io);
                    const auto v = random_values(size_t(T) * H * D, rng, io);
                    mgr.write(st, l, upload(vc.ctx, k, {T, H, D}, io),
                              upload(vc.ctx, v, {T, H, D}, io));
                    // (Quantized pages: the reference's dequantized f32 values, as attention
                    // reads them.)
                    if (is_quantized(dtype))
                        ref.write(ids, counts, l, quantize_rows(dtype, DType::F32, k, D),
                                  quantize_rows(dtype, DType::F32, v, D));
                    else
                        ref.write(ids, counts, l, k, v);
                    const auto q = random_values(size_t(T) * QH * D, rng, io);
                    const std::vector<float> got =
                        mgr.attention(st, l, upload(vc.ctx, q, {T, QH, D}, io)).to_host();
                    uint32_t t = 0;
                    for (size_t i = 0; i < seqs.size(); ++i)
                        for (uint32_t j = 0; j < counts[i]; ++j, ++t) {
                            const int64_t pos = st.first_positions()[i] + j;
                            const int64_t from =
                                windows[l] ? std::max<int64_t>(0, pos - windows[l] + 1) : 0;
                            const auto want = causal_attention_row(
                                &q[size_t(t) * QH * D], ref.raw_keys(seqs[i], l),
                                ref.raw_values(seqs[i], l), pos + 1, QH, H, D, D,
                                1.0f / std::sqrt(float(D)), from);
                            INFO("layer " << l << " sequence " << i << " position " << pos);
                            for (size_t e = 0; e < want.size(); ++e)
                                REQUIRE(std::abs(double(got[t * QH * D + e]) - want[e]) <=
                                        (io == DType::F32 ? 1e-4 : 4e-3) *
                                            std::max(1.0, std::abs(want[e])));
                        }
                    // A step's view of a sliding layer says where its rows start and the window.
                    const PagedView view = st.view(l);
                    CHECK(view.window == windows[l]);
                    REQUIRE(view.first_positions.size() == seqs.size());
                }
            };
            step({a, b}, {13, 3});  // a prefill longer than the window: early tokens see theirs
            step({a, b}, {1, 9});
            for (int i = 0; i < 12; ++i)
                step({a, b}, {1, 1});  // decode: the window slides over page boundaries
            step({b, a}, {6, 2});
            if (!is_quantized(dtype)) check_all(mgr, ref, windows);
        }
    }
}

TEST_CASE("Hybrid pool: a sliding group decodes forever in its own pages", "[gpu][hybrid]") {
    ValidatedContext vc;
    // Only sliding layers, window 8 in pages of 4 tokens, and a pool of 4 pages: 2000 tokens of
    // decode go through 500 pages' worth of tokens.
    const PoolConfig c = hybrid_config(DType::F32, {8, 8}, 4);
    BlockPool pool(vc.ctx, c);
    KVManager mgr(pool);
    ReferenceSequences ref(2, 2, 8, 8);
    ref.set_windows({8, 8});
    std::mt19937 rng(5);
    const SeqId s = mgr.add_sequence();
    ref.add(s);
    uint64_t most = 0;
    for (int t = 0; t < 2000; ++t) {
        Step st = mgr.begin_step(std::vector<SeqId>{s}, std::vector<uint32_t>{1});
        ref.begin_step({s}, {1});
        for (uint32_t l = 0; l < 2; ++l) {
            const auto k = random_values(16, rng, DType::F32);
            const auto v = random_values(16, rng, DType::F32);
            mgr.write(st, l, upload(vc.ctx, k, {1, 2, 8}, DType::F32),
                      upload(vc.ctx, v, {1, 2, 8}, DType::F32));
            ref.write({s}, {1}, l, k, v);
        }
        mgr.end_step(std::move(st));
        most = std::max(most, pool.stats().used_blocks);
        if (t % 500 == 499) check_all(mgr, ref, {8, 8});
    }
    CHECK(mgr.length(s) == 2000);
    CHECK(mgr.mask_range(s, 1) == std::pair<int64_t, int64_t>{1992, 8});
    CHECK(most <= 3);  // the window's 8 tokens straddle at most 3 pages of 4
    CHECK(pool.check() == "");
}

TEST_CASE("Hybrid pool: a Gemma 3-like layout at 32k tokens holds under 25% of one table's pages",
          "[gpu][hybrid]") {
    ValidatedContext vc;
    // 34 layers, every sixth full attention, the others sliding over 1024 tokens; one kv head
    // of 4 elements (page counts do not depend on the head sizes), pages of 16 tokens.
    std::vector<uint32_t> w(34, 1024);
    for (uint32_t l = 5; l < 34; l += 6)
        w[l] = 0;
    PoolConfig c = small_config(DType::F16, 34, 1, 4, 16, 5000);
    c.layer_windows = w;
    BlockPool pool(vc.ctx, c);
    KVManager mgr(pool);
    const SeqId s = mgr.add_sequence();
    // A 32k prompt in chunks of 4096, then decode (K/V not written: only pages are counted).
    for (int i = 0; i < 8; ++i)
        mgr.end_step(mgr.begin_step(std::vector<SeqId>{s}, std::vector<uint32_t>{4096}));
    for (int i = 0; i < 40; ++i)
        mgr.end_step(mgr.begin_step(std::vector<SeqId>{s}, std::vector<uint32_t>{1}));
    const int64_t n = mgr.length(s);
    REQUIRE(n == 32768 + 40);
    // One table for all layers: ceil(n / 16) pages of 34 layers each. Here: pages of 5 layers.
    const double one_table = double((n + 15) / 16) * 34;
    const double hybrid = double(mgr.pages_held()) * 5;
    INFO("pages held " << mgr.pages_held() << " of 5 layers vs " << (n + 15) / 16
                       << " of 34 layers");
    CHECK(hybrid / one_table <= 0.25);
    CHECK(mgr.block_table(s, 0).size() <= 1024 / 16 + 1);
    CHECK(mgr.block_table(s, 5).size() == size_t((n + 15) / 16));
    CHECK(pool.check() == "");
}

TEST_CASE("Hybrid pool: errors and what is not implemented change nothing",
          "[gpu][hybrid][errors]") {
    ValidatedContext vc;
    PoolConfig c = hybrid_config(DType::F16, {4, 0});
    c.num_host_blocks = 8;
    BlockPool pool(vc.ctx, c);
    KVManager mgr(pool);
    const SeqId s = mgr.add_sequence();
    for (int i = 0; i < 5; ++i)
        mgr.end_step(mgr.begin_step(std::vector<SeqId>{s}, std::vector<uint32_t>{3}));
    const auto stats = pool.stats();
    const auto table0 = mgr.block_table(s, 0), table1 = mgr.block_table(s, 1);
    auto unchanged = [&] {
        CHECK(mgr.length(s) == 15);
        CHECK(mgr.block_table(s, 0) == table0);
        CHECK(mgr.block_table(s, 1) == table1);
        CHECK(pool.stats().used_blocks == stats.used_blocks);
        CHECK(pool.check() == "");
    };
    auto refused = [&](ErrorCode code, const char* words, auto&& f) {
        try {
            f();
            FAIL("not refused: " << words);
        } catch (const Error& e) {
            CHECK(e.code() == code);
            CHECK(std::string(e.what()).find(words) != std::string::npos);
        }
        unchanged();
    };
    // The sliding layer holds positions 8.. (its older pages are gone): rolling back to 5
    // would need position 1.
    refused(ErrorCode::InvalidArgument, "left the window", [&] { mgr.truncate(s, 5); });
    refused(ErrorCode::InvalidArgument, "layer 2 out of range", [&] { mgr.held(s, 2); });
    refused(ErrorCode::InvalidArgument, "unknown sequence", [&] { mgr.mask_range(99, 0); });
    refused(ErrorCode::NotImplemented, "layer_windows", [&] { mgr.swap_out(s); });
    refused(ErrorCode::NotImplemented, "layer_windows", [&] { (void)mgr.export_sequence(s); });
    refused(ErrorCode::NotImplemented, "layer_windows", [&] {
        KVManager prefix(pool, {0.0, true});
    });
    refused(ErrorCode::NotImplemented, "layer_windows", [&] { StaticKVCache cache(pool, 1, 8); });
    // Snapshots cover layer groups; one that leaves the manager out is refused, writing nothing.
    {
        const TempFile file("hybrid.pkvs");
        refused(ErrorCode::InvalidArgument, "caches not given",
                [&] { save_snapshot(file.path, pool, std::span<const PagedKVCache* const>{}); });
        CHECK(!std::filesystem::exists(file.path));
        const KVManager* managers[] = {&mgr};
        save_snapshot(file.path, pool, std::span<const PagedKVCache* const>{}, managers);
        unchanged();
    }
    // Rolling back the last step's tokens works (its window's pages are still there).
    mgr.truncate(s, 12);
    CHECK(mgr.mask_range(s, 0) == std::pair<int64_t, int64_t>{8, 4});
    CHECK(mgr.mask_range(s, 1) == std::pair<int64_t, int64_t>{0, 12});
    CHECK(pool.check() == "");
}

TEST_CASE("DynamicKVCache over a hybrid pool: Hugging Face's hybrid semantics",
          "[gpu][hybrid][dynamic]") {
    // Sliding layers keep their window's tokens, full layers every token, get_seq_length counts
    // the tokens seen; update returns what the layer holds. Checked against the reference cache
    // (whose sliding layers keep their last `window` tokens) bit for bit.
    for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
        DYNAMIC_SECTION(to_string(dtype)) {
            ValidatedContext vc;
            const std::vector<uint32_t> windows = {0, 6, 6, 0};
            BlockPool pool(vc.ctx, hybrid_config(dtype, windows));
            const uint32_t B = 2, H = 2, D = 8;
            ReferenceCache ref(4, H, D, D);
            std::mt19937 rng(31);
            int64_t seen = 0;
            {
                DynamicKVCache cache(pool);
                // One step of S tokens for every layer; absolute: cache_position given as the
                // absolute positions (each layer numbers its own from the first it holds).
                auto step = [&](uint32_t S, bool absolute) {
                    for (uint32_t l = 0; l < 4; ++l) {
                        const auto k = random_values(size_t(B) * H * S * D, rng, dtype);
                        const auto v = random_values(size_t(B) * H * S * D, rng, dtype);
                        const int64_t held = ref.seq_length(l);
                        std::vector<std::vector<int64_t>> pos(B);
                        std::vector<int64_t> given;
                        for (uint32_t s = 0; s < S; ++s)
                            given.push_back(seen + s);
                        for (auto& p : pos)
                            for (uint32_t s = 0; s < S; ++s)
                                p.push_back(held + s);
                        ref.update(k, v, B, S, l, pos);
                        if (windows[l]) ref.keep_last(l, windows[l]);
                        const CachePosition cp = absolute ? CachePosition(given) : CachePosition();
                        auto [gk, gv] =
                            cache.update(upload(vc.ctx, k, shape4(B, H, S, D), dtype),
                                         upload(vc.ctx, v, shape4(B, H, S, D), dtype), l, cp);
                        INFO("layer " << l << " after " << seen + S << " tokens");
                        REQUIRE(gk.shape()[2] == ref.seq_length(l));
                        REQUIRE(bit_equal(gk.to_host(), ref.keys(l)));
                        REQUIRE(bit_equal(gv.to_host(), ref.values(l)));
                    }
                    seen += S;
                    for (uint32_t l = 0; l < 4; ++l)
                        REQUIRE(cache.get_seq_length(l) == seen);
                    REQUIRE(pool.check() == "");
                };
                step(10, false);  // prefill longer than the window
                for (int i = 0; i < 15; ++i)
                    step(1, i % 5 == 4);
                // Beams share pages; the sliding layers keep sharing theirs.
                cache.reorder_cache(std::vector<int32_t>{1, 1});
                ref.select({1, 1});
                step(2, false);
                // The full layers hold 27 tokens (7 pages a row, shared at first), the sliding
                // ones at most 6 tokens: far fewer pages than one table for all layers.
                CHECK(cache.pages_held() <= 2 * 8 + 2 * 3);
                cache.crop(8);
                ref.crop(8);
                seen = 8;
                for (uint32_t l = 0; l < 4; ++l) {
                    CHECK(cache.get_seq_length(l) == 8);
                    REQUIRE(bit_equal(cache.get(l)->first.to_host(), ref.keys(l)));
                }
                cache.truncate(-2);
                ref.truncate(-2);
                seen = 6;
                for (uint32_t l = 0; l < 4; ++l) {
                    CHECK(cache.get_seq_length(l) == 6);
                    REQUIRE(bit_equal(cache.get(l)->second.to_host(), ref.values(l)));
                }
                step(3, false);
                // A position the sliding layers let go of is refused, changing nothing.
                const auto before = pool.stats().used_blocks;
                const auto k = random_values(size_t(B) * H * D, rng, dtype);
                require_error(
                    [&] {
                        cache.update(upload(vc.ctx, k, shape4(B, H, 1, D), dtype),
                                     upload(vc.ctx, k, shape4(B, H, 1, D), dtype), 1,
                                     CachePosition(int64_t(0)));
                    },
                    ErrorCode::InvalidArgument, "has left the layer's window");
                CHECK(pool.stats().used_blocks == before);
                CHECK(cache.get_seq_length(1) == seen);
                REQUIRE(bit_equal(cache.get(1)->first.to_host(), ref.keys(1)));
                // A static cache's reservation is not built for layer groups.
                require_error([&] { StaticKVCache s(pool, 1, 16); }, ErrorCode::NotImplemented,
                              "layer_windows");
            }
            CHECK(pool.stats().used_blocks == 0);
        }
    }
}

TEST_CASE("Hybrid pool: a snapshot restores a manager and a DynamicKVCache bit for bit",
          "[gpu][hybrid][snapshot]") {
    for (DType dtype : {DType::F16, DType::F32}) {
        DYNAMIC_SECTION(to_string(dtype)) {
            const std::vector<uint32_t> windows = {0, 6, 6, 0};
            const uint32_t H = 2, D = 8, L = 4;
            ValidatedContext first;
            const PoolConfig c = hybrid_config(dtype, windows);
            BlockPool pool(first.ctx, c);
            std::mt19937 rng(41);
            const DType in = input_dtype(c);
            // A manager: a sequence of 9 tokens forked, both decoding 6 more (their sliding
            // group lets pages go).
            KVManager mgr(pool);
            auto step = [&](const std::vector<SeqId>& seqs, uint32_t n) {
                const std::vector<uint32_t> counts(seqs.size(), n);
                Step st = mgr.begin_step(seqs, counts);
                const uint32_t total = st.total_tokens();
                for (uint32_t l = 0; l < L; ++l)
                    mgr.write(st, l,
                              upload(first.ctx, random_values(size_t(total) * H * D, rng, in),
                                     {total, H, D}, in),
                              upload(first.ctx, random_values(size_t(total) * H * D, rng, in),
                                     {total, H, D}, in));
                mgr.end_step(std::move(st));
            };
            const SeqId a = mgr.add_sequence();
            step({a}, 9);
            const SeqId b = mgr.fork(a);
            for (int i = 0; i < 6; ++i)
                step({a, b}, 1);
            REQUIRE(mgr.held(a, 1) == 6);
            // A DynamicKVCache of two rows: 10 tokens, then 5 one at a time.
            DynamicKVCache cache(pool);
            auto update = [&](PagedKVCache& k, Context& ctx, uint32_t B, uint32_t S) {
                for (uint32_t l = 0; l < L; ++l)
                    k.update(upload(ctx, random_values(size_t(B) * H * S * D, rng, dtype),
                                    shape4(B, H, S, D), dtype),
                             upload(ctx, random_values(size_t(B) * H * S * D, rng, dtype),
                                    shape4(B, H, S, D), dtype),
                             l);
            };
            update(cache, first.ctx, 2, 10);
            for (int i = 0; i < 5; ++i)
                update(cache, first.ctx, 2, 1);
            REQUIRE(pool.check() == "");

            // What each layer holds: the cache's rows, and the manager's sequences as rows.
            std::vector<std::vector<float>> cache_k, cache_v, mgr_k, mgr_v;
            for (uint32_t l = 0; l < L; ++l) {
                const auto kv = *cache.get(l);
                cache_k.push_back(kv.first.to_host());
                cache_v.push_back(kv.second.to_host());
                std::vector<float> k, v;
                for (SeqId s : {a, b}) {
                    auto [gk, gv] = mgr.gather(s, l);
                    const auto hk = gk.to_host(), hv = gv.to_host();
                    k.insert(k.end(), hk.begin(), hk.end());
                    v.insert(v.end(), hv.begin(), hv.end());
                }
                mgr_k.push_back(std::move(k));
                mgr_v.push_back(std::move(v));
            }
            const TempFile file("hybrid-roundtrip.snap");
            const PagedKVCache* caches[] = {&cache};
            const KVManager* managers[] = {&mgr};
            save_snapshot(file.path, pool, caches, managers, {.page_contents = true});
            const auto used = pool.stats().used_blocks;

            ValidatedContext second;
            {
                // A damaged LAYR section (layer 1's window made 5: pages of another size) is
                // refused before anything is created.
                auto bytes = read_snapshot_file(file.path);
                bytes[32 + 12 + 88 + 12 + 4 + 4] = 5;
                seal_snapshot(bytes);
                const TempFile bad("hybrid-bad.snap");
                write_snapshot_file(bad.path, bytes);
                require_error([&] { (void)restore_snapshot(second.ctx, bad.path); },
                              ErrorCode::CorruptSnapshot, "(num_layers): a page holds 2 layers");
            }
            RestoredSnapshot r = restore_snapshot(second.ctx, file.path);
            REQUIRE(r.caches.size() == 2);
            CHECK(r.pool->check() == "");
            CHECK(r.pool->config().num_layers == L);
            CHECK(r.pool->config().layer_windows == windows);
            CHECK(r.pool->stats().used_blocks == used);
            for (uint32_t l = 0; l < L; ++l) {
                INFO("layer " << l << " window " << windows[l]);
                const auto kv = *r.caches[0]->get(l);
                CHECK(r.caches[0]->get_seq_length(l) == cache.get_seq_length(l));
                CHECK(bit_equal(kv.first.to_host(), cache_k[l]));
                CHECK(bit_equal(kv.second.to_host(), cache_v[l]));
                // The manager came back as a DynamicKVCache holding exactly what each layer
                // held, having seen all 15 tokens.
                const auto mkv = *r.caches[1]->get(l);
                CHECK(mkv.first.shape()[2] == (windows[l] ? 6 : 15));
                CHECK(r.caches[1]->get_seq_length(l) == 15);
                CHECK(bit_equal(mkv.first.to_host(), mgr_k[l]));
                CHECK(bit_equal(mkv.second.to_host(), mgr_v[l]));
            }
            // The detailed stats of both pools agree (the manager's held tokens included).
            const DetailedStats d0 = detailed_stats(pool, caches, managers);
            const DetailedStats d1 =
                detailed_stats(*r.pool, {r.caches[0].get(), r.caches[1].get()});
            CHECK(d1.tokens_stored == d0.tokens_stored);
            CHECK(d1.refcount_histogram == d0.refcount_histogram);
            // Both go on decoding: sliding layers keep their window.
            update(*r.caches[0], second.ctx, 2, 1);
            update(*r.caches[1], second.ctx, 2, 3);
            for (uint32_t l = 0; l < L; ++l) {
                CHECK(r.caches[1]->get_seq_length(l) == 18);
                CHECK(r.caches[1]->get(l)->first.shape()[2] == (windows[l] ? 6 : 18));
            }
            CHECK(r.pool->check() == "");
        }
    }
}
