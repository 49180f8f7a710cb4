#include "hybrid_demo.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>
#include <string>

namespace pagedkv::serve {

PoolConfig demo_config(uint32_t layers, uint64_t pages, DType dtype) {
    PoolConfig cfg;
    cfg.num_layers = layers;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 32;
    cfg.block_size = 16;
    cfg.dtype = dtype;
    cfg.num_blocks = pages;
    return cfg;
}

std::vector<uint32_t> hybrid_windows(uint32_t layers, uint32_t window) {
    std::vector<uint32_t> w(layers, window);
    for (uint32_t l = 2; l < layers; l += 3)
        w[l] = 0;
    return w;
}

int hybrid_main(const TraceOptions& trace, EngineOptions opt, uint64_t pages, uint32_t layers,
                uint32_t window, DType dtype) {
    const auto t0 = std::chrono::steady_clock::now();
    Context ctx = Context::create();
    PoolConfig cfg = demo_config(layers, pages, dtype);
    cfg.layer_windows = hybrid_windows(layers, window);
    const std::vector<uint32_t> windows = cfg.layer_windows;
    BlockPool pool(ctx, cfg);
    // Layers a hybrid page holds: its bytes over those of a page of every layer.
    uint64_t plain_page_bytes = 0;
    {
        PoolConfig plain = cfg;
        plain.layer_windows.clear();
        plain.num_blocks = 1;
        plain_page_bytes = BlockPool(ctx, plain).stats().block_bytes;
    }
    const uint64_t page_bytes = pool.stats().block_bytes;
    const uint32_t per_page = uint32_t(page_bytes * layers / plain_page_bytes);
    const auto full = std::find(windows.begin(), windows.end(), 0u);
    const int64_t full_layer = full == windows.end() ? -1 : int64_t(full - windows.begin());

    opt.check = true;
    opt.oracle = false;
    opt.swap = false;  // not implemented for hybrid pools: preemption by recompute
    opt.q_heads = 4;
    Engine engine(ctx, pool, make_trace(trace), opt, ManagerOptions{});
    std::string layout;
    for (size_t l = 0; l < windows.size(); ++l)
        layout += (l ? "," : "") + std::to_string(windows[l]);
    fmt::print(
        "pagedkv serve demo, hybrid layout, on {}: {} requests, pool of {} pages x {} tokens "
        "(each page holds {} layers), {} layers (windows {{{}}}: 0 full attention, else "
        "sliding) of {} kv heads x {} ({}), {} query heads, token budget {} per step; "
        "preemption by recompute, no prefix caching\n",
        ctx.device_name(), trace.requests, pages, cfg.block_size, per_page, layers, layout,
        cfg.num_kv_heads, cfg.head_dim, to_string(cfg.dtype), opt.q_heads, opt.token_budget);
    std::fflush(stdout);

    // After each step: the pages the manager holds (each of per_page layers) against one block
    // table for all layers: a full-attention layer's table is exactly that table (every token's
    // page, forks sharing theirs), so its distinct pages across the live sequences count it.
    KVManager& mgr = engine.manager();
    uint64_t peak_held = 0, peak_one = 0, sum_held = 0, sum_one = 0, most_one = 0;
    while (engine.step()) {
        const uint64_t held = mgr.pages_held();
        std::set<uint32_t> one_table;
        uint64_t unshared = 0;
        for (SeqId s : mgr.sequences()) {
            if (full_layer >= 0) {
                const auto t = mgr.block_table(s, uint32_t(full_layer));
                one_table.insert(t.begin(), t.end());
            } else {
                unshared += (uint64_t(mgr.length(s)) + cfg.block_size - 1) / cfg.block_size;
            }
        }
        const uint64_t one = full_layer >= 0 ? one_table.size() : unshared;
        sum_held += held;
        sum_one += one;
        most_one = std::max(most_one, one);
        if (held > peak_held) {
            peak_held = held;
            peak_one = one;
        }
    }
    ctx.synchronize();
    const EngineStats& s = engine.stats();
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool drained =
        pool.stats().used_blocks == 0 && mgr.sequences().empty() && pool.validate();
    const bool ok = s.kv_mismatches == 0 && s.attention_mismatches == 0 &&
                    s.first_mismatch.empty() && drained && s.finished == trace.requests;
    // Layer-pages: what the bytes are proportional to (a page of per_page layers against a
    // page of every layer).
    auto ratio = [&](uint64_t h, uint64_t o) {
        return o ? 100.0 * double(h * per_page) / double(o * layers) : 0.0;
    };
    fmt::print("\n{:<24} {}\n", "device", ctx.device_name());
    fmt::print("{:<24} {} of {} finished\n", "requests", s.finished, s.requests);
    fmt::print("{:<24} {}\n", "steps", s.steps);
    fmt::print("{:<24} {} written: {} prefill, {} decode ({} rejected drafts rolled back)\n",
               "tokens", s.tokens_written, s.prefill_tokens, s.decode_tokens, s.drafts_rejected);
    fmt::print("{:<24} {} by recompute ({} tokens dropped and written again)\n", "preemptions",
               s.preemptions, s.recomputed_tokens);
    fmt::print("{:<24} {} (parallel samples sharing their prompt's pages)\n", "forks", s.forks);
    fmt::print("{:<24} {} (truncate after speculative steps)\n", "rollbacks", s.rollbacks);
    fmt::print(
        "{:<24} {:.1f}% of the bytes one block table for all layers would hold, over all steps "
        "(pages held x {} layers against one table's pages x {}; one table's pages: {})\n",
        "pages held", ratio(sum_held, sum_one), per_page, layers,
        full_layer >= 0 ? fmt::format("the distinct pages of full layer {}'s tables", full_layer)
                        : std::string("no full layer: each sequence's tokens, unshared"));
    fmt::print(
        "{:<24} most held: {} pages of {} layers ({:.1f} KiB; pool of {}), one table {} pages of "
        "{} layers ({:.1f} KiB); at the step holding the most: {:.1f}%\n",
        "", peak_held, per_page, double(peak_held * page_bytes) / 1024, pages, most_one, layers,
        double(most_one * plain_page_bytes) / 1024, ratio(peak_held, peak_one));
    print_checks(s, layers, " over each layer's window", ": the tokens it holds");
    if (!drained)
        fmt::print("{:<24} pages or sequences left after the trace: {} used, {} live\n",
                   "not drained", pool.stats().used_blocks, mgr.sequences().size());
    fmt::print("{:<24} {:.2f} s\n", "elapsed", secs);
    fmt::print("{:<24} {}\n", "result", ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}

}  // namespace pagedkv::serve
