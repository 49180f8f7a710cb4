#include "engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "reference_quant.hpp"
#include "reference_sequences.hpp"

namespace pagedkv::serve {

namespace {

double tolerance(DType t) {
    return t == DType::F32 ? 1e-4 : t == DType::F16 ? 4e-3 : 2e-2;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

uint32_t pages_for(uint64_t tokens, uint32_t block) {
    return uint32_t((tokens + block - 1) / block);
}

// splitmix64's finalizer: the K/V of a token are drawn from a stream seeded by the hash of its
// prefix, so equal prefixes give equal K/V in any sequence.
uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

constexpr uint64_t kChainRoot = 0x243f6a8885a308d3ull;

std::vector<int32_t> random_ids(std::mt19937& rng, size_t n) {
    std::uniform_int_distribution<int32_t> d(0, kVocab - 1);
    std::vector<int32_t> v(n);
    for (int32_t& x : v)
        x = d(rng);
    return v;
}

}  // namespace

std::vector<Request> make_trace(const TraceOptions& t) {
    std::mt19937 rng(uint32_t(t.seed));
    std::exponential_distribution<double> gap(t.arrivals_per_step);
    std::lognormal_distribution<double> prompt(std::log(t.prompt_median), t.prompt_sigma);
    std::lognormal_distribution<double> output(std::log(t.output_median), t.output_sigma);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<Request> out;
    double at = 0;
    for (uint32_t i = 0; i < t.requests; ++i) {
        Request r;
        r.id = i;
        if (i > 0) at += gap(rng);
        r.arrival_step = uint64_t(at);
        r.prompt = std::clamp<uint32_t>(uint32_t(prompt(rng)), 1, t.max_prompt);
        const uint32_t samples = u(rng) < t.parallel_share ? 2 + uint32_t(rng() % 2) : 1;
        for (uint32_t s = 0; s < samples; ++s)
            r.outputs.push_back(std::clamp<uint32_t>(uint32_t(output(rng)), 1, t.max_output));
        out.push_back(std::move(r));
    }
    // The ids from a stream of their own (the lengths and arrivals stay those of the seed).
    std::mt19937 ids(uint32_t(t.seed * 31 + 17));
    for (Request& r : out) {
        r.prompt_ids = random_ids(ids, r.prompt);
        for (uint32_t n : r.outputs)
            r.output_ids.push_back(random_ids(ids, n));
    }
    return out;
}

std::vector<Request> make_shared_prefix_trace(const SharedPrefixOptions& t) {
    if (t.min_turns < 1 || t.max_turns < t.min_turns)
        throw std::invalid_argument("a conversation needs 1 <= min_turns <= max_turns");
    std::mt19937 rng(uint32_t(t.seed));
    std::exponential_distribution<double> gap(t.arrivals_per_step);
    std::exponential_distribution<double> think(t.think_steps > 0 ? 1 / t.think_steps : 1.0);
    std::lognormal_distribution<double> user(std::log(t.user_median), t.user_sigma);
    std::lognormal_distribution<double> answer(std::log(t.answer_median), t.answer_sigma);
    const std::vector<int32_t> system = random_ids(rng, t.system_prompt);
    std::vector<Request> out;
    double at = 0;
    for (uint32_t c = 0; c < t.conversations; ++c) {
        if (c > 0) at += gap(rng);
        const uint32_t turns = t.min_turns + uint32_t(rng() % (t.max_turns - t.min_turns + 1));
        std::vector<int32_t> history = system;
        for (uint32_t k = 0; k < turns; ++k) {
            Request r;
            r.id = uint32_t(out.size());
            const auto said =
                random_ids(rng, std::clamp<uint32_t>(uint32_t(user(rng)), 1, t.max_user));
            history.insert(history.end(), said.begin(), said.end());
            r.prompt_ids = history;
            r.prompt = uint32_t(history.size());
            auto reply =
                random_ids(rng, std::clamp<uint32_t>(uint32_t(answer(rng)), 1, t.max_answer));
            history.insert(history.end(), reply.begin(), reply.end());
            r.outputs = {uint32_t(reply.size())};
            r.output_ids = {std::move(reply)};
            if (k == 0) {
                r.arrival_step = uint64_t(at);
            } else {
                r.after = int64_t(out.size()) - 1;
                r.delay = t.think_steps > 0 ? uint64_t(think(rng)) : 0;
            }
            out.push_back(std::move(r));
        }
    }
    return out;
}

uint64_t OracleCache::hit(std::span<const int32_t> prompt) const {
    const size_t bs = block_size_;
    const size_t max_pages = prompt.empty() ? 0 : (prompt.size() - 1) / bs;
    std::pair<uint32_t, std::vector<int32_t>> key{0, {}};
    size_t k = 0;
    for (; k < max_pages; ++k) {
        key.second.assign(prompt.begin() + ptrdiff_t(k * bs),
                          prompt.begin() + ptrdiff_t(k * bs + bs));
        const auto it = nodes_.find(key);
        if (it == nodes_.end()) break;
        key.first = it->second;
    }
    return uint64_t(k * bs);
}

uint32_t OracleCache::add(std::span<const int32_t> tokens, size_t from, uint32_t node) {
    const size_t bs = block_size_;
    for (size_t k = from; k < tokens.size() / bs; ++k) {
        std::pair<uint32_t, std::vector<int32_t>> key{
            node, {tokens.begin() + ptrdiff_t(k * bs), tokens.begin() + ptrdiff_t(k * bs + bs)}};
        const uint32_t fresh = uint32_t(nodes_.size() + 1);  // 0 is the root
        node = nodes_.try_emplace(std::move(key), fresh).first->second;
    }
    return node;
}

Engine::Engine(Context& ctx, BlockPool& pool, std::vector<Request> trace, EngineOptions opt,
               ManagerOptions mopt)
    : ctx_(ctx),
      pool_(pool),
      mgr_(pool, mopt),
      opt_(opt),
      cfg_(pool.config()),
      io_(is_quantized(cfg_.dtype) ? *cfg_.compute_dtype : cfg_.dtype),
      q_heads_(opt.q_heads ? opt.q_heads : 2 * pool.config().num_kv_heads),
      trace_(std::move(trace)),
      rng_(uint32_t(opt.seed)),
      values_rng_(uint32_t(opt.seed * 131 + 5)) {
    if (q_heads_ % cfg_.num_kv_heads != 0)
        throw std::invalid_argument("query heads must be a multiple of the kv heads");
    if (opt_.token_budget < 1 + opt_.draft_tokens)
        throw std::invalid_argument("the token budget must hold one speculative decode");
    if (opt_.check && !opt_.compute)
        throw std::invalid_argument("checks need the steps computed (EngineOptions::compute)");
    followers_.resize(trace_.size());
    for (size_t i = 0; i < trace_.size(); ++i) {
        const Request& r = trace_[i];
        bool ids_ok = r.id == i && r.prompt_ids.size() == r.prompt &&
                      r.output_ids.size() == r.outputs.size() && r.after < int64_t(i) &&
                      r.after >= -1 && !r.outputs.empty();
        for (size_t k = 0; ids_ok && k < r.outputs.size(); ++k)
            ids_ok = r.output_ids[k].size() == r.outputs[k];
        if (!ids_ok)
            throw std::invalid_argument(fmt::format(
                "request {} of the trace: its id must be its index, its token ids as many as its "
                "lengths, and the request it follows an earlier one",
                i));
        if (r.after >= 0)
            followers_[size_t(r.after)].push_back(i);
        else
            pending_.insert({r.arrival_step, i});
    }
    for (const Request& r : trace_) {
        const uint32_t longest = *std::max_element(r.outputs.begin(), r.outputs.end());
        const uint32_t len = r.prompt + longest + opt_.draft_tokens;
        stats_.max_length = std::max(stats_.max_length, len);
        // Every sample holding its own pages at its longest (a request must fit alone).
        const uint64_t alone = uint64_t(pages_for(len, cfg_.block_size)) * r.outputs.size();
        if (alone > cfg_.num_blocks)
            throw std::invalid_argument(
                fmt::format("request {} needs up to {} pages alone, the pool has {}", r.id, alone,
                            cfg_.num_blocks));
        if (r.outputs.size() > opt_.max_running)
            throw std::invalid_argument("a request has more samples than max_running");
    }
    if (opt_.check)
        ref_ = std::make_unique<test::ReferenceSequences>(cfg_.num_layers, cfg_.num_kv_heads,
                                                          cfg_.head_dim, cfg_.v_head_dim);
    if (ref_) ref_->set_windows(cfg_.layer_windows);  // hybrid: sliding layers hold their window
    if (opt_.oracle) oracle_ = std::make_unique<OracleCache>(cfg_.block_size);
}

Engine::~Engine() = default;

bool Engine::done() const {
    return pending_.empty() && waiting_.empty() && running_.empty() && swapped_.empty();
}

void Engine::arrive(size_t index, uint64_t step) {
    pending_.insert({step, index});
}

int32_t Engine::token_at(const Request& r, uint32_t sample, size_t p) {
    return p < r.prompt ? r.prompt_ids[p] : r.output_ids[sample][p - r.prompt];
}

void Engine::append(Seq& s, std::span<const int32_t> ids) {
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    if (!ref_) return;
    for (int32_t id : ids) {
        const uint64_t h = s.chain.empty() ? kChainRoot : s.chain.back();
        s.chain.push_back(mix64(h ^ (uint64_t(uint32_t(id)) * 0xd6e8feb86659fd93ull)));
    }
}

void Engine::truncate_seq(Seq& s, size_t length) {
    s.ids.resize(std::min(s.ids.size(), length));
    s.chain.resize(std::min(s.chain.size(), length));
    if (s.oracle_pages > length / cfg_.block_size) {  // found again from the first page
        s.oracle_pages = 0;
        s.oracle_node = 0;
    }
}

void Engine::kv_of(const Seq& s, size_t from, size_t n, uint32_t layer, std::vector<float>& k,
                   std::vector<float>& v) const {
    const size_t kn = size_t(cfg_.num_kv_heads) * cfg_.head_dim;
    const size_t vn = size_t(cfg_.num_kv_heads) * cfg_.v_head_dim;
    auto draw = [&](uint64_t& x) {
        x = mix64(x);
        return round_to(io_, float(double(x >> 40) * 0x1p-24 * 4.0 - 2.0));
    };
    for (size_t p = from; p < from + n; ++p) {
        uint64_t x = mix64(s.chain[p] ^ (uint64_t(layer + 1) * 0x9e3779b97f4a7c15ull));
        for (size_t e = 0; e < kn; ++e)
            k.push_back(draw(x));
        for (size_t e = 0; e < vn; ++e)
            v.push_back(draw(x));
    }
}

const EngineStats& Engine::run(uint64_t max_steps) {
    while ((max_steps == 0 || stats_.steps < max_steps) && step()) {
    }
    return stats_;
}

std::vector<float> Engine::stored(const std::vector<float>& x, uint32_t dim) const {
    if (!is_quantized(cfg_.dtype)) return x;
    return test::quantize_rows(cfg_.dtype, io_, x, dim);
}

void Engine::mismatch(std::string what) {
    if (stats_.first_mismatch.empty()) stats_.first_mismatch = std::move(what);
}

// Inputs of the unchecked runs: one tensor per kind and size, made once (the bench times the
// manager and its kernels, not uploads of random numbers).
const Tensor& Engine::input(char kind, uint32_t tokens, uint32_t heads, uint32_t dim) {
    const uint64_t key = (uint64_t(uint8_t(kind)) << 32) | tokens;
    auto it = cached_inputs_.find(key);
    if (it == cached_inputs_.end()) {
        std::uniform_real_distribution<float> d(-2.0f, 2.0f);
        std::vector<float> v(size_t(tokens) * heads * dim);
        for (float& x : v)
            x = round_to(io_, d(values_rng_));
        it = cached_inputs_.emplace(key, Tensor::from_host(ctx_, v, {tokens, heads, dim}, io_))
                 .first;
    }
    return it->second;
}

void Engine::check_kv(SeqId id, const char* when) {
    if (!ref_) return;
    ++stats_.kv_checks;
    if (mgr_.length(id) != ref_->length(id)) {
        ++stats_.kv_mismatches;
        mismatch(fmt::format("sequence {} ({}): length {}, the reference has {}", id, when,
                             mgr_.length(id), ref_->length(id)));
        return;
    }
    if (mgr_.length(id) == 0) return;
    for (uint32_t l = 0; l < cfg_.num_layers; ++l) {
        auto [k, v] = mgr_.gather(id, l);
        if (!same_bits(k.to_host(), ref_->keys(id, l)) ||
            !same_bits(v.to_host(), ref_->values(id, l))) {
            ++stats_.kv_mismatches;
            mismatch(fmt::format("sequence {} layer {} ({}): K/V differ from the reference", id, l,
                                 when));
        }
    }
}

void Engine::finish_seq(Group& g, size_t i) {
    const SeqId id = g.seqs[i].id;
    check_kv(id, "finished");
    mgr_.free(id);
    if (ref_) ref_->free(id);
    g.seqs.erase(g.seqs.begin() + std::ptrdiff_t(i));
}

// Recompute preemption: the youngest request loses its pages and goes back to the head of the
// queue. A single-sample request keeps what it generated (prefilled again with its prompt);
// a parallel-sampling request starts over.
void Engine::preempt_youngest() {
    Group g = std::move(running_.back());
    running_.pop_back();
    ++stats_.preemptions;
    if (swap_out_group(g)) {
        swapped_.push_back(std::move(g));
        return;
    }
    Waiting w{g.req, 0};
    if (g.req.outputs.size() == 1 && !g.seqs.empty()) w.resume = g.seqs[0].generated;
    for (const Seq& s : g.seqs) {
        stats_.recomputed_tokens += uint64_t(mgr_.length(s.id));
        check_kv(s.id, "preempted");
        mgr_.free(s.id);
        if (ref_) ref_->free(s.id);
    }
    waiting_.push_front(std::move(w));
}

void Engine::time_swap(const std::function<void()>& f) {
    using clock = std::chrono::steady_clock;
    const auto moved = [&] {
        const PoolStats p = pool_.stats();
        return std::pair{p.pages_swapped_out, p.pages_swapped_in};
    };
    ctx_.synchronize();  // the steps' work is not the swap's
    const auto before = moved();
    const auto t0 = clock::now();
    f();
    ctx_.synchronize();
    stats_.swap_seconds += std::chrono::duration<double>(clock::now() - t0).count();
    const auto after = moved();
    stats_.pages_swapped_out += after.first - before.first;
    stats_.pages_swapped_in += after.second - before.second;
    const uint64_t bytes =
        (after.first - before.first + after.second - before.second) * pool_.stats().block_bytes;
    stats_.swapped_bytes += bytes;
    if (scratch_a_.size() < bytes) {
        scratch_a_.assign(bytes, 1);
        scratch_b_.assign(bytes, 2);
    }
    const auto t1 = clock::now();
    if (bytes) std::memcpy(scratch_b_.data(), scratch_a_.data(), bytes);
    stats_.memcpy_seconds += std::chrono::duration<double>(clock::now() - t1).count();
}

// Swaps every sequence of g out, if the host tier has room for all their pages (counted as if
// none were shared: then no swap_out can fail half way).
bool Engine::swap_out_group(Group& g) {
    if (!opt_.swap || g.seqs.empty()) return false;
    const PoolStats ps = pool_.stats();
    uint64_t pages = 0;
    for (const Seq& s : g.seqs)
        pages += mgr_.block_table(s.id).size();
    if (pages > ps.host_blocks - ps.used_host_blocks) return false;
    for (const Seq& s : g.seqs)
        check_kv(s.id, "swapped out");
    time_swap([&] {
        for (const Seq& s : g.seqs)
            mgr_.swap_out(s.id);
    });
    ++stats_.swap_preemptions;
    return true;
}

// Swaps the oldest swapped request back in when the pool has room for it and a few pages per
// running sequence to grow into (so that it is not preempted again at once).
bool Engine::try_swap_in() {
    if (swapped_.empty()) return false;
    Group& g = swapped_.front();
    uint64_t pages = 0, running = 0;
    for (const Seq& s : g.seqs)
        pages += (uint64_t(mgr_.length(s.id)) + cfg_.block_size - 1) / cfg_.block_size;
    for (const Group& r : running_)
        running += r.seqs.size();
    const BlockCounts pc = pool_.stats();
    const uint64_t room = pc.free_blocks + pc.cached_blocks;
    if (pages > room || (!running_.empty() && pages + 2 * (running + g.seqs.size()) > room))
        return false;
    time_swap([&] {
        for (const Seq& s : g.seqs)
            mgr_.swap_in(s.id);
    });
    ++stats_.swap_resumes;
    for (const Seq& s : g.seqs)
        check_kv(s.id, "swapped back in");
    running_.push_back(std::move(g));
    swapped_.pop_front();
    return true;
}

bool Engine::step() {
    if (done()) return false;
    if (running_.empty() && waiting_.empty() && swapped_.empty())
        clock_ = std::max(clock_, pending_.begin()->first);
    while (!pending_.empty() && pending_.begin()->first <= clock_) {
        waiting_.push_back({trace_[pending_.begin()->second], 0});
        pending_.erase(pending_.begin());
        ++stats_.requests;
    }
    ++clock_;
    // Swapped requests come back first, oldest first, while the pool has room for them.
    while (try_swap_in()) {
    }
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (Group& g : running_)
        g.speculate = !g.prefilling() && opt_.draft_tokens > 0 && u(rng_) < opt_.speculate_share;

    // The running requests' work: decodes first (oldest request first), then prefill chunks,
    // within the token budget. Preempt the youngest while it does not fit in the free pages.
    struct Work {
        size_t group;
        size_t seq;  // index in the group's seqs
        uint32_t count;
        bool speculative;
    };
    std::vector<Work> work;
    std::vector<SeqId> ids;
    std::vector<uint32_t> counts;
    bool preempted = false;
    uint32_t budget = 0;
    for (;;) {
        work.clear();
        ids.clear();
        counts.clear();
        budget = opt_.token_budget;
        for (size_t gi = 0; gi < running_.size(); ++gi) {
            const Group& g = running_[gi];
            if (g.prefilling()) continue;
            uint32_t per = g.speculate ? 1 + opt_.draft_tokens : 1;
            if (per * g.seqs.size() > budget) per = 1;
            if (per * g.seqs.size() > budget) continue;
            for (size_t si = 0; si < g.seqs.size(); ++si) {
                work.push_back({gi, si, per, per > 1});
                budget -= per;
            }
        }
        for (size_t gi = 0; gi < running_.size() && budget > 0; ++gi) {
            const Group& g = running_[gi];
            if (!g.prefilling()) continue;
            const uint32_t chunk = std::min(g.prompt - g.prefilled, budget);
            work.push_back({gi, 0, chunk, false});
            budget -= chunk;
        }
        for (const Work& w : work) {
            ids.push_back(running_[w.group].seqs[w.seq].id);
            counts.push_back(w.count);
        }
        // Cached pages no sequence holds are evicted when needed: they count as free.
        const BlockCounts pc = pool_.stats();
        if (mgr_.pages_needed(ids, counts) <= pc.free_blocks + pc.cached_blocks) break;
        preempt_youngest();
        preempted = true;
    }

    // Admission: new requests while the budget, max_running and can_allocate allow (none in a
    // step that had to preempt).
    size_t in_flight = 0;
    for (const Group& g : running_)  // a request still prefilling counts its samples to come
        in_flight += g.prefilling() ? g.req.outputs.size() : g.seqs.size();
    while (!preempted && swapped_.empty() && budget > 0 && !waiting_.empty() &&
           in_flight + waiting_.front().req.outputs.size() <= opt_.max_running) {
        const Waiting& w = waiting_.front();
        const uint32_t prompt = w.req.prompt + w.resume;
        // The prompt's ids (with what it generated before a preemption): with prefix caching
        // the sequence starts holding the cached pages of its longest cached prefix.
        std::vector<int32_t> prompt_ids = w.req.prompt_ids;
        if (w.resume)
            prompt_ids.insert(prompt_ids.end(), w.req.output_ids[0].begin(),
                              w.req.output_ids[0].begin() + w.resume);
        const SeqId id = mgr_.add_sequence(prompt_ids);
        const uint32_t hit = uint32_t(mgr_.length(id));
        const uint32_t chunk = std::min(prompt - hit, budget);
        ids.push_back(id);
        counts.push_back(chunk);
        if (!mgr_.can_allocate(ids, counts)) {
            ids.pop_back();
            counts.pop_back();
            mgr_.free(id);
            break;
        }
        ++stats_.admissions;
        stats_.prompt_tokens += prompt;
        stats_.hit_tokens += hit;
        if (hit) ++stats_.hit_admissions;
        if (oracle_) stats_.oracle_hit_tokens += oracle_->hit(prompt_ids);
        Group g;
        g.req = w.req;
        g.prompt = prompt;
        g.prefilled = hit;
        g.resume = w.resume;
        g.seqs.push_back({id, 0, w.resume, {}, {}, 0, 0});
        append(g.seqs.back(), std::span(prompt_ids).first(hit));
        if (ref_) {
            ref_->add(id);
            if (hit) {
                // What this sequence would have computed for the cached positions: the pages
                // it shares must hold exactly that.
                const std::vector<uint64_t> one{id};
                const std::vector<uint32_t> n{hit};
                ref_->begin_step(one, n);
                for (uint32_t l = 0; l < cfg_.num_layers; ++l) {
                    std::vector<float> k, v;
                    kv_of(g.seqs.back(), 0, hit, l, k, v);
                    ref_->write(one, n, l, stored(k, cfg_.head_dim), stored(v, cfg_.v_head_dim));
                }
                ++stats_.shared_page_checks;
                check_kv(id, "admitted, sharing cached pages");
            }
        }
        running_.push_back(std::move(g));
        work.push_back({running_.size() - 1, 0, chunk, false});
        in_flight += w.req.outputs.size();
        budget -= chunk;
        waiting_.pop_front();
    }
    if (ids.empty()) {
        // Nothing fits even with every running request preempted: the trace cannot go on.
        if (running_.empty() && swapped_.empty())
            throw std::runtime_error(fmt::format("request {} cannot be admitted into an empty pool",
                                                 waiting_.front().req.id));
        ++stats_.steps;
        return true;
    }

    // Each work item's token ids: prompt chunks, decodes, and for speculative decodes the
    // drafts, those past the accepted ones (drawn now) rejected: ids no real token has.
    std::uniform_int_distribution<uint32_t> accepted(0, opt_.draft_tokens);
    std::vector<uint32_t> keeps(work.size(), 0), firsts(work.size(), 0);
    std::vector<std::vector<int32_t>> step_ids(work.size());
    for (size_t i = 0; i < work.size(); ++i) {
        const Work& w = work[i];
        const Group& g = running_[w.group];
        Seq& s = running_[w.group].seqs[w.seq];
        const size_t first = s.ids.size();
        firsts[i] = uint32_t(first);
        uint32_t keep = w.count;
        if (!g.prefilling()) {
            keep = 1;
            if (w.speculative) keep += accepted(rng_);
            keep = std::min(keep, g.req.outputs[s.sample] - s.generated);
        }
        keeps[i] = keep;
        for (uint32_t j = 0; j < w.count; ++j)
            step_ids[i].push_back(j < keep ? token_at(g.req, s.sample, first + j)
                                           : kVocab + int32_t(j));
        append(s, step_ids[i]);
    }
    const std::vector<std::span<const int32_t>> id_spans(step_ids.begin(), step_ids.end());

    // Speculative decodes reserve their draft slots through allocate's lookahead; the step
    // then writes 1 + k tokens into them.
    std::vector<SeqId> spec;
    for (const Work& w : work)
        if (w.speculative) spec.push_back(running_[w.group].seqs[w.seq].id);
    if (!spec.empty()) {
        const std::vector<uint32_t> ones(spec.size(), 1);
        mgr_.allocate(spec, ones, opt_.draft_tokens);
    }
    Step st = mgr_.begin_step(ids, id_spans);
    const uint32_t T = st.total_tokens();
    const uint32_t H = cfg_.num_kv_heads, D = cfg_.head_dim, DV = cfg_.v_head_dim;
    std::vector<Tensor> outs;
    if (ref_) {
        ref_->begin_step(std::vector<uint64_t>(ids.begin(), ids.end()), counts);
        host_q_.assign(cfg_.num_layers, {});
    }
    std::uniform_real_distribution<float> vals(-2.0f, 2.0f);
    auto random = [&](size_t n) {
        std::vector<float> v(n);
        for (float& x : v)
            x = round_to(io_, vals(values_rng_));
        return v;
    };
    const std::vector<uint64_t> ids64(ids.begin(), ids.end());
    for (uint32_t l = 0; l < cfg_.num_layers && opt_.compute; ++l) {
        if (ref_) {
            // K/V of each token from its prefix's hash (as a model computes them).
            std::vector<float> k, v;
            k.reserve(size_t(T) * H * D);
            v.reserve(size_t(T) * H * DV);
            for (size_t i = 0; i < work.size(); ++i)
                kv_of(running_[work[i].group].seqs[work[i].seq], firsts[i], work[i].count, l, k, v);
            mgr_.write(st, l, Tensor::from_host(ctx_, k, {T, H, D}, io_),
                       Tensor::from_host(ctx_, v, {T, H, DV}, io_));
            ref_->write(ids64, counts, l, stored(k, D), stored(v, DV));
            host_q_[l] = random(size_t(T) * q_heads_ * D);
            outs.push_back(
                mgr_.attention(st, l, Tensor::from_host(ctx_, host_q_[l], {T, q_heads_, D}, io_)));
        } else {
            mgr_.write(st, l, input('k', T, H, D), input('v', T, H, DV));
            outs.push_back(mgr_.attention(st, l, input('q', T, q_heads_, D)));
        }
    }
    // Dry: no K/V computed here; the bookkeeping stands for a runtime whose own kernels write
    // through each layer's view, so the step's pages register in the prefix cache as theirs do.
    for (uint32_t l = 0; l < cfg_.num_layers && !opt_.compute; ++l)
        (void)st.view(l);
    const std::vector<int64_t> first = st.first_positions();
    mgr_.end_step(std::move(st));
    stats_.tokens_written += T;
    ++stats_.steps;
    // The step's pages are the most the pool holds until the next (rollbacks and ends only
    // give pages back; forks share them).
    uint64_t live = 0;
    for (const Group& g : running_)
        live += g.seqs.size();
    const BlockCounts pc = pool_.stats();
    stats_.peak_pages = std::max(stats_.peak_pages, pc.used_blocks);
    stats_.peak_pages_with_cached =
        std::max(stats_.peak_pages_with_cached, pc.used_blocks + pc.cached_blocks);
    stats_.evictions = mgr_.prefix_stats().evictions;
    // The oracle holds every full page written so far (as the library registers them, drafts
    // included).
    if (oracle_)
        for (const Work& w : work) {
            Seq& s = running_[w.group].seqs[w.seq];
            s.oracle_node = oracle_->add(s.ids, s.oracle_pages, s.oracle_node);
            s.oracle_pages = s.ids.size() / cfg_.block_size;
        }
    stats_.peak_sequences = std::max(stats_.peak_sequences, live);
    stats_.contiguous_pages_peak = std::max(stats_.contiguous_pages_peak,
                                            live * pages_for(stats_.max_length, cfg_.block_size));

    if (ref_) {
        const float scale = 1.0f / std::sqrt(float(D));
        // Against the reference's stored (for quantized pages: dequantized) K/V, in the dtype
        // the output comes in.
        const double tol = tolerance(io_);
        for (uint32_t l = 0; l < cfg_.num_layers; ++l) {
            const std::vector<float> got = outs[l].to_host();
            uint32_t t = 0;
            for (size_t i = 0; i < ids.size(); ++i) {
                const auto& rk = ref_->raw_keys(ids[i], l);
                const auto& rv = ref_->raw_values(ids[i], l);
                for (uint32_t j = 0; j < counts[i]; ++j, ++t) {
                    const int64_t n = first[i] + j + 1;
                    // A sliding layer (PoolConfig::layer_windows) attends to (n - 1 - w, n - 1].
                    const int64_t w = cfg_.layer_windows.empty() ? 0 : cfg_.layer_windows[l];
                    const auto want = test::causal_attention_row(
                        &host_q_[l][size_t(t) * q_heads_ * D], rk, rv, n, q_heads_, H, D, DV, scale,
                        w > 0 ? std::max<int64_t>(0, n - w) : 0);
                    bool bad = false;
                    for (size_t e = 0; e < want.size(); ++e) {
                        const double diff =
                            std::abs(double(got[size_t(t) * q_heads_ * DV + e]) - want[e]);
                        stats_.max_attention_error = std::max(stats_.max_attention_error, diff);
                        if (!(diff <= tol * std::max(1.0, std::abs(want[e])))) bad = true;
                    }
                    ++stats_.attention_rows_checked;
                    if (bad) {
                        ++stats_.attention_mismatches;
                        mismatch(
                            fmt::format("step {} layer {} sequence {} token {}: attention "
                                        "differs from the CPU's beyond {}",
                                        stats_.steps, l, ids[i], n - 1, tol));
                    }
                }
            }
        }
    }

    // After the step: prefills that completed fork their samples; decodes accept the drafts
    // drawn above and roll back the rest; finished samples and requests end.
    for (size_t i = 0; i < work.size(); ++i) {
        const Work& w = work[i];
        Group& g = running_[w.group];
        if (g.prefilling()) {
            g.prefilled += w.count;
            stats_.prefill_tokens += w.count;
            if (!g.prefilling())
                for (uint32_t k = 1; k < g.req.outputs.size(); ++k) {
                    const SeqId id = mgr_.fork(g.seqs[0].id);
                    if (ref_) ref_->fork(g.seqs[0].id, id);
                    Seq copy = g.seqs[0];
                    copy.id = id;
                    copy.sample = k;
                    copy.generated = 0;
                    g.seqs.push_back(std::move(copy));
                    ++stats_.forks;
                }
            continue;
        }
        Seq& s = g.seqs[w.seq];
        stats_.decode_tokens += w.count;
        const uint32_t keep = keeps[i];
        if (keep < w.count) {
            const int64_t drop = int64_t(w.count - keep);
            mgr_.truncate(s.id, -drop);
            if (ref_) ref_->truncate(s.id, -drop);
            truncate_seq(s, s.ids.size() - size_t(drop));
            ++stats_.rollbacks;
            stats_.drafts_rejected += uint64_t(drop);
        }
        s.generated += keep;
    }
    for (size_t gi = 0; gi < running_.size();) {
        Group& g = running_[gi];
        if (!g.prefilling())
            for (size_t si = 0; si < g.seqs.size();) {
                if (g.seqs[si].generated >= g.req.outputs[g.seqs[si].sample])
                    finish_seq(g, si);
                else
                    ++si;
            }
        if (!g.prefilling() && g.seqs.empty()) {
            ++stats_.finished;
            for (size_t f : followers_[g.req.id])  // the conversation's next turn
                arrive(f, clock_ + trace_[f].delay);
            running_.erase(running_.begin() + std::ptrdiff_t(gi));
        } else {
            ++gi;
        }
    }

    if (ref_ && !pool_.validate()) mismatch("pool invariants broken: " + pool_.check());
    return true;
}

uint64_t least_pages(const std::vector<Request>& trace, uint32_t block_size,
                     uint32_t draft_tokens) {
    uint64_t least = 1;
    for (const Request& r : trace) {
        const uint32_t longest = *std::max_element(r.outputs.begin(), r.outputs.end());
        least = std::max<uint64_t>(
            least,
            uint64_t(pages_for(r.prompt + longest + draft_tokens, block_size)) * r.outputs.size());
    }
    return least;
}

uint64_t working_set(Context& ctx, PoolConfig cfg, const std::vector<Request>& trace,
                     EngineOptions opt) {
    cfg.num_layers = 1;
    opt.check = false;
    opt.compute = false;
    opt.oracle = false;
    // Every request's pages unshared, to start with; doubled while the pool evicts.
    uint64_t pages = 64;
    for (const Request& r : trace) {
        uint64_t tokens = r.prompt + opt.draft_tokens;
        for (uint32_t n : r.outputs)
            tokens += n;
        pages += pages_for(tokens, cfg.block_size);
    }
    for (;;) {
        cfg.num_blocks = pages;
        BlockPool pool(ctx, cfg);
        ManagerOptions mopt;
        mopt.prefix_caching = true;
        Engine e(ctx, pool, trace, opt, mopt);
        const EngineStats& s = e.run();
        if (s.evictions == 0 && s.preemptions == 0) return s.peak_pages_with_cached;
        pages *= 2;
    }
}

uint64_t pool_for_share(uint64_t working_set, double share, double watermark, uint64_t least) {
    const double pages = std::ceil(share * double(working_set) / (1.0 - watermark)) + 1;
    return std::max(least, uint64_t(pages));
}

void print_checks(const EngineStats& s, uint32_t layers, const char* scope, const char* held) {
    fmt::print(
        "{:<24} {} rows over {} layers checked against CPU attention{}; max abs error {:.1e}, {} "
        "beyond tolerance\n",
        "attention", s.attention_rows_checked, layers, scope, s.max_attention_error,
        s.attention_mismatches);
    if (s.kv_mismatches == 0)
        fmt::print(
            "{:<24} all K/V bit-exact ({} sequences gathered at their end or preemption, every "
            "layer{})\n",
            "K/V", s.kv_checks, held);
    else
        fmt::print("{:<24} {} of {} sequence checks differ from the reference\n", "K/V",
                   s.kv_mismatches, s.kv_checks);
    if (!s.first_mismatch.empty()) fmt::print("{:<24} {}\n", "first mismatch", s.first_mismatch);
}

}  // namespace pagedkv::serve
