// libFuzzer harness: random operation sequences of the whole cache API on lavapipe with small
// shapes, compared with the CPU reference after every operation. An operation that throws
// pagedkv::Error must leave the cache exactly as before (the reference is not touched). After
// each operation the paged view, and after the last cached_attention, are checked against get().
//
// With the first byte's top bit set it drives a KVManager with prefix caching instead, over a
// small pool so that cached pages are evicted: prompts from a few templates that share their
// first tokens (salt 0 or 1), steps with token ids (chunked prefill, decode, a token that
// diverges from the template), fork, truncate, free, reservations and reset_prefix_cache. Each
// token's K and V are a function of its salt and its whole prefix of token ids, so a page the
// index shares must hold exactly what the sequence would have written; after every operation
// every live sequence's gathered K/V must equal the reference (ReferenceSequences) bit for bit,
// and the pool (allocator and index) must validate.
//
// With bit 6 set instead (0x40, top bit clear) it drives a KVManager over a hybrid pool
// (PoolConfig::layer_windows: 4 layers, each full attention or a sliding window of a few
// tokens) of few pages: add_sequence, steps writing every layer (attention over some layers
// checked against the window's reference), fork, truncate (refused when a sliding layer's
// window left), free and reservations. After every operation each sequence's held tokens,
// mask range and gathered K/V per layer must equal the reference's bit for bit, the pool must
// validate, and an operation refused (OutOfBlocks, or such a truncation) must change nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "allocator/prefix_index.hpp"
#include "cache/manager/access.hpp"
#include "cache/manager/attention.hpp"
#include "cache/manager/pool_state.hpp"
#include "pagedkv/pagedkv.hpp"
#include "reference_cache.hpp"
#include "reference_quant.hpp"
#include "reference_sequences.hpp"

using namespace pagedkv;

namespace {

constexpr uint32_t kLayers = 2, kHeads = 2, kDim = 4, kQueryHeads = 4;

Context& context() {
    // No validation layer here: under ASan it makes each execution several times slower, and
    // the test suite already runs every path under it.
    static Context ctx = Context::create();
    return ctx;
}

// The pool dtype of the current input: F16, or quantized Int8 / FP8E4M3 pages (written from f16).
DType pool_dtype = DType::F16;

// What the pool stores for rows of kDim f16 values: themselves, or their quantized values.
std::vector<float> as_stored(const std::vector<float>& x) {
    if (!is_quantized(pool_dtype)) return x;
    return test::quantize_rows(pool_dtype, DType::F16, x, kDim);
}

// Attention over quantized pages reads codes and scales, the contiguous kernel their f16
// dequantized values: equal up to rounding, not bit for bit.
bool close(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (!(std::fabs(a[i] - b[i]) <= 1e-2f * (1.0f + std::fabs(b[i])))) return false;
    return true;
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
        if (is_quantized(pool_dtype) ? !close(paged, flat) : !same(paged, flat))
            fail("cached_attention differs from attention on get()", op);
    }
}

// ---- KVManager with prefix caching

// Token j of prompt template t (0..3): ids 0..2, the templates sharing their first tokens in
// pairs, so that prompts repeat each other's pages.
int32_t template_token(uint32_t t, size_t j) {
    if (j < 2) return 0;
    if (j < 5) return int32_t(t & 1);
    return int32_t((j * (t + 1) + t) % 3);
}

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// The K (kv 0) and V (kv 1) of a token, (heads, dim), as a function of the salt and every
// token id up to and including it: a page holding a prefix holds the same K/V whoever wrote
// it. Multiples of 1/64 in [-16, 16): exact in f16.
void token_kv(uint64_t salt, const std::vector<int32_t>& tokens, size_t pos, uint32_t layer,
              uint32_t kv, std::vector<float>& out) {
    uint64_t h = mix(salt + 0x51);
    for (size_t j = 0; j <= pos; ++j)
        h = mix(h ^ uint64_t(uint32_t(tokens[j]) + 1));
    h = mix(h ^ (uint64_t(layer) << 40) ^ (uint64_t(kv) << 48));
    for (uint32_t i = 0; i < kHeads * kDim; ++i)
        out.push_back(float(int(mix(h + i) % 2048) - 1024) / 64.0f);
}

struct ManagedSeq {
    SeqId id;
    std::vector<int32_t> tokens;  // every token id so far
    uint64_t salt;
    uint32_t tmpl;
    bool known;  // every step gave token ids: its full pages are registered
};

constexpr size_t kMaxSeqs = 8;

// How far the prefix-caching inputs went, printed at exit: executions, operations, prompt
// tokens found cached, evictions, copy-on-write page copies.
uint64_t managed_runs = 0, managed_ops = 0, managed_hits = 0, managed_evictions = 0,
         managed_copies = 0;

void print_managed() {
    using ull = unsigned long long;
    std::fprintf(stderr,
                 "fuzz_cache: prefix caching: %llu executions, %llu operations, %llu prompt "
                 "tokens hit, %llu evictions, %llu page copies\n",
                 ull(managed_runs), ull(managed_ops), ull(managed_hits), ull(managed_evictions),
                 ull(managed_copies));
}

// Writes the K/V of tokens [from, tokens.size()) of each sequence into the reference, packed.
void reference_write(test::ReferenceSequences& ref, const std::vector<const ManagedSeq*>& seqs,
                     const std::vector<uint32_t>& counts, bool step) {
    std::vector<uint64_t> ids;
    for (const ManagedSeq* s : seqs)
        ids.push_back(s->id);
    if (step) ref.begin_step(ids, counts);
    for (uint32_t l = 0; l < kLayers; ++l) {
        std::vector<float> k, v;
        for (size_t i = 0; i < seqs.size(); ++i)
            for (size_t p = seqs[i]->tokens.size() - counts[i]; p < seqs[i]->tokens.size(); ++p) {
                token_kv(seqs[i]->salt, seqs[i]->tokens, p, l, 0, k);
                token_kv(seqs[i]->salt, seqs[i]->tokens, p, l, 1, v);
            }
        ref.write(ids, counts, l, as_stored(k), as_stored(v));
    }
}

void compare_manager(const KVManager& mgr, const BlockPool& pool,
                     const test::ReferenceSequences& ref, const std::vector<ManagedSeq>& seqs,
                     size_t op) {
    if (!pool.validate()) {
        std::fprintf(stderr, "fuzz_cache: %s\n", pool.check().c_str());
        fail("pool invariants broken (allocator or prefix index)", op);
    }
    const PoolStats st = pool.stats();
    if (st.used_blocks + st.free_blocks + st.cached_blocks != st.num_blocks)
        fail("pool stats do not add up", op);
    if (mgr.prefix_stats().cached_pages < st.cached_blocks)
        fail("more evictable pages than indexed ones", op);
    std::vector<SeqId> ids;
    for (const ManagedSeq& s : seqs)
        ids.push_back(s.id);
    std::sort(ids.begin(), ids.end());
    if (mgr.sequences() != ids || ref.ids() != std::vector<uint64_t>(ids.begin(), ids.end()))
        fail("live sequences differ", op);
    for (const ManagedSeq& s : seqs) {
        if (mgr.length(s.id) != ref.length(s.id) || ref.length(s.id) != int64_t(s.tokens.size()))
            fail("sequence length differs", op);
        for (uint32_t l = 0; l < kLayers; ++l) {
            const auto kv = mgr.gather(s.id, l);
            if (!same(kv.first.to_host(), ref.keys(s.id, l)) ||
                !same(kv.second.to_host(), ref.values(s.id, l)))
                fail("gathered K/V differ from the reference (a shared page holds other K/V)", op);
        }
    }
}

// Every page of the pool's prefix index holds the K/V of its tokens: a probe manager (one more
// KVManager with prefix caching over the pool: it shares the index) admits each leaf's whole
// chain of tokens, must find every page of it, and gathers them. Done after an input's last
// operation (each probe puts its pages back at the tail of the evictable list).
void probe_index(BlockPool& pool, size_t op) {
    const PrefixIndex* pi = detail::Access::pool(pool).prefix.get();
    if (!pi) fail("no prefix index behind a manager with prefix caching", op);
    const std::vector<PrefixEntry> entries = pi->entries();  // each after its parent
    std::map<uint32_t, std::vector<int32_t>> prefix;         // block -> tokens up to its page's end
    std::map<uint32_t, bool> leaf;
    for (const PrefixEntry& e : entries) {
        std::vector<int32_t> t;
        if (e.parent != PrefixEntry::kNoParent) {
            t = prefix.at(e.parent);
            leaf[e.parent] = false;
        }
        t.insert(t.end(), e.tokens.begin(), e.tokens.end());
        prefix[index(e.block)] = std::move(t);
        leaf.emplace(index(e.block), true);
    }
    KVManager probe(pool, ManagerOptions{0.01, true});
    for (const PrefixEntry& e : entries) {
        if (!leaf.at(index(e.block))) continue;
        std::vector<int32_t> tokens = prefix.at(index(e.block));
        const size_t n = tokens.size();
        tokens.push_back(0);  // one token to compute: every full page can be shared
        const SeqId id = probe.add_sequence(tokens, e.salt);
        if (probe.length(id) != int64_t(n)) fail("an indexed page cannot be found", op);
        for (uint32_t l = 0; l < kLayers; ++l) {
            std::vector<float> k, v, want_k(n * kHeads * kDim), want_v(n * kHeads * kDim);
            for (size_t p = 0; p < n; ++p) {
                token_kv(e.salt, tokens, p, l, 0, k);
                token_kv(e.salt, tokens, p, l, 1, v);
            }
            for (size_t p = 0; p < n; ++p)  // (tokens, heads, dim) -> (heads, tokens, dim)
                for (uint32_t h = 0; h < kHeads; ++h)
                    for (uint32_t d = 0; d < kDim; ++d) {
                        want_k[(h * n + p) * kDim + d] = k[(p * kHeads + h) * kDim + d];
                        want_v[(h * n + p) * kDim + d] = v[(p * kHeads + h) * kDim + d];
                    }
            const auto kv = probe.gather(id, l);
            if (!same(kv.first.to_host(), as_stored(want_k)) ||
                !same(kv.second.to_host(), as_stored(want_v)))
                fail("a cached page holds other K/V than its tokens'", op);
        }
        probe.free(id);
    }
}

// The harness's pool: pages of 1-4 tokens (data[0] bits 0-1) of f16, int8 or fp8 (bits 4-5).
PoolConfig fuzz_config(const uint8_t* data, uint64_t blocks) {
    constexpr DType kDTypes[] = {DType::F16, DType::Int8, DType::FP8E4M3, DType::F16};
    pool_dtype = kDTypes[(data[0] >> 4) & 3];
    PoolConfig c;
    c.num_layers = kLayers;
    c.num_kv_heads = kHeads;
    c.head_dim = kDim;
    c.block_size = 1 + data[0] % 4;
    c.dtype = pool_dtype;
    c.num_blocks = blocks;
    return c;
}

int run_manager(const uint8_t* data, size_t size) {
    Context& ctx = context();
    // Small: prompts outgrow it, cached pages are evicted.
    const PoolConfig c = fuzz_config(data, 4 + data[1] % 28);
    // Probing the index after every operation reorders the evictable list (each probe puts
    // the pages it held back at its tail), so half the inputs probe only after the last one.
    const bool probe_every_op = data[1] & 0x80;
    const uint32_t bs = c.block_size;
    BlockPool pool(ctx, c);
    KVManager mgr(pool, ManagerOptions{0.01, true});
    const PrefixIndex& index = *detail::Access::pool(pool).prefix;  // read only
    test::ReferenceSequences ref(kLayers, kHeads, kDim, kDim);
    std::vector<ManagedSeq> seqs;
    PrefixCacheStats before = mgr.prefix_stats();
    ++managed_runs;
    uint64_t hit_tokens = 0;  // prefix_stats restarts at reset_prefix_cache
    for (size_t i = 2; i + 2 < size; i += 3) {
        ++managed_ops;
        const uint8_t op = data[i] % 8, a = data[i + 1], b = data[i + 2];
        ManagedSeq* s = seqs.empty() ? nullptr : &seqs[a % seqs.size()];
        try {
            switch (op) {
                case 0: {  // add_sequence(prompt, salt): the cached pages of its prefix
                    if (seqs.size() >= kMaxSeqs) break;
                    const uint32_t tmpl = a & 3;
                    const uint64_t salt = (a >> 2) & 1;
                    std::vector<int32_t> prompt;
                    for (size_t j = 0; j < size_t(b % 24); ++j)
                        prompt.push_back(template_token(tmpl, j));
                    // The longest cached run of full pages, never the whole prompt.
                    const size_t cached =
                        index.match(prompt, salt, prompt.empty() ? 0 : (prompt.size() - 1) / bs)
                            .size();
                    const SeqId id = mgr.add_sequence(prompt, salt);
                    const int64_t held = mgr.length(id);
                    if (held != int64_t(cached * bs) || mgr.block_table(id).size() != cached)
                        fail("add_sequence holds other than the longest cached prefix", i);
                    const PrefixCacheStats now = mgr.prefix_stats();
                    if (now.queries != before.queries + 1 ||
                        now.query_tokens != before.query_tokens + prompt.size() ||
                        now.hit_tokens != before.hit_tokens + uint64_t(held))
                        fail("prefix_stats did not count the lookup", i);
                    hit_tokens += uint64_t(held);
                    ref.add(id);
                    seqs.push_back({id, {}, salt, tmpl, true});
                    ManagedSeq& q = seqs.back();
                    q.tokens.assign(prompt.begin(), prompt.begin() + held);
                    // The shared pages must hold what this sequence would have written.
                    reference_write(ref, {&q}, {uint32_t(held)}, true);
                    break;
                }
                case 1: {  // a step: 1..3 sequences, each 1..4 new tokens (prefill or decode)
                    if (!s) break;
                    const size_t first = a % seqs.size(),
                                 n = std::min<size_t>(seqs.size(), 1 + (a >> 6) % 3);
                    std::vector<ManagedSeq*> in;
                    std::vector<SeqId> ids;
                    std::vector<uint32_t> counts;
                    std::vector<std::vector<int32_t>> more(n);
                    for (size_t j = 0; j < n; ++j) {
                        ManagedSeq& q = seqs[(first + j) % seqs.size()];
                        in.push_back(&q);
                        ids.push_back(q.id);
                        counts.push_back(1 + ((b >> (2 * j)) & 3));
                        for (uint32_t t = 0; t < counts[j]; ++t)
                            more[j].push_back(template_token(q.tmpl, q.tokens.size() + t));
                        if (j == 0 && (b & 0x40))  // diverges from the template
                            more[0][0] = (more[0][0] + 1 + ((a >> 3) & 1)) % 3;
                    }
                    std::vector<std::span<const int32_t>> spans(more.begin(), more.end());
                    // Rarely a step without token ids: those sequences register no more pages.
                    const bool with_ids = (a & 0x30) != 0x30 || !(b & 0x80);
                    Step step = with_ids ? mgr.begin_step(ids, spans) : mgr.begin_step(ids, counts);
                    std::vector<const ManagedSeq*> done;
                    for (size_t j = 0; j < n; ++j) {
                        ManagedSeq& q = *in[j];
                        q.tokens.insert(q.tokens.end(), more[j].begin(), more[j].end());
                        q.known = q.known && with_ids;
                        done.push_back(&q);
                    }
                    const uint32_t total = step.total_tokens();
                    for (uint32_t l = 0; l < kLayers; ++l) {
                        std::vector<float> k, v;
                        for (size_t j = 0; j < n; ++j)
                            for (size_t p = in[j]->tokens.size() - counts[j];
                                 p < in[j]->tokens.size(); ++p) {
                                token_kv(in[j]->salt, in[j]->tokens, p, l, 0, k);
                                token_kv(in[j]->salt, in[j]->tokens, p, l, 1, v);
                            }
                        const std::vector<int64_t> shape{total, kHeads, kDim};
                        mgr.write(step, l, Tensor::from_host(ctx, k, shape, DType::F16),
                                  Tensor::from_host(ctx, v, shape, DType::F16));
                    }
                    mgr.end_step(std::move(step));
                    // The step ended with every layer written: it registered every page its
                    // tokens filled.
                    for (const ManagedSeq* q : done)
                        if (q->known && index.match(q->tokens, q->salt, SIZE_MAX).size() !=
                                            q->tokens.size() / bs)
                            fail("a full page of a step is not in the prefix index", i);
                    reference_write(ref, done, counts, true);
                    break;
                }
                case 2: {  // fork
                    if (!s || seqs.size() >= kMaxSeqs) break;
                    const SeqId id = mgr.fork(s->id);
                    ref.fork(s->id, id);
                    ManagedSeq copy = *s;
                    copy.id = id;
                    seqs.push_back(std::move(copy));
                    break;
                }
                case 3: {  // truncate: keep a length, or drop 1..4 tokens (rollback)
                    if (!s) break;
                    const int64_t len = int64_t(s->tokens.size());
                    const int64_t to = (b & 0x80) ? -(1 + b % 4) : int64_t(b % (len + 2));
                    mgr.truncate(s->id, to);
                    ref.truncate(s->id, to);
                    s->tokens.resize(size_t(ref.length(s->id)));
                    break;
                }
                case 4:  // free: its cached pages stay, evictable
                    if (!s) break;
                    mgr.free(s->id);
                    ref.free(s->id);
                    seqs.erase(seqs.begin() + ptrdiff_t(a % seqs.size()));
                    break;
                case 5:
                    mgr.reset_prefix_cache();
                    if (mgr.prefix_stats().cached_pages != 0 || pool.stats().cached_blocks != 0)
                        fail("reset_prefix_cache left pages cached", i);
                    break;
                case 6: {  // a reservation (with lookahead) that the next steps use
                    if (!s) break;
                    const SeqId id = s->id;
                    const uint32_t count = b % 3;
                    mgr.allocate(std::span(&id, 1), std::span(&count, 1), (b >> 2) % 3);
                    break;
                }
                case 7: {  // a new sequence repeating a live one's tokens: shares its pages
                    if (!s || seqs.size() >= kMaxSeqs) break;
                    const ManagedSeq src = *s;
                    const size_t cached =
                        index
                            .match(src.tokens, src.salt,
                                   src.tokens.empty() ? 0 : (src.tokens.size() - 1) / bs)
                            .size();
                    const SeqId id = mgr.add_sequence(src.tokens, src.salt);
                    const int64_t held = mgr.length(id);
                    if (held != int64_t(cached * bs) || mgr.block_table(id).size() != cached)
                        fail("add_sequence holds other than the longest cached prefix", i);
                    hit_tokens += uint64_t(held);
                    ref.add(id);
                    seqs.push_back({id, {}, src.salt, src.tmpl, true});
                    ManagedSeq& q = seqs.back();
                    q.tokens.assign(src.tokens.begin(), src.tokens.begin() + held);
                    reference_write(ref, {&q}, {uint32_t(held)}, true);
                    break;
                }
            }
        } catch (const Error& e) {
            // Refused (out of blocks): nothing changed, which the comparison proves.
            if (e.code() != ErrorCode::OutOfBlocks) {
                std::fprintf(stderr, "fuzz_cache: %s\n", e.what());
                fail("the manager refused an operation other than for want of pages", i);
            }
        }
        before = mgr.prefix_stats();
        compare_manager(mgr, pool, ref, seqs, i);
        if (probe_every_op || i + 5 >= size) probe_index(pool, i);
    }
    managed_hits += hit_tokens;
    managed_evictions += mgr.prefix_stats().evictions;
    managed_copies += pool.stats().pages_copied;
    return 0;
}

// ---- KVManager over a hybrid pool (PoolConfig::layer_windows)

constexpr uint32_t kHybridLayers = 4;

// How far the hybrid inputs went, printed at exit: executions, operations, truncations refused
// (a sliding layer's window left), OutOfBlocks refusals, attention rows checked.
uint64_t hybrid_runs = 0, hybrid_ops = 0, hybrid_refused_truncations = 0, hybrid_out_of_blocks = 0,
         hybrid_attention_rows = 0;

void print_hybrid() {
    using ull = unsigned long long;
    std::fprintf(stderr,
                 "fuzz_cache: hybrid: %llu executions, %llu operations, %llu truncations refused, "
                 "%llu out of blocks, %llu attention rows\n",
                 ull(hybrid_runs), ull(hybrid_ops), ull(hybrid_refused_truncations),
                 ull(hybrid_out_of_blocks), ull(hybrid_attention_rows));
}

// Every live sequence's length, each layer's held tokens, mask range and K/V equal the
// reference's; each layer's table covers what it holds, and a sliding layer's no more than its
// window, the largest step and reservation, and the pages they straddle.
void compare_hybrid(const KVManager& mgr, const BlockPool& pool,
                    const test::ReferenceSequences& ref, const std::vector<uint32_t>& windows,
                    size_t op) {
    if (!pool.validate()) {
        std::fprintf(stderr, "fuzz_cache: %s\n", pool.check().c_str());
        fail("hybrid pool invariants broken", op);
    }
    const PoolStats st = pool.stats();
    if (st.used_blocks + st.free_blocks + st.cached_blocks != st.num_blocks)
        fail("hybrid pool stats do not add up", op);
    const std::vector<SeqId> live = mgr.sequences();
    if (ref.ids() != std::vector<uint64_t>(live.begin(), live.end()))
        fail("hybrid: live sequences differ", op);
    const int64_t bs = pool.config().block_size;
    for (const SeqId id : live) {
        const int64_t len = ref.length(id);
        if (mgr.length(id) != len) fail("hybrid: sequence length differs", op);
        for (uint32_t l = 0; l < kHybridLayers; ++l) {
            const int64_t first = ref.first_held(id, l);
            if (mgr.mask_range(id, l) != std::pair<int64_t, int64_t>{first, len - first} ||
                mgr.held(id, l) != len - first)
                fail("hybrid: held / mask_range differ from the window", op);
            const auto kv = mgr.gather(id, l);
            if (!same(kv.first.to_host(), ref.keys(id, l)) ||
                !same(kv.second.to_host(), ref.values(id, l)))
                fail("hybrid: gathered K/V differ from the reference", op);
            const int64_t pages = int64_t(mgr.block_table(id, l).size());
            if (pages * bs < len - first) fail("hybrid: a layer's table is short", op);
            // (steps of at most 8 tokens, reservations of at most 4 + 3)
            if (windows[l] > 0 && pages > (int64_t(windows[l]) + 15) / bs + 3)
                fail("hybrid: a sliding layer's table keeps pages that left its window", op);
        }
    }
}

// The manager's visible state, to prove that a refused operation changed nothing.
struct HybridState {
    std::vector<SeqId> seqs;
    std::vector<std::vector<uint32_t>> tables;  // [seq * layers + layer]
    std::vector<int64_t> lengths;
    uint64_t used = 0;
    bool operator==(const HybridState&) const = default;
};

HybridState hybrid_state(const KVManager& mgr, const BlockPool& pool) {
    HybridState h;
    h.seqs = mgr.sequences();
    for (const SeqId id : h.seqs) {
        h.lengths.push_back(mgr.length(id));
        for (uint32_t l = 0; l < kHybridLayers; ++l)
            h.tables.push_back(mgr.block_table(id, l));
    }
    h.used = pool.stats().used_blocks;
    return h;
}

// data[0]: 0x40 set, 0x80 clear. Pages of 2-4 tokens (bits 0-1) of f16, int8 or fp8 (bits
// 4-5); data[1] and data[2]'s low nibble: each of the 4 layers' window (3 bits each: full
// attention or 1, 2, 3, 4, 5, 7 tokens); data[2]'s high nibble: the pool's pages (4..34).
int run_hybrid(const uint8_t* data, size_t size) {
    if (size < 3) return 0;
    Context& ctx = context();
    PoolConfig c = fuzz_config(data, 4 + 2 * (data[2] >> 4));
    c.num_layers = kHybridLayers;
    c.block_size = 2 + data[0] % 3;
    constexpr uint32_t kWindows[8] = {0, 1, 3, 5, 0, 2, 4, 7};
    const uint32_t bits = data[1] | (uint32_t(data[2] & 0xf) << 8);
    std::vector<uint32_t> windows;
    for (uint32_t l = 0; l < kHybridLayers; ++l)
        windows.push_back(kWindows[(bits >> (3 * l)) & 7]);
    c.layer_windows = windows;
    BlockPool pool(ctx, c);
    KVManager mgr(pool, ManagerOptions{0.0, false});
    test::ReferenceSequences ref(kHybridLayers, kHeads, kDim, kDim);
    ref.set_windows(windows);
    ++hybrid_runs;
    uint64_t counter = 0;
    // Multiples of 1/64 in [-16, 16): exact in f16.
    auto values = [&](size_t n) {
        std::vector<float> out(n);
        for (float& x : out)
            x = float(int(mix(++counter) % 2048) - 1024) / 64.0f;
        return out;
    };
    // A step of `seqs` with `counts` new tokens: every layer written, and attention over
    // `attend` layers (bit l) checked against the reference's causal attention over the
    // layer's window.
    auto step = [&](const std::vector<SeqId>& ids, const std::vector<uint32_t>& counts,
                    uint32_t attend, size_t op) {
        Step st = mgr.begin_step(ids, counts);
        const std::vector<uint64_t> rids(ids.begin(), ids.end());
        ref.begin_step(rids, counts);
        const uint32_t total = st.total_tokens();
        const std::vector<int64_t> shape{total, kHeads, kDim};
        for (uint32_t l = 0; l < kHybridLayers; ++l) {
            const auto k = values(size_t(total) * kHeads * kDim);
            const auto v = values(size_t(total) * kHeads * kDim);
            mgr.write(st, l, Tensor::from_host(ctx, k, shape, DType::F16),
                      Tensor::from_host(ctx, v, shape, DType::F16));
            ref.write(rids, counts, l, as_stored(k), as_stored(v));
            if (st.view(l).window != windows[l])
                fail("hybrid: a step's view has another window", op);
            if (!(attend >> l & 1) || total == 0) continue;
            std::vector<float> q(size_t(total) * kQueryHeads * kDim);
            for (float& x : q)
                x = float(int(mix(++counter) % 128) - 64) / 64.0f;
            const std::vector<float> got =
                mgr.attention(st, l,
                              Tensor::from_host(ctx, q, {total, kQueryHeads, kDim}, DType::F16))
                    .to_host();
            uint32_t t = 0;
            for (size_t i = 0; i < ids.size(); ++i)
                for (uint32_t j = 0; j < counts[i]; ++j, ++t) {
                    const int64_t pos = st.first_positions()[i] + j;
                    const int64_t from =
                        windows[l] ? std::max<int64_t>(0, pos - windows[l] + 1) : 0;
                    const auto want = test::causal_attention_row(
                        &q[size_t(t) * kQueryHeads * kDim], ref.raw_keys(ids[i], l),
                        ref.raw_values(ids[i], l), pos + 1, kQueryHeads, kHeads, kDim, kDim,
                        1.0f / std::sqrt(float(kDim)), from);
                    const double tol = is_quantized(pool_dtype) ? 5e-2 : 1e-2;
                    for (size_t e = 0; e < want.size(); ++e)
                        if (!(std::fabs(double(got[t * kQueryHeads * kDim + e]) - want[e]) <=
                              tol * (1.0 + std::fabs(want[e]))))
                            fail("hybrid: attention differs from the window's reference", op);
                    ++hybrid_attention_rows;
                }
        }
        mgr.end_step(std::move(st));
    };
    for (size_t i = 3; i + 2 < size; i += 3) {
        ++hybrid_ops;
        const uint8_t op = data[i] % 8, a = data[i + 1], b = data[i + 2];
        const std::vector<uint64_t> ids = ref.ids();
        const SeqId s = ids.empty() ? 0 : ids[a % ids.size()];
        const HybridState before = hybrid_state(mgr, pool);
        bool refused = false;
        try {
            switch (op) {
                case 0:
                    if (ids.size() < kMaxSeqs) ref.add(mgr.add_sequence());
                    break;
                case 1:
                case 6: {  // a step: 1..3 sequences of 0..7 new tokens (op 6: 1 each, decode)
                    if (ids.empty()) break;
                    const size_t n = std::min<size_t>(ids.size(), 1 + (a >> 6) % 3);
                    std::vector<SeqId> in;
                    std::vector<uint32_t> counts;
                    for (size_t j = 0; j < n; ++j) {
                        in.push_back(ids[(a + j) % ids.size()]);
                        counts.push_back(op == 6 ? 1 : (b >> (3 * j)) & 7);
                    }
                    step(in, counts, (a & 0x20) ? (b >> 4) : 0, i);
                    break;
                }
                case 2:
                    if (!ids.empty() && ids.size() < kMaxSeqs) ref.fork(s, mgr.fork(s));
                    break;
                case 3:
                case 7: {  // truncate: keep a length (op 3), or roll back 1..4 tokens (op 7)
                    if (ids.empty()) break;
                    const int64_t len = ref.length(s);
                    const int64_t to = op == 7 ? -(1 + b % 4) : int64_t(b % (len + 2));
                    try {
                        mgr.truncate(s, to);
                    } catch (const Error& e) {
                        // Only a sliding layer whose window's pages are gone refuses.
                        if (e.code() != ErrorCode::InvalidArgument ||
                            std::string(e.what()).find("left the window") == std::string::npos)
                            throw;
                        ++hybrid_refused_truncations;
                        refused = true;
                        break;
                    }
                    ref.truncate(s, to);
                    break;
                }
                case 4:
                    if (ids.empty()) break;
                    mgr.free(s);
                    ref.free(s);
                    break;
                case 5: {  // a reservation (with lookahead) that the next steps use
                    if (ids.empty()) break;
                    const uint32_t count = b % 5;
                    mgr.allocate(std::span(&s, 1), std::span(&count, 1), (b >> 3) % 4);
                    break;
                }
            }
        } catch (const Error& e) {
            if (e.code() != ErrorCode::OutOfBlocks) {
                std::fprintf(stderr, "fuzz_cache: %s\n", e.what());
                fail("hybrid: the manager refused an operation other than for want of pages", i);
            }
            ++hybrid_out_of_blocks;
            refused = true;
        }
        if (refused && !(hybrid_state(mgr, pool) == before))
            fail("hybrid: a refused operation changed the manager", i);
        compare_hybrid(mgr, pool, ref, windows, i);
    }
    return 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // libFuzzer ends a run (-runs, -max_total_time) with exit(), which runs this.
    std::atexit(print_managed);
    std::atexit(print_hybrid);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) return 0;
    if (data[0] & 0x80) return run_manager(data, size);
    if (data[0] & 0x40) return run_hybrid(data, size);
    Context& ctx = context();
    const PoolConfig c = fuzz_config(data, 8 + data[1] % 40);
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
                    const std::vector<float> stored = as_stored(k);
                    ref.update(stored, stored, rows, seq, layer, pos);
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
