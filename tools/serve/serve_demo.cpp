// pagedkv-demo serve: the serving engine loop (tools/serve/engine.hpp) over a synthetic trace,
// every step's attention checked against the CPU and every sequence's K/V bit for bit against
// the CPU reference; a summary at the end, and a non-zero exit on any mismatch.
//
// `pagedkv-demo serve --shared-prefix` runs conversations over one system prompt with prefix
// caching, at several pool sizes (shares of the trace's working set), each run checked the
// same way (a sequence that starts from cached pages is gathered at once and compared with
// what it would have computed), beside the oracle (an infinite cache on the same schedule).
// It fails when a pool that holds the working set prefills more than 2% above the oracle.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "engine.hpp"
#include "hybrid_demo.hpp"
#include "serve_demo.hpp"

namespace pagedkv::serve {

namespace {

// Runs the engine to the end of its trace, printing a progress line every `every` steps (and
// one at the end): what has happened so far, for runs that take a minute.
const EngineStats& run_with_progress(Engine& engine, const BlockPool& pool, const std::string& what,
                                     std::chrono::steady_clock::time_point t0,
                                     uint64_t every = 25) {
    auto line = [&] {
        const EngineStats& s = engine.stats();
        fmt::print(
            "{}step {:>4}: {} requests arrived, {} finished; {} tokens written; {} of {} "
            "pages in use; {:.1f} s\n",
            what, s.steps, s.requests, s.finished, s.tokens_written, pool.stats().used_blocks,
            pool.stats().num_blocks,
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        std::fflush(stdout);
    };
    while (engine.step())
        if (engine.stats().steps % every == 0) line();
    if (engine.stats().steps % every != 0) line();
    return engine.stats();
}

// Prefill tokens computed over those of the prompts (what no cache prefills), and the oracle's.
double prefill_ratio(const EngineStats& s) {
    return s.prompt_tokens ? double(s.prompt_tokens - s.hit_tokens) / double(s.prompt_tokens) : 0;
}
double oracle_prefill_ratio(const EngineStats& s) {
    return s.prompt_tokens ? double(s.prompt_tokens - s.oracle_hit_tokens) / double(s.prompt_tokens)
                           : 0;
}

int shared_prefix_main(const SharedPrefixOptions& sp, EngineOptions opt, uint32_t layers,
                       std::vector<double> shares, DType dtype) {
    const auto t0 = std::chrono::steady_clock::now();
    Context ctx = Context::create();
    const std::vector<Request> trace = make_shared_prefix_trace(sp);
    uint64_t prompt_sum = 0;
    for (const Request& r : trace)
        prompt_sum += r.prompt;
    opt.check = true;
    opt.oracle = true;
    opt.q_heads = 4;
    const PoolConfig base = demo_config(layers, 0, dtype);
    ManagerOptions mopt;
    mopt.prefix_caching = true;
    fmt::print("measuring the working set: the trace run dry on a pool that never evicts\n");
    std::fflush(stdout);
    const uint64_t ws = working_set(ctx, base, trace, opt);
    const uint64_t least = least_pages(trace, base.block_size, opt.draft_tokens);
    fmt::print(
        "pagedkv serve demo, shared prefix, on {}: {} conversations ({} turns, {} prompt tokens) "
        "over a system prompt of {} tokens; pages of {} tokens, {} layers of {} kv heads x {} "
        "({}), {} query heads, token budget {} per step; working set {} pages (the most held "
        "at once, in use or cached, by a pool that never evicts)\n",
        ctx.device_name(), sp.conversations, trace.size(), prompt_sum, sp.system_prompt,
        base.block_size, layers, base.num_kv_heads, base.head_dim, to_string(base.dtype),
        opt.q_heads, opt.token_budget, ws);
    std::fflush(stdout);
    // The table comes after the runs, each of which prints its progress as it goes.
    std::vector<std::string> table;
    bool ok = true;
    std::vector<std::string> notes;
    uint64_t smaller_evictions = 0, smaller_runs = 0;
    for (double share : shares) {
        const uint64_t pages = pool_for_share(ws, share, mopt.watermark, least);
        BlockPool pool(ctx, demo_config(layers, pages, dtype));
        Engine engine(ctx, pool, trace, opt, mopt);
        fmt::print("\nshare {:.0f}% of the working set: a pool of {} pages\n", share * 100, pages);
        const EngineStats& s =
            run_with_progress(engine, pool, fmt::format("share {:.0f}%, ", share * 100), t0, 100);
        ctx.synchronize();
        const bool drained = pool.stats().used_blocks == 0 &&
                             engine.manager().sequences().empty() && pool.validate();
        bool run_ok = s.kv_mismatches == 0 && s.attention_mismatches == 0 &&
                      s.first_mismatch.empty() && drained && s.finished == trace.size();
        if (!s.first_mismatch.empty())
            notes.push_back(fmt::format("share {}: first mismatch: {}", share, s.first_mismatch));
        if (!drained)
            notes.push_back(fmt::format("share {}: {} pages used, {} sequences left, pool {}",
                                        share, pool.stats().used_blocks,
                                        engine.manager().sequences().size(), pool.check()));
        // A pool that holds the working set must do as well as the infinite cache, within 2%
        // of its prefill.
        const uint64_t computed = s.prompt_tokens - s.hit_tokens;
        const uint64_t oracle = s.prompt_tokens - s.oracle_hit_tokens;
        if (pages >= ws && double(computed) > 1.02 * double(oracle)) {
            run_ok = false;
            notes.push_back(fmt::format(
                "share {}: the pool holds the working set, but {} prefill tokens were computed, "
                "more than 2% above the oracle's {}",
                share, computed, oracle));
        }
        if (s.shared_page_checks == 0) {
            run_ok = false;
            notes.push_back(fmt::format("share {}: no sequence started from cached pages", share));
        }
        ok = ok && run_ok;
        if (pages < ws) {
            ++smaller_runs;
            smaller_evictions += s.evictions;
        }
        table.push_back(fmt::format(
            "{:>5.0f}% {:>6} {:>8.1f}% {:>8.1f}% {:>9.1f}% {:>9} {:>9} {:>6} {:>7} {:>9} "
            "{:>9}  {}\n",
            share * 100, pages, 100 * prefill_ratio(s), 100 * oracle_prefill_ratio(s),
            s.oracle_hit_tokens ? 100.0 * double(s.hit_tokens) / double(s.oracle_hit_tokens) : 0.0,
            s.evictions, s.peak_pages_with_cached, s.preemptions, s.steps, s.kv_checks,
            s.attention_rows_checked, run_ok ? "ok" : "MISMATCH"));
        table.push_back(fmt::format(
            "{:>6} {:>6} shared-page checks {} (sequences gathered bit-exact when admitted "
            "onto cached pages), {} hit admissions of {}, max attention error {:.1e}\n",
            "", "", s.shared_page_checks, s.hit_admissions, s.admissions, s.max_attention_error));
    }
    fmt::print("\n{:>6} {:>6} {:>9} {:>9} {:>10} {:>9} {:>9} {:>6} {:>7} {:>9} {:>9}  {}\n",
               "share", "pages", "prefill", "oracle", "hits/orcl", "evicted", "peak", "preem",
               "steps", "KV chk", "attn rows", "result");
    for (const std::string& row : table)
        fmt::print("{}", row);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print(
        "\nshare: of the working set (the pool adds the manager's watermark); prefill: prompt "
        "tokens computed / prompt tokens (what no cache computes); oracle: the same for an "
        "infinite cache on the same schedule; hits/orcl: tokens found cached / the oracle's; "
        "peak: pages in use or cached; KV chk: sequences gathered and compared bit for bit "
        "(admitted onto cached pages, preempted, finished).\n");
    if (smaller_runs)
        fmt::print(
            "{:<24} {} pages evicted over the {} runs on pools smaller than the working "
            "set\n",
            "evictions", smaller_evictions, smaller_runs);
    for (const std::string& n : notes)
        fmt::print("{}\n", n);
    fmt::print("{:<24} {:.2f} s\n", "elapsed", secs);
    fmt::print("{:<24} {}\n", "result", ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}

}  // namespace

int serve_main(int argc, char** argv) {
    TraceOptions trace;
    EngineOptions opt;
    uint64_t pages = 48;
    int64_t host_pages = -1;  // -1: as many as the pool's
    uint32_t layers = 4;
    trace.requests = 24;
    trace.max_prompt = 192;
    trace.max_output = 48;
    bool prefix_caching = false, shared = false;
    DType dtype = DType::F16;
    SharedPrefixOptions sp;
    // A couple of minutes on lavapipe with every check (pagedkv-bench runs 1024 x 64 unchecked).
    sp.system_prompt = 256;
    sp.conversations = 8;
    std::vector<double> shares{1.0, 0.5, 0.25};
    CLI::App app{
        "pagedkv-demo serve: a serving engine's loop over KVManager on a synthetic trace "
        "(Poisson arrivals, log-normal lengths; chunked prefill, preemption by swap to the host "
        "tier or by recompute, "
        "parallel sampling by fork, speculative decoding with rollback), checked against the "
        "CPU reference at every step.",
        "pagedkv-demo serve"};
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    // An option with its default shown and its value within [lo, hi].
    auto ranged = [&](const std::string& name, auto& value, const std::string& what, auto lo,
                      auto hi) {
        return app.add_option(name, value, what)->capture_default_str()->check(CLI::Range(lo, hi));
    };
    ranged("--requests", trace.requests, "requests in the trace", 1u, 100000u);
    app.add_option("--seed", trace.seed, "seed of the trace")->capture_default_str();
    ranged("--arrival-rate", trace.arrivals_per_step, "Poisson arrivals per step", 0.001, 1000.0);
    ranged("--parallel-share", trace.parallel_share,
           "share of requests that ask for 2-3 samples (fork)", 0.0, 1.0);
    ranged("--max-prompt", trace.max_prompt, "longest prompt (tokens)", 1u, 100000u);
    ranged("--max-output", trace.max_output, "longest output (tokens)", 1u, 100000u);
    ranged("--token-budget", opt.token_budget, "new tokens per step", 1u, 65536u);
    ranged("--max-running", opt.max_running, "sequences in flight at most", 1u, 4096u);
    ranged("--speculate-share", opt.speculate_share,
           "share of a request's decode steps that verify draft tokens", 0.0, 1.0);
    ranged("--draft-tokens", opt.draft_tokens, "draft tokens per speculative step (k)", 0u, 64u);
    CLI::Option* pages_opt = ranged("--pages", pages, "pages in the pool", 1u, 1000000u);
    app.add_option("--host-pages", host_pages,
                   "pages of the host tier that preemption swaps requests to (-1: as many as "
                   "--pages; 0: no host tier, preemption by recompute only)")
        ->capture_default_str()
        ->check(CLI::Range(int64_t(-1), int64_t(1000000)));
    app.add_flag("--prefix-caching", prefix_caching,
                 "share cached pages between requests (a preempted request finds its own)");
    CLI::Option* shared_opt = app.add_flag(
        "--shared-prefix", shared,
        "run conversations sharing one system prompt instead (prefix caching on), at each pool "
        "size of --pool-shares, beside the oracle; --seed seeds it");
    ranged("--system-prompt", sp.system_prompt, "--shared-prefix: system prompt tokens", 0u,
           100000u);
    ranged("--conversations", sp.conversations, "--shared-prefix: conversations", 1u, 100000u);
    ranged("--min-turns", sp.min_turns, "--shared-prefix: turns of a conversation, least", 1u,
           1000u);
    ranged("--max-turns", sp.max_turns, "--shared-prefix: turns of a conversation, most", 1u,
           1000u);
    app.add_option("--pool-shares", shares,
                   "--shared-prefix: pool sizes to run, as shares of the working set")
        ->capture_default_str()
        ->delimiter(',')
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->check(CLI::Range(0.001, 100.0));
    pages_opt->excludes(shared_opt);
    bool hybrid = false;  // tools/serve/hybrid_demo.hpp
    uint32_t window = 32;
    app.add_flag("--hybrid", hybrid,
                 "a hybrid model's pool (layer_windows): every third layer full attention, the "
                 "others sliding over --window tokens; 6 layers unless --layers")
        ->excludes(shared_opt)
        ->excludes("--prefix-caching")
        ->excludes("--host-pages");
    ranged("--window", window, "--hybrid: tokens of the sliding layers' window", 1u, 100000u);
    ranged("--layers", layers, "layers (--shared-prefix: 2 unless given)", 1u, 256u);
    const std::map<std::string, DType> dtypes{{"f32", DType::F32},
                                              {"f16", DType::F16},
                                              {"bf16", DType::BF16},
                                              {"int8", DType::Int8},
                                              {"fp8e4m3", DType::FP8E4M3}};
    std::string dtype_name = "f16";
    app.add_option("--dtype", dtype_name,
                   "what the pages hold: f32, f16, bf16, or int8 / fp8e4m3 (quantized; the "
                   "step's tensors in f16)")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "f16", "bf16", "int8", "fp8e4m3"}));
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "pagedkv-demo serve: {}\nRun with --help for more information.\n",
                   e.what());
        return 2;
    }
    dtype = dtypes.at(dtype_name);
    try {
        if (hybrid)
            return hybrid_main(trace, opt, pages, app.count("--layers") ? layers : 6, window,
                               dtype);
        if (shared) {
            sp.seed = trace.seed;
            if (sp.max_turns < sp.min_turns) sp.max_turns = sp.min_turns;
            if (app.count("--layers") == 0) layers = 2;
            return shared_prefix_main(sp, opt, layers, shares, dtype);
        }
        const auto t0 = std::chrono::steady_clock::now();
        Context ctx = Context::create();
        PoolConfig cfg = demo_config(layers, pages, dtype);
        cfg.num_host_blocks = host_pages < 0 ? pages : uint64_t(host_pages);
        BlockPool pool(ctx, cfg);
        opt.check = true;
        opt.oracle = prefix_caching;
        opt.q_heads = 4;
        ManagerOptions mopt;
        mopt.prefix_caching = prefix_caching;
        Engine engine(ctx, pool, make_trace(trace), opt, mopt);
        fmt::print(
            "pagedkv serve demo on {}: {} requests, pool of {} pages x {} tokens ({} host pages), "
            "{} layers of {} kv heads x {} ({}), {} query heads, token budget {} per step\n",
            ctx.device_name(), trace.requests, pages, cfg.block_size, cfg.num_host_blocks, layers,
            cfg.num_kv_heads, cfg.head_dim, to_string(cfg.dtype), opt.q_heads, opt.token_budget);
        const EngineStats& s = run_with_progress(engine, pool, "", t0, 10);
        ctx.synchronize();
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const bool drained = pool.stats().used_blocks == 0 &&
                             engine.manager().sequences().empty() && pool.validate();
        const bool ok = s.kv_mismatches == 0 && s.attention_mismatches == 0 &&
                        s.first_mismatch.empty() && drained;
        const uint64_t per_seq = (s.max_length + cfg.block_size - 1) / cfg.block_size;
        fmt::print("\n{:<24} {}\n", "device", ctx.device_name());
        fmt::print("{:<24} {} of {} finished\n", "requests", s.finished, s.requests);
        fmt::print("{:<24} {}\n", "steps", s.steps);
        fmt::print("{:<24} {} written: {} prefill, {} decode ({} rejected drafts rolled back)\n",
                   "tokens", s.tokens_written, s.prefill_tokens, s.decode_tokens,
                   s.drafts_rejected);
        fmt::print(
            "{:<24} {}: {} by swap, {} by recompute ({} tokens dropped and written "
            "again)\n",
            "preemptions", s.preemptions, s.swap_preemptions, s.preemptions - s.swap_preemptions,
            s.recomputed_tokens);
        if (s.swap_preemptions)
            fmt::print(
                "{:<24} {} out, {} back in; {} pages out, {} in ({:.1f} MiB); {:.2f} GB/s "
                "= {:.3f}x a host memcpy of the same bytes ({:.2f} GB/s; wall time of "
                "the swap calls with their copies submitted and waited for)\n",
                "swaps", s.swap_preemptions, s.swap_resumes, s.pages_swapped_out,
                s.pages_swapped_in, double(s.swapped_bytes) / double(1 << 20),
                double(s.swapped_bytes) / s.swap_seconds / 1e9, s.memcpy_seconds / s.swap_seconds,
                double(s.swapped_bytes) / s.memcpy_seconds / 1e9);
        fmt::print("{:<24} {} (parallel samples sharing their prompt's pages)\n", "forks", s.forks);
        fmt::print("{:<24} {} (truncate after speculative steps)\n", "rollbacks", s.rollbacks);
        if (prefix_caching)
            fmt::print(
                "{:<24} {} of {} prompt tokens found cached ({} of {} admissions), the oracle "
                "{}; {} evictions; {} sequences gathered bit-exact when admitted\n",
                "prefix cache", s.hit_tokens, s.prompt_tokens, s.hit_admissions, s.admissions,
                s.oracle_hit_tokens, s.evictions, s.shared_page_checks);
        fmt::print(
            "{:<24} peak {} of {}; contiguous max-length cache: {} ({} sequences x {} "
            "pages of {} tokens for {} tokens), {:.1f}x more\n",
            "pages used", s.peak_pages, pages, s.contiguous_pages_peak, s.peak_sequences, per_seq,
            cfg.block_size, s.max_length,
            s.peak_pages ? double(s.contiguous_pages_peak) / double(s.peak_pages) : 0.0);
        print_checks(s, layers, "", "");
        if (!drained)
            fmt::print("{:<24} pages or sequences left after the trace: {} used, {} live\n",
                       "not drained", pool.stats().used_blocks,
                       engine.manager().sequences().size());
        fmt::print("{:<24} {:.2f} s\n", "elapsed", secs);
        fmt::print("{:<24} {}\n", "result", ok ? "ok" : "MISMATCH");
        return ok ? 0 : 1;
    } catch (const std::exception& e) {
        fmt::print(stderr, "pagedkv-demo serve: {}\n", e.what());
        return 1;
    }
}

}  // namespace pagedkv::serve
