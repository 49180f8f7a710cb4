// KVManager with prefix caching on a real device against the CPU reference: K/V here is a
// function of the token and its whole prefix (as a model's is), so a sequence that starts from
// cached pages must read exactly what it would have computed; the reference computes it. Hits,
// the never-the-whole-prompt rule, salts, least-recently-used eviction that never takes a
// referenced page, copy-on-write of cached pages, fork, truncate, reset, random traces under a
// small pool, and error paths that change nothing (the index included).
#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "reference_sequences.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

// A manager with prefix caching, its reference, and every sequence's token ids.
struct Served {
    Served(Context& ctx, const PoolConfig& cfg)
        : c(cfg),
          pool(ctx, cfg),
          mgr(pool, {0.0, true}),
          ref(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.head_dim),
          ctx_(&ctx) {
        c = pool.config();  // resolved (compute_dtype)
    }

    PoolConfig c;
    BlockPool pool;
    KVManager mgr;
    ReferenceSequences ref;
    std::map<SeqId, std::vector<int32_t>> toks;
    std::map<SeqId, uint64_t> salts;
    Context* ctx_;

    // The K (or V) row of position pos of a sequence: a function of (salt, tokens[0..pos]),
    // layer, head; values exact in every dtype.
    std::vector<float> rows(uint64_t salt, const std::vector<int32_t>& t, size_t from, size_t n,
                            uint32_t layer, bool value) const {
        std::vector<float> out;
        out.reserve(n * c.num_kv_heads * c.head_dim);
        uint64_t h = mix(salt, 17);
        for (size_t p = 0; p < from + n; ++p) {
            h = mix(h, uint64_t(uint32_t(t[p])));
            if (p < from) continue;
            for (uint32_t hd = 0; hd < c.num_kv_heads; ++hd)
                for (uint32_t x = 0; x < c.head_dim; ++x) {
                    const uint64_t r = mix(mix(h, layer * 2 + value), hd * 1000 + x);
                    out.push_back(float(int(r % 64) - 32) / 8.0f);
                }
        }
        return out;
    }

    // add_sequence(prompt, salt); the reference holds the cached part's K/V.
    SeqId admit(const std::vector<int32_t>& prompt, uint64_t salt = 0) {
        const SeqId id = mgr.add_sequence(prompt, salt);
        const int64_t hit = mgr.length(id);
        REQUIRE(hit % c.block_size == 0);
        REQUIRE(hit < int64_t(std::max<size_t>(prompt.size(), 1)));
        ref.add(id);
        toks[id].assign(prompt.begin(), prompt.begin() + hit);
        salts[id] = salt;
        if (hit > 0) {
            ref.begin_step({id}, {uint32_t(hit)});
            for (uint32_t l = 0; l < c.num_layers; ++l)
                ref.write(
                    {id}, {uint32_t(hit)}, l,
                    stored_values(c, rows(salt, toks[id], 0, size_t(hit), l, false), c.head_dim),
                    stored_values(c, rows(salt, toks[id], 0, size_t(hit), l, true), c.head_dim));
        }
        return id;
    }

    // One step: seqs[i] gets new[i] (with their ids); K/V written for every layer. With
    // queries, each layer's attention is compared with CPU attention over the reference.
    void step(const std::vector<SeqId>& seqs, const std::vector<std::vector<int32_t>>& news,
              bool attend = false) {
        std::vector<std::span<const int32_t>> spans;
        std::vector<uint32_t> counts;
        for (const auto& n : news) {
            spans.emplace_back(n);
            counts.push_back(uint32_t(n.size()));
        }
        Step st = mgr.begin_step(seqs, spans);
        const std::vector<uint64_t> ids(seqs.begin(), seqs.end());
        ref.begin_step(ids, counts);
        std::vector<size_t> from;
        for (size_t i = 0; i < seqs.size(); ++i) {
            from.push_back(toks[seqs[i]].size());
            toks[seqs[i]].insert(toks[seqs[i]].end(), news[i].begin(), news[i].end());
        }
        const uint32_t T = st.total_tokens(), H = c.num_kv_heads, D = c.head_dim;
        for (uint32_t l = 0; l < c.num_layers; ++l) {
            std::vector<float> k, v;
            for (size_t i = 0; i < seqs.size(); ++i) {
                const auto rk = rows(salts[seqs[i]], toks[seqs[i]], from[i], news[i].size(), l, 0);
                const auto rv = rows(salts[seqs[i]], toks[seqs[i]], from[i], news[i].size(), l, 1);
                k.insert(k.end(), rk.begin(), rk.end());
                v.insert(v.end(), rv.begin(), rv.end());
            }
            // A quantized pool takes K/V in its compute dtype; the reference keeps what the
            // reference quantizer makes of them.
            mgr.write(st, l, Tensor::from_host(*ctx_, k, {T, H, D}, input_dtype(c)),
                      Tensor::from_host(*ctx_, v, {T, H, D}, input_dtype(c)));
            ref.write(ids, counts, l, stored_values(c, k, D), stored_values(c, v, D));
            if (!attend || T == 0) continue;
            // Queries and outputs in the compute dtype (a quantized pool's: F16); the reference
            // attends over the K/V it stored (for quantized pages, dequantized and rounded to the
            // compute dtype: within the output's tolerance of the f32 values the kernel reads).
            const DType io = input_dtype(c);
            std::mt19937 rng(T * 7 + l);
            const auto q = random_values(size_t(T) * H * D, rng, io);
            const std::vector<float> got =
                mgr.attention(st, l, Tensor::from_host(*ctx_, q, {T, H, D}, io)).to_host();
            const float scale = 1.0f / std::sqrt(float(D));
            const double tol = io == DType::F32 ? 1e-4 : io == DType::F16 ? 4e-3 : 2e-2;
            uint32_t t = 0;
            for (size_t i = 0; i < seqs.size(); ++i)
                for (size_t j = 0; j < news[i].size(); ++j, ++t) {
                    const int64_t n = int64_t(from[i] + j + 1);
                    const auto want =
                        causal_attention_row(&q[size_t(t) * H * D], ref.raw_keys(seqs[i], l),
                                             ref.raw_values(seqs[i], l), n, H, H, D, D, scale);
                    for (size_t x = 0; x < want.size(); ++x) {
                        INFO("token " << t << " element " << x);
                        REQUIRE(std::abs(double(got[size_t(t) * H * D + x]) - want[x]) <=
                                tol * (1.0 + std::abs(want[x])));
                    }
                }
        }
        mgr.end_step(std::move(st));
    }

    void free(SeqId id) {
        mgr.free(id);
        ref.free(id);
        toks.erase(id);
    }

    // Every live sequence's K/V equals the reference's, and the pool (index included) holds.
    void check() {
        REQUIRE(pool.check() == "");
        for (uint64_t id : ref.ids()) {
            REQUIRE(mgr.length(id) == ref.length(id));
            for (uint32_t l = 0; l < c.num_layers; ++l) {
                auto [k, v] = mgr.gather(id, l);
                const auto gk = k.to_host(), gv = v.to_host();
                const auto wk = ref.keys(id, l), wv = ref.values(id, l);
                INFO("sequence " << id << " layer " << l << " K: " << first_difference(gk, wk)
                                 << ", V: " << first_difference(gv, wv));
                REQUIRE(bit_equal(gk, wk));
                REQUIRE(bit_equal(gv, wv));
            }
        }
    }
};

std::vector<int32_t> seq_tokens(int32_t first, size_t n) {
    std::vector<int32_t> t(n);
    for (size_t i = 0; i < n; ++i)
        t[i] = first + int32_t(i) * 7 % 101;
    return t;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

std::vector<uint32_t> first_n(std::vector<uint32_t> v, size_t n) {
    v.resize(std::min(v.size(), n));
    return v;
}

}  // namespace

TEST_CASE("prefix caching: a repeated prompt starts from its cached pages and reads their K/V",
          "[gpu][prefix]") {
    for (DType dtype : kPoolDTypes) {
        DYNAMIC_SECTION(to_string(dtype)) {
            ValidatedContext vc;
            Served s(vc.ctx, small_config(dtype, 2, 2, 8, 4, 32));
            const std::vector<int32_t> P = seq_tokens(3, 10);
            const SeqId a = s.admit(P);
            REQUIRE(s.mgr.length(a) == 0);
            s.step({a}, {P}, true);
            PrefixCacheStats st = s.mgr.prefix_stats();
            REQUIRE(st.queries == 1);
            REQUIRE(st.query_tokens == 10);
            REQUIRE(st.hit_tokens == 0);
            REQUIRE(st.cached_pages == 2);  // the two full pages; the third is partial

            // The same prompt and one more token: the two full pages are shared.
            const SeqId b = s.admit(concat(P, {55}));
            REQUIRE(s.mgr.length(b) == 8);
            REQUIRE(first_n(s.mgr.block_table(b), 2) == first_n(s.mgr.block_table(a), 2));
            REQUIRE(s.pool.stats().shared_blocks == 2);
            s.step({b}, {{P[8], P[9], 55}}, true);
            s.check();

            // Both end: the cached pages stay, evictable; the others are free.
            s.free(a);
            s.free(b);
            REQUIRE(s.pool.stats().cached_blocks == 2);
            REQUIRE(s.pool.stats().used_blocks == 0);
            REQUIRE(s.pool.stats().free_blocks == 30);

            const SeqId c = s.admit(P);
            REQUIRE(s.mgr.length(c) == 8);
            // Exactly two pages of prompt: only one is shared (one token is left to compute).
            const SeqId d = s.admit(std::vector<int32_t>(P.begin(), P.begin() + 8));
            REQUIRE(s.mgr.length(d) == 4);
            // Another salt never hits; nor does a prompt differing in its second page.
            const SeqId e = s.admit(P, 7);
            REQUIRE(s.mgr.length(e) == 0);
            std::vector<int32_t> other = P;
            other[5] = 999;
            const SeqId f = s.admit(other);
            REQUIRE(s.mgr.length(f) == 4);
            const SeqId g = s.admit({});
            REQUIRE(s.mgr.length(g) == 0);
            st = s.mgr.prefix_stats();
            REQUIRE(st.queries == 7);
            REQUIRE(st.hit_tokens == 8 + 8 + 4 + 4);
            REQUIRE(st.query_tokens == 10 + 11 + 10 + 8 + 10 + 10);
            s.check();
            // The rest of each prompt, in one ragged step with attention over the shared pages.
            s.step({c, d, e, f, g},
                   {{P[8], P[9]},
                    {P[4], P[5], P[6], P[7]},
                    P,
                    std::vector<int32_t>(other.begin() + 4, other.end()),
                    {1, 2, 3}},
                   true);
            s.check();
            // e's pages (salt 7) are registered apart from the others.
            REQUIRE(s.mgr.prefix_stats().cached_pages == 2 + 2 + 1);
        }
    }
}

TEST_CASE("prefix caching: eviction takes least recently used pages, never referenced ones",
          "[gpu][prefix]") {
    ValidatedContext vc;
    for (DType dtype : {DType::F16, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        Served s(vc.ctx, small_config(dtype, 2, 2, 8, 4, 12));
        // A sequence that stays: its three cached pages are referenced throughout.
        const std::vector<int32_t> keep = seq_tokens(1, 12);
        const SeqId held = s.admit(keep);
        s.step({held}, {keep});
        const std::vector<uint32_t> held_table = s.mgr.block_table(held);
        // Prompts of 3 pages each, run and freed one after another: the pool holds 3 of them.
        std::vector<std::vector<int32_t>> prompts;
        for (int32_t i = 0; i < 5; ++i)
            prompts.push_back(seq_tokens(200 + 50 * i, 12));
        for (const auto& p : prompts) {
            const SeqId id = s.admit(p);
            REQUIRE(s.mgr.length(id) == 0);
            s.step({id}, {p});
            s.check();
            s.free(id);
            REQUIRE(s.pool.check() == "");
            REQUIRE(s.mgr.block_table(held) == held_table);
        }
        const PrefixCacheStats st = s.mgr.prefix_stats();
        REQUIRE(st.evictions == 6);  // 3 + 5 x 3 pages over 12: two prompts evicted
        REQUIRE(s.pool.stats().cached_blocks == 9);
        // The held prefix still hits; the most recent prompts hit (at most 2 pages: one token of
        // a 12-token prompt is left); the first two prompts were evicted.
        for (size_t i = 0; i < prompts.size(); ++i) {
            const SeqId id = s.admit(prompts[i]);
            INFO("prompt " << i);
            REQUIRE(s.mgr.length(id) == (i < 2 ? 0 : 8));
            s.free(id);
        }
        const SeqId again = s.admit(concat(keep, {1}));
        REQUIRE(s.mgr.length(again) == 12);
        s.check();
        // The pool is full of referenced or cached pages: allocation that needs more than the
        // evictable ones fails with nothing changed.
        const uint64_t evictable = s.pool.stats().cached_blocks;
        const std::vector<int32_t> big = seq_tokens(7, 4 * (evictable + 1));
        const SeqId x = s.admit(big);
        const auto stats_before = s.pool.stats();
        const auto prefix_before = s.mgr.prefix_stats();
        try {
            s.mgr.begin_step(std::vector<SeqId>{x}, std::vector<uint32_t>{uint32_t(big.size())});
            FAIL("no OutOfBlocks");
        } catch (const Error& e) {
            REQUIRE(e.code() == ErrorCode::OutOfBlocks);
            REQUIRE_THAT(e.what(), Catch::Contains("evictable ones included"));
        }
        REQUIRE(s.pool.stats() == stats_before);
        REQUIRE(s.mgr.prefix_stats() == prefix_before);
        s.check();
    }
}

TEST_CASE("prefix caching: copy-on-write of a cached page leaves the cached copy intact",
          "[gpu][prefix]") {
    ValidatedContext vc;
    for (DType dtype : {DType::BF16, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        Served s(vc.ctx, small_config(dtype, 2, 2, 8, 4, 32));
        const std::vector<int32_t> P = seq_tokens(5, 12);
        const SeqId a = s.admit(P);
        s.step({a}, {P});
        const std::vector<uint32_t> before = s.mgr.block_table(a);
        // Roll back into the last (cached) page and write other tokens there.
        s.mgr.truncate(a, 10);
        s.ref.truncate(a, 10);
        s.toks[a].resize(10);
        const uint64_t copied = s.pool.stats().pages_copied;
        s.step({a}, {{77, 78}});
        REQUIRE(s.pool.stats().pages_copied == copied + 1);
        const std::vector<uint32_t> after = s.mgr.block_table(a);
        REQUIRE(after[0] == before[0]);
        REQUIRE(after[1] == before[1]);
        REQUIRE(after[2] != before[2]);
        // The original third page still hits, with its original K/V.
        const SeqId b = s.admit(concat(P, {1}));
        REQUIRE(s.mgr.length(b) == 12);
        REQUIRE(s.mgr.block_table(b) == before);
        // And a's rewritten page was registered under its own tokens.
        const SeqId c = s.admit(concat(s.toks[a], {1}));
        REQUIRE(s.mgr.length(c) == 12);
        REQUIRE(s.mgr.block_table(c) == after);
        s.check();
    }
}

TEST_CASE("prefix caching: fork, steps without token ids, and reset", "[gpu][prefix]") {
    ValidatedContext vc;
    for (DType dtype : {DType::F32, DType::FP8E4M3}) {
        INFO("dtype " << to_string(dtype));
        PoolConfig cfg = small_config(dtype, 2, 2, 8, 4, 48);
        cfg.compute_dtype = DType::F32;  // F32 K/V into the quantized pool too
        Served s(vc.ctx, cfg);
        const std::vector<int32_t> P = seq_tokens(9, 6);
        const SeqId a = s.admit(P);
        s.step({a}, {P});
        const SeqId b = s.mgr.fork(a);
        s.ref.fork(a, b);
        s.toks[b] = s.toks[a];
        s.salts[b] = s.salts[a];
        // Each branch fills its second page differently: both are registered.
        s.step({a, b}, {{10, 11}, {20, 21}});
        REQUIRE(s.mgr.prefix_stats().cached_pages == 3);
        REQUIRE(s.mgr.length(s.admit(concat(s.toks[a], {0}))) == 8);
        REQUIRE(s.mgr.length(s.admit(concat(s.toks[b], {0}))) == 8);
        s.check();

        // A step given counts only: that sequence's tokens are unknown and it registers nothing.
        {
            Step st = s.mgr.begin_step(std::vector<SeqId>{a}, std::vector<uint32_t>{4});
            s.ref.begin_step({a}, {4});
            s.toks[a].resize(s.toks[a].size() + 4, -1);
            const uint32_t T = st.total_tokens();
            std::mt19937 rng(3);
            for (uint32_t l = 0; l < 2; ++l) {
                const auto k = random_values(size_t(T) * 16, rng, DType::F32);
                const auto v = random_values(size_t(T) * 16, rng, DType::F32);
                s.mgr.write(st, l, Tensor::from_host(vc.ctx, k, {T, 2, 8}, DType::F32),
                            Tensor::from_host(vc.ctx, v, {T, 2, 8}, DType::F32));
                s.ref.write({a}, {4}, l, stored_values(s.c, k, 8), stored_values(s.c, v, 8));
            }
        }
        REQUIRE(s.mgr.prefix_stats().cached_pages == 3);
        s.check();

        // Reset: the index is empty, evictable pages are free, held pages stay with their
        // sequences.
        const uint64_t used = s.pool.stats().used_blocks;
        s.mgr.reset_prefix_cache();
        REQUIRE(s.mgr.prefix_stats() == PrefixCacheStats{});
        REQUIRE(s.pool.stats().cached_blocks == 0);
        REQUIRE(s.pool.stats().used_blocks == used);
        REQUIRE(s.mgr.length(s.admit(concat(P, {0}))) == 0);
        s.check();
        // b goes on: its pages are registered again from the first.
        s.step({b}, {{30, 31, 32, 33}});
        REQUIRE(s.mgr.prefix_stats().cached_pages == 3);
        REQUIRE(s.mgr.length(s.admit(concat(s.toks[b], {0}))) == 12);
        s.check();
    }
}

TEST_CASE("prefix caching: random traces under a small pool match the CPU reference",
          "[gpu][prefix]") {
    const DType dtype = GENERATE(DType::F16, DType::Int8, DType::FP8E4M3);
    for (uint64_t blocks : {24u, 40u}) {
        if (is_quantized(dtype) && blocks != 24) continue;  // (the small pool evicts most)
        DYNAMIC_SECTION(blocks << " blocks") {
            ValidatedContext vc;
            Served s(vc.ctx, small_config(dtype, 2, 2, 8, 4, blocks));
            std::mt19937 rng{uint32_t(blocks)};
            // Three "system prompts"; requests are one of them plus a short suffix.
            std::vector<std::vector<int32_t>> systems;
            for (int32_t i = 0; i < 3; ++i)
                systems.push_back(seq_tokens(1000 * (i + 1), 9 + 4 * size_t(i)));
            auto rnd = [&](int lo, int hi) {
                return std::uniform_int_distribution<int>(lo, hi)(rng);
            };
            std::map<SeqId, std::vector<int32_t>> pending;  // prompt tokens still to prefill
            for (int round = 0; round < 60; ++round) {
                const std::vector<uint64_t> ids = s.ref.ids();
                const int op = rnd(0, 9);
                const auto pick = [&] { return ids[size_t(rnd(0, int(ids.size()) - 1))]; };
                INFO("round " << round << " op " << op);
                if (ids.size() < 2 || op <= 1) {
                    std::vector<int32_t> prompt = systems[size_t(rnd(0, 2))];
                    for (int j = rnd(0, 6); j > 0; --j)
                        prompt.push_back(rnd(0, 3));
                    const SeqId id = s.admit(prompt, uint64_t(rnd(0, 4) == 0));
                    pending[id].assign(prompt.begin() + s.mgr.length(id), prompt.end());
                } else if (op == 2) {
                    const uint64_t from = pick();
                    if (s.pool.stats().free_blocks + s.pool.stats().cached_blocks < 2) continue;
                    const SeqId id = s.mgr.fork(from);
                    s.ref.fork(from, id);
                    s.toks[id] = s.toks[from];
                    s.salts[id] = s.salts[from];
                    pending[id] = pending[from];
                } else if (op == 3) {
                    const uint64_t id = pick();
                    const int64_t len = rnd(-5, 12);
                    s.mgr.truncate(id, len);
                    s.ref.truncate(id, len);
                    s.toks[id].resize(size_t(s.ref.length(id)));
                    pending[id].clear();
                } else if (op == 4 && ids.size() > 2) {
                    const uint64_t id = pick();
                    s.free(id);
                    pending.erase(id);
                } else {
                    std::vector<SeqId> seqs;
                    std::vector<std::vector<int32_t>> news;
                    for (uint64_t id : ids) {
                        if (rnd(0, 2) == 0) continue;
                        std::vector<int32_t> n = pending[id];
                        if (n.empty()) n = {int32_t(rnd(0, 3))};
                        if (n.size() > 6) n.resize(6);
                        seqs.push_back(id);
                        news.push_back(n);
                    }
                    std::vector<uint32_t> counts;
                    for (const auto& n : news)
                        counts.push_back(uint32_t(n.size()));
                    if (s.mgr.pages_needed(seqs, counts) >
                        s.pool.stats().free_blocks + s.pool.stats().cached_blocks) {
                        // Preempt the newest sequence, as an engine would.
                        const uint64_t victim = ids.back();
                        s.free(victim);
                        pending.erase(victim);
                        continue;
                    }
                    s.step(seqs, news, round % 10 == 9);
                    for (size_t i = 0; i < seqs.size(); ++i) {
                        auto& p = pending[seqs[i]];
                        p.erase(p.begin(), p.begin() + std::min(p.size(), news[i].size()));
                    }
                }
                REQUIRE(s.pool.check() == "");
                if (round % 6 == 5) s.check();
            }
            s.check();
            const PrefixCacheStats st = s.mgr.prefix_stats();
            REQUIRE(st.hit_tokens > 0);
            if (blocks == 24) REQUIRE(st.evictions > 0);
        }
    }
}

TEST_CASE("prefix caching: errors change nothing, the index included", "[gpu][prefix][errors]") {
    ValidatedContext vc;
    for (DType dtype : {DType::F16, DType::Int8}) {
        INFO("dtype " << to_string(dtype));
        Served s(vc.ctx, small_config(dtype, 2, 2, 8, 4, 16));
        const std::vector<int32_t> P = seq_tokens(4, 9);
        const SeqId a = s.admit(P);
        s.step({a}, {P});
        const SeqId b = s.admit(P);
        struct State {
            PoolStats pool;
            PrefixCacheStats prefix;
            std::vector<SeqId> seqs;
            std::vector<std::vector<uint32_t>> tables;
            std::vector<int64_t> lengths;
            bool operator==(const State&) const = default;
        };
        auto state = [&] {
            State st{s.pool.stats(), s.mgr.prefix_stats(), s.mgr.sequences(), {}, {}};
            for (SeqId id : st.seqs) {
                st.tables.push_back(s.mgr.block_table(id));
                st.lengths.push_back(s.mgr.length(id));
            }
            return st;
        };
        const State before = state();
        auto expect = [&](auto&& f, ErrorCode code, const char* text) {
            require_error(f, code, text);
            REQUIRE(state() == before);
            s.check();
        };
        const std::vector<int32_t> one = {1}, two = {1, 2};
        const std::vector<std::span<const int32_t>> ids_ab = {one, two};
        expect(
            [&] {
                s.mgr.begin_step(std::vector<SeqId>{a, 99}, ids_ab);
            },
            ErrorCode::InvalidArgument, "unknown sequence 99");
        expect(
            [&] {
                s.mgr.begin_step(std::vector<SeqId>{a, a}, ids_ab);
            },
            ErrorCode::InvalidArgument, "listed twice");
        const std::vector<int32_t> many(60, 3);
        const std::vector<std::span<const int32_t>> ids_big = {many, one};
        expect(
            [&] {
                s.mgr.begin_step(std::vector<SeqId>{a, b}, ids_big);
            },
            ErrorCode::OutOfBlocks, "needs");
        expect([&] { s.mgr.fork(99); }, ErrorCode::InvalidArgument, "unknown sequence");
    }
}

TEST_CASE("prefix caching: pages register when the step's K/V are written, not before",
          "[gpu][prefix]") {
    ValidatedContext vc;
    Served s(vc.ctx, small_config(DType::F16, 2, 2, 8, 4, 32));
    const std::vector<int32_t> P = seq_tokens(8, 9);
    const std::vector<std::span<const int32_t>> ids = {P};
    const SeqId a = s.mgr.add_sequence(P);
    {
        Step st = s.mgr.begin_step(std::vector<SeqId>{a}, ids);
        // Only layer 0 written: while the step is open nothing is registered, and it ends
        // with a layer unwritten, so its pages never are (their K/V are not all there).
        const auto k = s.rows(0, P, 0, P.size(), 0, false);
        s.mgr.write(st, 0, Tensor::from_host(vc.ctx, k, {9, 2, 8}, DType::F16),
                    Tensor::from_host(vc.ctx, k, {9, 2, 8}, DType::F16));
        REQUIRE(s.mgr.prefix_stats().cached_pages == 0);
    }
    REQUIRE(s.mgr.prefix_stats().cached_pages == 0);
    REQUIRE(s.mgr.length(s.mgr.add_sequence(P)) == 0);
    // a is unregistrable from now on: a later, fully written step registers nothing either.
    const std::vector<int32_t> more = {1, 2, 3};
    const std::vector<std::span<const int32_t>> more_ids = {more};
    {
        Step st = s.mgr.begin_step(std::vector<SeqId>{a}, more_ids);
        for (uint32_t l = 0; l < 2; ++l)
            (void)st.view(l);
    }
    REQUIRE(s.mgr.prefix_stats().cached_pages == 0);
    // A runtime writing with its own kernels takes every layer's view: then pages register.
    const SeqId b = s.mgr.add_sequence(P, 3);
    {
        Step st = s.mgr.begin_step(std::vector<SeqId>{b}, ids);
        for (uint32_t l = 0; l < 2; ++l)
            (void)st.view(l);
        REQUIRE(s.mgr.prefix_stats().cached_pages == 0);
        s.mgr.end_step(std::move(st));
    }
    REQUIRE(s.mgr.prefix_stats().cached_pages == 2);
    REQUIRE(s.mgr.length(s.mgr.add_sequence(P, 3)) == 8);
    REQUIRE(s.pool.check() == "");
}

TEST_CASE("prefix caching: a finished step vouches only for its own tokens", "[gpu][prefix]") {
    ValidatedContext vc;
    Served s(vc.ctx, small_config(DType::F16, 2, 2, 8, 4, 32));
    const std::vector<int32_t> P = seq_tokens(2, 9);
    auto write_all = [&](Step& st, const std::vector<int32_t>& toks, size_t from) {
        const uint32_t T = st.total_tokens();
        for (uint32_t l = 0; l < 2; ++l) {
            const auto k = s.rows(0, toks, from, T, l, false);
            const auto v = s.rows(0, toks, from, T, l, true);
            s.mgr.write(st, l, Tensor::from_host(vc.ctx, k, {T, 2, 8}, DType::F16),
                        Tensor::from_host(vc.ctx, v, {T, 2, 8}, DType::F16));
        }
    };
    const SeqId a = s.mgr.add_sequence();
    const std::vector<int32_t> first(P.begin(), P.begin() + 2),
        second(P.begin() + 2, P.begin() + 6);
    const std::vector<std::span<const int32_t>> ids1 = {first}, ids2 = {second};
    // Step 1 (tokens 0-1) written; step 2 (tokens 2-5, filling page 0) begun before step 1
    // ends, as `step = mgr.begin_step(...)` does, and ended unwritten.
    Step one = s.mgr.begin_step(std::vector<SeqId>{a}, ids1);
    write_all(one, P, 0);
    Step two = s.mgr.begin_step(std::vector<SeqId>{a}, ids2);
    s.mgr.end_step(std::move(one));
    REQUIRE(s.mgr.prefix_stats().cached_pages == 0);  // page 0's last tokens are unwritten
    s.mgr.end_step(std::move(two));
    REQUIRE(s.mgr.prefix_stats().cached_pages == 0);
    REQUIRE(s.mgr.length(s.mgr.add_sequence(P)) == 0);
    // Rolled back to what was written, a sequence registers again as it goes on.
    s.mgr.truncate(a, 2);
    Step three = s.mgr.begin_step(std::vector<SeqId>{a}, ids2);
    write_all(three, P, 2);
    s.mgr.end_step(std::move(three));
    REQUIRE(s.mgr.prefix_stats().cached_pages == 1);

    // The assignment pattern with every step written: each ended step registers its pages.
    const SeqId b = s.mgr.add_sequence(std::vector<int32_t>{}, 5);
    Step st;
    for (size_t from = 0; from < 8; from += 2) {
        const std::vector<int32_t> two_ids(P.begin() + ptrdiff_t(from),
                                           P.begin() + ptrdiff_t(from) + 2);
        const std::vector<std::span<const int32_t>> ids = {two_ids};
        st = s.mgr.begin_step(std::vector<SeqId>{b}, ids);
        const uint32_t T = st.total_tokens();
        for (uint32_t l = 0; l < 2; ++l) {
            const auto k = s.rows(5, P, from, T, l, false);
            s.mgr.write(st, l, Tensor::from_host(vc.ctx, k, {T, 2, 8}, DType::F16),
                        Tensor::from_host(vc.ctx, k, {T, 2, 8}, DType::F16));
        }
    }
    s.mgr.end_step(std::move(st));
    REQUIRE(s.mgr.length(s.mgr.add_sequence(P, 5)) == 8);

    // Admitting a request does not make a step in flight stale.
    Step open = s.mgr.begin_step(std::vector<SeqId>{a}, std::vector<uint32_t>{0});
    s.mgr.add_sequence(P);
    REQUIRE_NOTHROW(open.view(0));
    REQUIRE(s.pool.check() == "");
}

TEST_CASE("prefix caching: a cache row holding cached pages copies them before writing",
          "[gpu][prefix][snapshot]") {
    ValidatedContext vc;
    TempFile file("prefix-cow.snap");
    Served s(vc.ctx, small_config(DType::F32, 2, 2, 8, 4, 16));
    const std::vector<int32_t> P = seq_tokens(6, 12);
    const SeqId a = s.admit(P);
    s.step({a}, {P});
    REQUIRE(s.mgr.prefix_stats().cached_pages == 3);
    const KVManager* managers[] = {&s.mgr};
    save_snapshot(file.path, s.pool, std::span<const PagedKVCache* const>{}, managers,
                  SnapshotOptions{true});
    RestoredSnapshot r = restore_snapshot(vc.ctx, file.path);
    PagedKVCache& row = *r.caches.at(0);  // the sequence, as a dynamic cache's row 0
    // Truncate into the last (cached) page and write there: the page is copied first.
    row.truncate(10);
    const uint64_t copied = r.pool->stats().pages_copied;
    std::vector<float> kv(2 * 8, 0.5f);
    row.write(Tensor::from_host(vc.ctx, kv, {1, 2, 1, 8}, DType::F32),
              Tensor::from_host(vc.ctx, kv, {1, 2, 1, 8}, DType::F32), 0);
    REQUIRE(r.pool->stats().pages_copied == copied + 1);
    REQUIRE(r.pool->check() == "");
    // The cached page still holds what it held: a new manager on the restored pool hits it and
    // reads the original K/V.
    KVManager m2(*r.pool, {0.0, true});
    const SeqId b = m2.add_sequence(concat(P, {1}));
    REQUIRE(m2.length(b) == 12);
    for (uint32_t l = 0; l < 2; ++l) {
        auto [k, v] = m2.gather(b, l);
        REQUIRE(bit_equal(k.to_host(), s.ref.keys(a, l)));
        REQUIRE(bit_equal(v.to_host(), s.ref.values(a, l)));
    }
}
