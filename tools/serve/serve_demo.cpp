// pagedkv-demo serve: the serving engine loop (tools/serve/engine.hpp) over a synthetic trace,
// every step's attention checked against the CPU and every sequence's K/V bit for bit against
// the CPU reference; a summary at the end, and a non-zero exit on any mismatch.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <chrono>

#include "engine.hpp"
#include "serve_demo.hpp"

namespace pagedkv::serve {

int serve_main(int argc, char** argv) {
    TraceOptions trace;
    EngineOptions opt;
    uint64_t pages = 48;
    uint32_t layers = 4;
    trace.requests = 24;
    trace.max_prompt = 192;
    trace.max_output = 48;
    CLI::App app{
        "pagedkv-demo serve: a serving engine's loop over KVManager on a synthetic trace "
        "(Poisson arrivals, log-normal lengths; chunked prefill, preemption by recompute, "
        "parallel sampling by fork, speculative decoding with rollback), checked against the "
        "CPU reference at every step.",
        "pagedkv-demo serve"};
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.add_option("--requests", trace.requests, "requests in the trace")
        ->capture_default_str()
        ->check(CLI::Range(1u, 100000u));
    app.add_option("--seed", trace.seed, "seed of the trace")->capture_default_str();
    app.add_option("--arrival-rate", trace.arrivals_per_step, "Poisson arrivals per step")
        ->capture_default_str()
        ->check(CLI::Range(0.001, 1000.0));
    app.add_option("--parallel-share", trace.parallel_share,
                   "share of requests that ask for 2-3 samples (fork)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--max-prompt", trace.max_prompt, "longest prompt (tokens)")
        ->capture_default_str()
        ->check(CLI::Range(1u, 100000u));
    app.add_option("--max-output", trace.max_output, "longest output (tokens)")
        ->capture_default_str()
        ->check(CLI::Range(1u, 100000u));
    app.add_option("--token-budget", opt.token_budget, "new tokens per step")
        ->capture_default_str()
        ->check(CLI::Range(1u, 65536u));
    app.add_option("--max-running", opt.max_running, "sequences in flight at most")
        ->capture_default_str()
        ->check(CLI::Range(1u, 4096u));
    app.add_option("--speculate-share", opt.speculate_share,
                   "share of a request's decode steps that verify draft tokens")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--draft-tokens", opt.draft_tokens, "draft tokens per speculative step (k)")
        ->capture_default_str()
        ->check(CLI::Range(0u, 64u));
    app.add_option("--pages", pages, "pages in the pool")
        ->capture_default_str()
        ->check(CLI::Range(1u, 1000000u));
    app.add_option("--layers", layers, "layers")
        ->capture_default_str()
        ->check(CLI::Range(1u, 256u));
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "pagedkv-demo serve: {}\nRun with --help for more information.\n",
                   e.what());
        return 2;
    }
    try {
        const auto t0 = std::chrono::steady_clock::now();
        Context ctx = Context::create();
        PoolConfig cfg;
        cfg.num_layers = layers;
        cfg.num_kv_heads = 2;
        cfg.head_dim = 32;
        cfg.block_size = 16;
        cfg.dtype = DType::F16;
        cfg.num_blocks = pages;
        BlockPool pool(ctx, cfg);
        opt.check = true;
        opt.q_heads = 4;
        Engine engine(ctx, pool, make_trace(trace), opt);
        fmt::print(
            "pagedkv serve demo on {}: {} requests, pool of {} pages x {} tokens, {} layers of "
            "{} kv heads x {} ({}), {} query heads, token budget {} per step\n",
            ctx.device_name(), trace.requests, pages, cfg.block_size, layers, cfg.num_kv_heads,
            cfg.head_dim, to_string(cfg.dtype), opt.q_heads, opt.token_budget);
        const EngineStats& s = engine.run();
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
        fmt::print("{:<24} {} ({} tokens dropped and written again)\n", "preemptions",
                   s.preemptions, s.recomputed_tokens);
        fmt::print("{:<24} {} (parallel samples sharing their prompt's pages)\n", "forks", s.forks);
        fmt::print("{:<24} {} (truncate after speculative steps)\n", "rollbacks", s.rollbacks);
        fmt::print(
            "{:<24} peak {} of {}; contiguous max-length cache: {} ({} sequences x {} "
            "pages of {} tokens for {} tokens), {:.1f}x more\n",
            "pages used", s.peak_pages, pages, s.contiguous_pages_peak, s.peak_sequences, per_seq,
            cfg.block_size, s.max_length,
            s.peak_pages ? double(s.contiguous_pages_peak) / double(s.peak_pages) : 0.0);
        fmt::print(
            "{:<24} {} rows over {} layers checked against CPU attention; max abs "
            "error {:.1e}, {} beyond tolerance\n",
            "attention", s.attention_rows_checked, layers, s.max_attention_error,
            s.attention_mismatches);
        if (s.kv_mismatches == 0)
            fmt::print(
                "{:<24} all K/V bit-exact ({} sequences gathered at their end or "
                "preemption, every layer)\n",
                "K/V", s.kv_checks);
        else
            fmt::print("{:<24} {} of {} sequence checks differ from the reference\n", "K/V",
                       s.kv_mismatches, s.kv_checks);
        if (!s.first_mismatch.empty())
            fmt::print("{:<24} {}\n", "first mismatch", s.first_mismatch);
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
