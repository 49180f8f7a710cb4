#include "engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

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
    return out;
}

Engine::Engine(Context& ctx, BlockPool& pool, std::vector<Request> trace, EngineOptions opt,
               ManagerOptions mopt)
    : ctx_(ctx),
      pool_(pool),
      mgr_(pool, mopt),
      opt_(opt),
      cfg_(pool.config()),
      q_heads_(opt.q_heads ? opt.q_heads : 2 * pool.config().num_kv_heads),
      trace_(std::move(trace)),
      rng_(uint32_t(opt.seed)) {
    if (q_heads_ % cfg_.num_kv_heads != 0)
        throw std::invalid_argument("query heads must be a multiple of the kv heads");
    if (opt_.token_budget < 1 + opt_.draft_tokens)
        throw std::invalid_argument("the token budget must hold one speculative decode");
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
}

Engine::~Engine() = default;

bool Engine::done() const {
    return next_arrival_ == trace_.size() && waiting_.empty() && running_.empty();
}

const EngineStats& Engine::run(uint64_t max_steps) {
    while ((max_steps == 0 || stats_.steps < max_steps) && step()) {
    }
    return stats_;
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
            x = round_to(cfg_.dtype, d(rng_));
        it = cached_inputs_
                 .emplace(key, Tensor::from_host(ctx_, v, {tokens, heads, dim}, cfg_.dtype))
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

bool Engine::step() {
    if (done()) return false;
    if (running_.empty() && waiting_.empty()) clock_ = trace_[next_arrival_].arrival_step;
    while (next_arrival_ < trace_.size() && trace_[next_arrival_].arrival_step <= clock_) {
        waiting_.push_back({trace_[next_arrival_++], 0});
        ++stats_.requests;
    }
    ++clock_;
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
        if (mgr_.pages_needed(ids, counts) <= pool_.stats().free_blocks) break;
        preempt_youngest();
        preempted = true;
    }

    // Admission: new requests while the budget, max_running and can_allocate allow (none in a
    // step that had to preempt).
    size_t in_flight = 0;
    for (const Group& g : running_)  // a request still prefilling counts its samples to come
        in_flight += g.prefilling() ? g.req.outputs.size() : g.seqs.size();
    while (!preempted && budget > 0 && !waiting_.empty() &&
           in_flight + waiting_.front().req.outputs.size() <= opt_.max_running) {
        const Waiting& w = waiting_.front();
        const uint32_t prompt = w.req.prompt + w.resume;
        const uint32_t chunk = std::min(prompt, budget);
        const SeqId id = mgr_.add_sequence();
        ids.push_back(id);
        counts.push_back(chunk);
        if (!mgr_.can_allocate(ids, counts)) {
            ids.pop_back();
            counts.pop_back();
            mgr_.free(id);
            break;
        }
        Group g;
        g.req = w.req;
        g.prompt = prompt;
        g.resume = w.resume;
        g.seqs.push_back({id, 0, w.resume});
        if (ref_) ref_->add(id);
        running_.push_back(std::move(g));
        work.push_back({running_.size() - 1, 0, chunk, false});
        in_flight += w.req.outputs.size();
        budget -= chunk;
        waiting_.pop_front();
    }
    if (ids.empty()) {
        // Nothing fits even with every running request preempted: the trace cannot go on.
        if (running_.empty())
            throw std::runtime_error(fmt::format("request {} cannot be admitted into an empty pool",
                                                 waiting_.front().req.id));
        ++stats_.steps;
        return true;
    }

    // Speculative decodes reserve their draft slots through allocate's lookahead; the step
    // then writes 1 + k tokens into them.
    std::vector<SeqId> spec;
    for (const Work& w : work)
        if (w.speculative) spec.push_back(running_[w.group].seqs[w.seq].id);
    if (!spec.empty()) {
        const std::vector<uint32_t> ones(spec.size(), 1);
        mgr_.allocate(spec, ones, opt_.draft_tokens);
    }
    Step st = mgr_.begin_step(ids, counts);
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
            x = round_to(cfg_.dtype, vals(rng_));
        return v;
    };
    const std::vector<uint64_t> ids64(ids.begin(), ids.end());
    for (uint32_t l = 0; l < cfg_.num_layers; ++l) {
        if (ref_) {
            const auto k = random(size_t(T) * H * D), v = random(size_t(T) * H * DV);
            mgr_.write(st, l, Tensor::from_host(ctx_, k, {T, H, D}, cfg_.dtype),
                       Tensor::from_host(ctx_, v, {T, H, DV}, cfg_.dtype));
            ref_->write(ids64, counts, l, k, v);
            host_q_[l] = random(size_t(T) * q_heads_ * D);
            outs.push_back(mgr_.attention(
                st, l, Tensor::from_host(ctx_, host_q_[l], {T, q_heads_, D}, cfg_.dtype)));
        } else {
            mgr_.write(st, l, input('k', T, H, D), input('v', T, H, DV));
            outs.push_back(mgr_.attention(st, l, input('q', T, q_heads_, D)));
        }
    }
    const std::vector<int64_t> first = st.first_positions();
    mgr_.end_step(std::move(st));
    stats_.tokens_written += T;
    ++stats_.steps;
    // The step's pages are the most the pool holds until the next (rollbacks and ends only
    // give pages back; forks share them).
    uint64_t live = 0;
    for (const Group& g : running_)
        live += g.seqs.size();
    stats_.peak_pages = std::max(stats_.peak_pages, pool_.stats().used_blocks);
    stats_.peak_sequences = std::max(stats_.peak_sequences, live);
    stats_.contiguous_pages_peak = std::max(stats_.contiguous_pages_peak,
                                            live * pages_for(stats_.max_length, cfg_.block_size));

    if (ref_) {
        const float scale = 1.0f / std::sqrt(float(D));
        const double tol = tolerance(cfg_.dtype);
        for (uint32_t l = 0; l < cfg_.num_layers; ++l) {
            const std::vector<float> got = outs[l].to_host();
            uint32_t t = 0;
            for (size_t i = 0; i < ids.size(); ++i) {
                const auto& rk = ref_->raw_keys(ids[i], l);
                const auto& rv = ref_->raw_values(ids[i], l);
                for (uint32_t j = 0; j < counts[i]; ++j, ++t) {
                    const int64_t n = first[i] + j + 1;
                    const auto want =
                        test::causal_attention_row(&host_q_[l][size_t(t) * q_heads_ * D], rk, rv, n,
                                                   q_heads_, H, D, DV, scale);
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

    // After the step: prefills that completed fork their samples; decodes accept a random
    // number of drafts and roll back the rest; finished samples and requests end.
    for (const Work& w : work) {
        Group& g = running_[w.group];
        Seq& s = g.seqs[w.seq];
        if (g.prefilling()) {
            g.prefilled += w.count;
            stats_.prefill_tokens += w.count;
            if (!g.prefilling())
                for (uint32_t k = 1; k < g.req.outputs.size(); ++k) {
                    const SeqId id = mgr_.fork(g.seqs[0].id);
                    if (ref_) ref_->fork(g.seqs[0].id, id);
                    g.seqs.push_back({id, k, 0});
                    ++stats_.forks;
                }
            continue;
        }
        stats_.decode_tokens += w.count;
        const uint32_t left = g.req.outputs[s.sample] - s.generated;
        uint32_t keep = 1;
        if (w.speculative)
            keep += std::uniform_int_distribution<uint32_t>(0, opt_.draft_tokens)(rng_);
        keep = std::min(keep, left);
        if (keep < w.count) {
            const int64_t drop = int64_t(w.count - keep);
            mgr_.truncate(s.id, -drop);
            if (ref_) ref_->truncate(s.id, -drop);
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
            running_.erase(running_.begin() + std::ptrdiff_t(gi));
        } else {
            ++gi;
        }
    }

    if (ref_ && !pool_.validate()) mismatch("pool invariants broken: " + pool_.check());
    return true;
}

}  // namespace pagedkv::serve
