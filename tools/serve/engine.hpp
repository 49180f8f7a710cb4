// A serving engine's loop over KVManager, on a synthetic trace: Poisson arrivals, log-normal
// prompt and output lengths, admission through can_allocate, chunked prefill under a token
// budget per step, preemption by recompute when the pool runs dry (the youngest running
// request is freed and requeued, as vLLM does), parallel sampling by fork, and speculative
// decoding (1 + k tokens written through allocate's lookahead, the rejected drafts rolled back
// with truncate). With checking on, every step's attention of every layer is compared with
// attention on the CPU, and every sequence's K/V, gathered from the pages when it ends or is
// preempted, bit for bit with the CPU reference (tests/reference/reference_sequences.hpp).
// `pagedkv-demo serve` runs it with checks; pagedkv-bench's serve row runs it without.
//
// Every token has an id, and its K/V are a function of its id and of every id before it (as in
// a real model): with prefix caching on (ManagerOptions::prefix_caching), a request starts from
// add_sequence(prompt), prefills only what the cache did not hold, and gives every step its
// token ids so that full pages are registered; a page shared from the cache then holds exactly
// the K/V this sequence would have computed, which the checks verify bit for bit. An oracle (an
// infinite prefix cache over the same schedule, plain CPU code here, not the library's) says
// what the best cache would have hit. make_shared_prefix_trace makes the workload it is for:
// conversations over one system prompt, each turn re-sending its history.
// Public API only.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <span>
#include <string>
#include <utility>
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
    // Token ids: the prompt's (prompt of them), and each sample's output (outputs[s] of them).
    // Request ids are their indices in the trace.
    std::vector<int32_t> prompt_ids;
    std::vector<std::vector<int32_t>> output_ids;
    // A request that arrives only once an earlier one (its index in the trace) has finished,
    // `delay` steps after (a conversation's next turn); arrival_step is then ignored.
    int64_t after = -1;
    uint64_t delay = 0;
};

// Token ids are below kVocab; ids from kVocab up are the rejected drafts of speculative steps.
inline constexpr int32_t kVocab = 32000;

// Poisson arrivals of independent requests with random token ids.
std::vector<Request> make_trace(const TraceOptions& t);

// Conversations sharing one system prompt: each turn's prompt is the system prompt, the whole
// conversation so far (the user's messages and the answers generated for them) and a new user
// message; the turn then generates its answer. A conversation's turns are sequential (each
// arrives `think` steps, exponential, after the previous one finished); conversations arrive as
// a Poisson process. Token ids from the seed.
struct SharedPrefixOptions {
    uint32_t system_prompt = 1024;  // tokens
    uint32_t conversations = 64;
    uint32_t min_turns = 3, max_turns = 5;
    double user_median = 48, user_sigma = 0.6;      // tokens of a user message
    double answer_median = 64, answer_sigma = 0.6;  // tokens of an answer
    uint32_t max_user = 160, max_answer = 160;
    double arrivals_per_step = 0.25;  // new conversations, Poisson rate
    double think_steps = 4;           // mean gap between a turn's end and the next turn
    uint64_t seed = 2024;
};
std::vector<Request> make_shared_prefix_trace(const SharedPrefixOptions& t);

// The oracle of prefix caching: an infinite-memory cache (a trie of full pages of token ids,
// exact, never evicting). Plain CPU code, independent of the library's index.
class OracleCache {
  public:
    explicit OracleCache(uint32_t block_size) : block_size_(block_size) {}
    // Tokens of the longest run of prompt's first full pages that the cache holds, leaving at
    // least one token of the prompt (the library's rule).
    uint64_t hit(std::span<const int32_t> prompt) const;
    // Adds the full pages of tokens from page `from` on; `node` is the cache's node of page
    // from - 1 (0: the root, from == 0). Returns the node of the last full page.
    uint32_t add(std::span<const int32_t> tokens, size_t from, uint32_t node);
    uint64_t pages() const { return nodes_.size(); }

  private:
    uint32_t block_size_;
    std::map<std::pair<uint32_t, std::vector<int32_t>>, uint32_t> nodes_;  // (parent, ids) -> id
};

struct EngineOptions {
    uint32_t token_budget = 64;    // new tokens per step, prefill chunks and decodes together
    uint32_t max_running = 16;     // sequences in flight
    double speculate_share = 0.3;  // decode steps of a request that verify k drafts
    uint32_t draft_tokens = 3;     // k
    uint32_t q_heads = 0;          // query heads (0: 2 x kv heads)
    bool check = true;             // CPU reference checks of K/V and attention
    // False: no K/V written and no attention (the manager's bookkeeping alone, steps begun and
    // ended): what a trace does to the pool and the prefix cache, at host speed. Needs check off.
    bool compute = true;
    bool oracle = false;  // evaluate the infinite-cache oracle at each admission
    uint64_t seed = 7;    // K/V/Q values, speculation and acceptance draws
    // Preempt by swapping to the pool's host tier (PoolConfig::num_host_blocks) when it has
    // room, else by recompute; a swapped request is swapped back in, before new admissions,
    // once the pool has room for it.
    bool swap = true;
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
    // Admissions (a preempted request admitted again counts again), the prompt tokens they
    // brought (what a run without prefix caching prefills), those found cached, and those the
    // oracle would have found (oracle on).
    uint64_t admissions = 0, prompt_tokens = 0, hit_tokens = 0, oracle_hit_tokens = 0;
    uint64_t hit_admissions = 0;          // admissions that started from cached pages
    uint64_t shared_page_checks = 0;      // checked: hit sequences gathered at admission
    uint64_t evictions = 0;               // cached pages evicted (the pool's count)
    uint64_t peak_pages_with_cached = 0;  // pages in use or cached, at most
    // Swap preemption: requests swapped out and back in, the pages copied each way, the wall
    // time of the swap calls with their copies (submitted and waited for), and of a host
    // memcpy of the same bytes.
    uint64_t swap_preemptions = 0, swap_resumes = 0, pages_swapped_out = 0, pages_swapped_in = 0;
    uint64_t swapped_bytes = 0;
    double swap_seconds = 0, memcpy_seconds = 0;
};

// The demo's lines about what was checked against the CPU reference (attention rows, K/V,
// the first mismatch); `scope` ends the attention line (what each row attended over) and
// `held` the K/V line (which tokens of every layer were compared).
void print_checks(const EngineStats& s, uint32_t layers, const char* scope, const char* held);

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
    // Unchecked runs: the steps' K/V writes and attention on or off from the next step (the
    // bench reaches the middle of a trace at host speed, then times computed steps).
    void set_compute(bool on) {
        if (!opt_.check) opt_.compute = on;
    }
    KVManager& manager() { return mgr_; }

  private:
    struct Seq {
        SeqId id = 0;
        uint32_t sample = 0;          // index into the request's outputs
        uint32_t generated = 0;       // tokens decoded so far
        std::vector<int32_t> ids;     // token ids written (rejected drafts until rolled back)
        std::vector<uint64_t> chain;  // checked: the hash of each token's prefix (its K/V seed)
        size_t oracle_pages = 0;      // full pages added to the oracle
        uint32_t oracle_node = 0;
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
    // Swap preemption: whether g fits the host tier's free pages, and swapping the group out
    // or in (the copies submitted and waited for, timed beside a memcpy of the same bytes).
    bool swap_out_group(Group& g);
    bool try_swap_in();
    void time_swap(const std::function<void()>& f);
    // The id of position p of a sample's tokens: the prompt's, then the sample's output.
    static int32_t token_at(const Request& r, uint32_t sample, size_t p);
    // Appends ids to s (their prefix hashes too when checking).
    void append(Seq& s, std::span<const int32_t> ids);
    void truncate_seq(Seq& s, size_t length);
    // Checked: token-major K and V of one layer for positions [from, from + n) of s.
    void kv_of(const Seq& s, size_t from, size_t n, uint32_t layer, std::vector<float>& k,
               std::vector<float>& v) const;
    void arrive(size_t index, uint64_t step);
    void check_kv(SeqId id, const char* when);
    void finish_seq(Group& g, size_t i);
    void mismatch(std::string what);
    // What the pool stores for rows of `dim` values (themselves, or quantized and back).
    std::vector<float> stored(const std::vector<float>& x, uint32_t dim) const;
    const Tensor& input(char kind, uint32_t tokens, uint32_t heads, uint32_t dim);

    Context& ctx_;
    BlockPool& pool_;
    KVManager mgr_;
    EngineOptions opt_;
    PoolConfig cfg_;
    // What the step's tensors hold: the pool's dtype, or the compute dtype of quantized pages.
    DType io_;
    uint32_t q_heads_;
    std::vector<Request> trace_;
    std::set<std::pair<uint64_t, size_t>> pending_;  // (arrival step, index): still to arrive
    std::vector<std::vector<size_t>> followers_;     // requests arriving after each one
    std::unique_ptr<OracleCache> oracle_;
    uint64_t clock_ = 0;  // the trace's time in steps (idle stretches skipped)
    std::deque<Waiting> waiting_;
    std::vector<Group> running_;                  // admission order
    std::deque<Group> swapped_;                   // preempted by swap, oldest first
    std::vector<uint8_t> scratch_a_, scratch_b_;  // memcpy beside each swap
    std::mt19937 rng_;                            // the schedule: speculation and acceptance draws
    std::mt19937 values_rng_;  // queries (and the unchecked runs' inputs): apart from rng_, so
                               // that a run's schedule does not depend on checks or compute
    std::unique_ptr<test::ReferenceSequences> ref_;
    std::map<uint64_t, Tensor> cached_inputs_;  // unchecked runs: by kind and tokens
    std::vector<std::vector<float>> host_q_;    // checked runs: each layer's queries
    EngineStats stats_;
};

// Shared-prefix runs (pagedkv-demo serve --shared-prefix, pagedkv-bench's prefix rows).

// The trace's working set: the most pages it holds at once, in use or cached, on a pool that
// never has to evict (a dry run: EngineOptions::compute off, one layer, the pool grown until
// nothing is evicted or preempted). cfg gives the page shape.
uint64_t working_set(Context& ctx, PoolConfig cfg, const std::vector<Request>& trace,
                     EngineOptions opt);

// Pages of a pool holding `share` of the working set, above the manager's watermark; at least
// `least` (what the trace's longest request needs alone).
uint64_t pool_for_share(uint64_t working_set, double share, double watermark, uint64_t least);

// Pages the trace's longest request needs alone (the smallest pool the engine accepts).
uint64_t least_pages(const std::vector<Request>& trace, uint32_t block_size, uint32_t draft_tokens);

}  // namespace pagedkv::serve
