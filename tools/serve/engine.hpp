// A serving engine's loop over KVManager, on a synthetic trace: Poisson arrivals, log-normal
// prompt and output lengths, admission through can_allocate, chunked prefill under a token
// budget per step, preemption by recompute when the pool runs dry (the youngest running
// request is freed and requeued, as vLLM does), parallel sampling by fork, and speculative
// decoding (1 + k tokens written through allocate's lookahead, the rejected drafts rolled back
// with truncate). With checking on, every step's attention of every layer is compared with
// attention on the CPU, and every sequence's K/V, gathered from the pages when it ends or is
// preempted, bit for bit with the CPU reference (tests/reference/reference_sequences.hpp).
// `pagedkv-demo serve` runs it with checks; pagedkv-bench's serve row runs it without.
// Public API only.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "pagedkv/pagedkv.hpp"

namespace pagedkv::test {
class ReferenceSequences;
}

namespace pagedkv::serve {

struct TraceOptions {
    uint32_t requests = 32;
    double arrivals_per_step = 0.6;  // Poisson rate
    double prompt_median = 56, prompt_sigma = 0.8;
    double output_median = 20, output_sigma = 0.6;
    uint32_t max_prompt = 320, max_output = 64;
    double parallel_share = 0.25;  // requests that ask for 2-3 samples
    uint64_t seed = 2024;
};

struct Request {
    uint32_t id = 0;
    uint64_t arrival_step = 0;
    uint32_t prompt = 0;
    std::vector<uint32_t> outputs;  // tokens to generate, one entry per sample
};

std::vector<Request> make_trace(const TraceOptions& t);

struct EngineOptions {
    uint32_t token_budget = 64;    // new tokens per step, prefill chunks and decodes together
    uint32_t max_running = 16;     // sequences in flight
    double speculate_share = 0.3;  // decode steps of a request that verify k drafts
    uint32_t draft_tokens = 3;     // k
    uint32_t q_heads = 0;          // query heads (0: 2 x kv heads)
    bool check = true;             // CPU reference checks of K/V and attention
    uint64_t seed = 7;             // K/V/Q values, speculation and acceptance draws
};

struct EngineStats {
    uint64_t requests = 0, finished = 0, steps = 0;
    uint64_t tokens_written = 0;  // rows of K/V written (prefill, recompute, decode, drafts)
    uint64_t prefill_tokens = 0, decode_tokens = 0, drafts_rejected = 0;
    uint64_t preemptions = 0, recomputed_tokens = 0, forks = 0, rollbacks = 0;
    uint64_t peak_pages = 0;             // pool pages in use, at most
    uint64_t peak_sequences = 0;         // sequences holding tokens at once, at most
    uint64_t contiguous_pages_peak = 0;  // max over steps of sequences x max-length pages
    uint32_t max_length = 0;             // longest sequence a contiguous cache must hold
    uint64_t kv_checks = 0, attention_rows_checked = 0;
    double max_attention_error = 0;
    uint64_t kv_mismatches = 0, attention_mismatches = 0;
    std::string first_mismatch;
};

class Engine {
  public:
    Engine(Context& ctx, BlockPool& pool, std::vector<Request> trace, EngineOptions opt,
           ManagerOptions mopt = {});
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // One step: arrivals, scheduling (preempting when needed), the step's writes and
    // attention for every layer, then rollbacks, forks and frees. False when the trace is
    // done (nothing ran).
    bool step();
    bool done() const;
    // Steps until done (or max_steps, 0: no limit); returns the stats.
    const EngineStats& run(uint64_t max_steps = 0);
    const EngineStats& stats() const { return stats_; }
    KVManager& manager() { return mgr_; }

  private:
    struct Seq {
        SeqId id = 0;
        uint32_t sample = 0;     // index into the request's outputs
        uint32_t generated = 0;  // tokens decoded so far
    };
    struct Group {  // a request in flight
        Request req;
        bool speculate = false;  // this step verifies drafts
        uint32_t prefilled = 0;  // prompt tokens written
        uint32_t prompt = 0;     // tokens to prefill (prompt + recomputed output)
        uint32_t resume = 0;     // tokens already generated before a preemption (n = 1)
        std::vector<Seq> seqs;
        bool prefilling() const { return prefilled < prompt; }
    };
    struct Waiting {
        Request req;
        uint32_t resume = 0;
    };

    void preempt_youngest();
    void check_kv(SeqId id, const char* when);
    void finish_seq(Group& g, size_t i);
    void mismatch(std::string what);
    const Tensor& input(char kind, uint32_t tokens, uint32_t heads, uint32_t dim);

    Context& ctx_;
    BlockPool& pool_;
    KVManager mgr_;
    EngineOptions opt_;
    PoolConfig cfg_;
    uint32_t q_heads_;
    std::vector<Request> trace_;
    size_t next_arrival_ = 0;
    uint64_t clock_ = 0;  // the trace's time in steps (idle stretches skipped)
    std::deque<Waiting> waiting_;
    std::vector<Group> running_;  // admission order
    std::mt19937 rng_;
    std::unique_ptr<test::ReferenceSequences> ref_;
    std::map<uint64_t, Tensor> cached_inputs_;  // unchecked runs: by kind and tokens
    std::vector<std::vector<float>> host_q_;    // checked runs: each layer's queries
    EngineStats stats_;
};

}  // namespace pagedkv::serve
