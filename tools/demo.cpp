// pagedkv-demo: a synthetic serving workload on the default device. Requests with different
// prompt lengths arrive, are prefilled, decode token by token, finish and free their pages,
// and new ones are admitted; every step is checked against the CPU reference cache. Ends with
// a table comparing the pages used with a contiguous max-length preallocation. At each new
// peak of pool usage it writes a snapshot (--snapshot FILE) for pagedkv-dump to show.
// `pagedkv-demo serve [options]` runs the second demo instead: a serving engine's loop over
// KVManager (tools/serve).
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "pagedkv/pagedkv.hpp"
#include "reference_attention.hpp"
#include "reference_cache.hpp"
#include "serve_demo.hpp"

using namespace pagedkv;

namespace {

struct Request {
    int id;
    uint32_t prompt, output;  // tokens
};

struct Active {
    Request req;
    uint32_t generated = 0;
    std::unique_ptr<DynamicKVCache> cache;
    std::unique_ptr<test::ReferenceCache> ref;
};

std::vector<float> random_tokens(std::mt19937& rng, size_t n, DType t) {
    std::uniform_real_distribution<float> d(-2.0f, 2.0f);
    std::vector<float> v(n);
    for (float& x : v)
        x = round_to(t, d(rng));
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    int num_requests = 24;
    uint32_t max_batch = 8;
    std::string snapshot_arg = "pagedkv-demo.snap";
    CLI::App app{
        "pagedkv-demo: a synthetic serving workload checked against the CPU reference at every "
        "step (requests admitted, prefilled, decoded, preempted when the pool runs dry); a "
        "table of pages used against a contiguous cache at the end.",
        "pagedkv-demo"};
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.add_option("--requests", num_requests, "requests in the workload")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1, 100000));
    app.add_option("--max-batch", max_batch, "sequences decoding at once at most")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1u, 4096u));
    app.add_option("--snapshot", snapshot_arg,
                   "where the snapshot of the fullest pool is written for pagedkv-dump (-: "
                   "stdout, the demo's text then on stderr)")
        ->type_name("FILE")
        ->capture_default_str();
    // `pagedkv-demo serve ...`: everything after `serve` is the serve demo's own command line.
    CLI::App* serve_cmd = app.add_subcommand(
        "serve", "the serving engine loop over KVManager instead (pagedkv-demo serve --help)");
    serve_cmd->prefix_command();
    serve_cmd->set_help_flag();
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "pagedkv-demo: {}\nRun with --help for more information.\n", e.what());
        return 2;
    }
    if (*serve_cmd) {
        std::vector<std::string> rest = serve_cmd->remaining();
        std::vector<char*> args{argv[0]};
        for (std::string& a : rest)
            args.push_back(a.data());
        return serve::serve_main(int(args.size()), args.data());
    }
    // With the snapshot on stdout, it is written to a temporary file at each peak and copied
    // to stdout at the end; the text goes to stderr.
    const bool snapshot_to_stdout = snapshot_arg == "-";
    std::FILE* out = snapshot_to_stdout ? stderr : stdout;
    const std::string snapshot_path =
        snapshot_to_stdout
            ? (std::filesystem::temp_directory_path() /
               fmt::format("pagedkv-demo-{}.snap",
                           std::chrono::steady_clock::now().time_since_epoch().count()))
                  .string()
            : snapshot_arg;
    try {
        const auto t0 = std::chrono::steady_clock::now();
        auto elapsed = [&] {
            return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        };
        fmt::print(out, "opening the device\n");
        std::fflush(out);
        Context ctx = Context::create();
        PoolConfig cfg;
        cfg.num_layers = 4;
        cfg.num_kv_heads = 4;
        cfg.head_dim = 64;
        cfg.block_size = 16;
        cfg.dtype = DType::F16;
        cfg.num_blocks = 56;
        BlockPool pool(ctx, cfg);
        const uint32_t H = cfg.num_kv_heads, D = cfg.head_dim;

        std::mt19937 rng(2024);
        std::deque<Request> waiting;
        uint32_t max_len = 0;
        for (int i = 0; i < num_requests; ++i) {
            Request r{i, 8 + uint32_t(rng() % 180), 4 + uint32_t(rng() % 60)};
            max_len = std::max(max_len, r.prompt + r.output);
            waiting.push_back(r);
        }
        fmt::print(out,
                   "pagedkv demo on {}: {} requests, pool of {} pages x {} tokens ({:.1f} MiB)\n",
                   ctx.device_name(), num_requests, cfg.num_blocks, cfg.block_size,
                   double(pool.stats().total_bytes) / (1 << 20));

        std::vector<Active> active;
        uint64_t tokens_written = 0, steps = 0, checks = 0, preempted = 0, finished = 0;
        double paged_slots = 0, contiguous_slots = 0, live_tokens = 0;  // summed over steps
        uint64_t peak_pages = 0, snapshot_step = 0;
        std::string snapshot_error;

        // Decode attention over layer 0 read straight from the pages (cached_attention), with
        // two query heads per kv head, against attention on the CPU over the reference.
        const uint32_t q_heads = 2 * H;
        uint64_t attention_checks = 0;
        double attention_error = 0;  // largest |difference| seen
        auto check_attention = [&](Active& a) {
            auto q = random_tokens(rng, size_t(q_heads) * D, cfg.dtype);
            Tensor tq = Tensor::from_host(ctx, q, {1, q_heads, 1, D}, cfg.dtype);
            const auto got = a.cache->cached_attention(tq, 0).to_host();
            const auto want =
                test::reference_attention(q, a.ref->keys(0), a.ref->values(0), a.ref->lengths(0),
                                          q_heads, H, D, D, 1.0f / std::sqrt(float(D)));
            for (size_t i = 0; i < got.size(); ++i) {
                const double diff = std::abs(double(got[i]) - want[i]);
                attention_error = std::max(attention_error, diff);
                if (diff > 4e-3 * std::max(1.0, std::abs(want[i])))
                    throw std::runtime_error(fmt::format(
                        "request {}: cached_attention gives {} where the reference gives {}",
                        a.req.id, got[i], want[i]));
            }
            ++attention_checks;
        };

        // One update of one layer of one sequence, checked against its reference.
        auto step_layer = [&](Active& a, uint32_t seq, uint32_t layer, const std::vector<float>& k,
                              const std::vector<float>& v) {
            std::vector<int64_t> shape{1, H, seq, D};
            Tensor tk = Tensor::from_host(ctx, k, shape, cfg.dtype);
            Tensor tv = Tensor::from_host(ctx, v, shape, cfg.dtype);
            auto lens = a.ref->lengths(layer);
            std::vector<std::vector<int64_t>> pos(1);
            for (uint32_t s = 0; s < seq; ++s)
                pos[0].push_back((lens.empty() ? 0 : lens[0]) + s);
            auto [ok, ov] = a.cache->update(tk, tv, layer);
            a.ref->update(k, v, 1, seq, layer, pos);
            if (ok.to_host() != a.ref->keys(layer) || ov.to_host() != a.ref->values(layer))
                throw std::runtime_error(
                    fmt::format("request {} layer {}: K/V differ from the "
                                "reference",
                                a.req.id, layer));
            ++checks;
        };

        while (!waiting.empty() || !active.empty()) {
            // Admit while a batch slot is free and the pool has room for the prompt.
            while (!waiting.empty() && active.size() < max_batch) {
                const Request r = waiting.front();
                const uint64_t need = (r.prompt + cfg.block_size) / cfg.block_size;
                if (pool.stats().free_blocks < need + active.size() / 2) break;
                waiting.pop_front();
                Active a{r, 0, std::make_unique<DynamicKVCache>(pool),
                         std::make_unique<test::ReferenceCache>(cfg.num_layers, H, D, D)};
                for (uint32_t l = 0; l < cfg.num_layers; ++l) {
                    auto k = random_tokens(rng, size_t(H) * r.prompt * D, cfg.dtype);
                    auto v = random_tokens(rng, size_t(H) * r.prompt * D, cfg.dtype);
                    step_layer(a, r.prompt, l, k, v);
                }
                tokens_written += r.prompt;
                active.push_back(std::move(a));
            }
            // One decode step for every active sequence.
            for (size_t i = 0; i < active.size();) {
                Active& a = active[i];
                try {
                    for (uint32_t l = 0; l < cfg.num_layers; ++l) {
                        auto k = random_tokens(rng, size_t(H) * D, cfg.dtype);
                        auto v = random_tokens(rng, size_t(H) * D, cfg.dtype);
                        step_layer(a, 1, l, k, v);
                    }
                    check_attention(a);
                } catch (const Error& e) {
                    if (e.code() != ErrorCode::OutOfBlocks) throw;
                    // Out of pages is an ordinary outcome: preempt this request and retry later.
                    ++preempted;
                    fmt::print(out,
                               "step {:>3}: pool full, request {} preempted after {} of its {} "
                               "output tokens, to run again\n",
                               steps + 1, a.req.id, a.generated, a.req.output);
                    waiting.push_front(a.req);
                    active.erase(active.begin() + std::ptrdiff_t(i));
                    continue;
                }
                ++tokens_written;
                if (++a.generated == a.req.output) {
                    ++finished;
                    active.erase(active.begin() + std::ptrdiff_t(i));
                    continue;
                }
                ++i;
            }
            if (!pool.validate())
                throw std::runtime_error("pool invariants broken: " + pool.check());
            const PoolStats s = pool.stats();
            if (s.used_blocks > peak_pages && snapshot_error.empty()) {
                // The fullest pool so far, with every cache holding its pages still alive.
                std::vector<const PagedKVCache*> caches;
                for (const Active& a : active)
                    caches.push_back(a.cache.get());
                try {
                    save_snapshot(snapshot_path, pool, caches);
                    snapshot_step = steps;
                } catch (const Error& e) {
                    // An unwritable working directory costs the snapshot, not the demo.
                    if (e.code() != ErrorCode::InvalidArgument) throw;
                    snapshot_error = e.what();
                }
            }
            peak_pages = std::max(peak_pages, s.used_blocks);
            for (const Active& a : active)
                live_tokens += double(a.cache->get_seq_length());
            paged_slots += double(s.used_blocks) * cfg.block_size;
            contiguous_slots += double(active.size()) * max_len;
            if (++steps % 25 == 0 || (waiting.empty() && active.empty())) {
                fmt::print(out,
                           "step {:>3}: {} running, {} waiting, {} finished; {} of {} pages in "
                           "use; {:.1f} s\n",
                           steps, active.size(), waiting.size(), finished, s.used_blocks,
                           s.num_blocks, elapsed());
                std::fflush(out);
            }
        }
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const PoolStats s = pool.stats();
        const double page_bytes = double(s.block_bytes);
        const double paged_waste = 100.0 * (1.0 - live_tokens / paged_slots);
        const double contig_waste = 100.0 * (1.0 - live_tokens / contiguous_slots);

        fmt::print(out, "\n{:<34} {}\n", "device", ctx.device_name());
        fmt::print(out, "{:<34} {} finished, {} preempted and re-run\n", "sequences", finished,
                   preempted);
        fmt::print(out, "{:<34} {} written over {} steps, {} checks vs reference\n", "tokens",
                   tokens_written, steps, checks);
        fmt::print(out,
                   "{:<34} {} decode steps read layer 0 from the pages (cached_attention, {} "
                   "query heads over {}); largest difference from CPU attention {:.1e}\n",
                   "attention", attention_checks, q_heads, H, attention_error);
        fmt::print(out, "{:<34} peak {} of {} (pages of {} tokens)\n", "pages used", peak_pages,
                   s.num_blocks, cfg.block_size);
        fmt::print(out, "{:<34} peak {:.2f} MiB (page = {} bytes, all layers K+V)\n", "bytes",
                   double(peak_pages) * page_bytes / (1 << 20), s.block_bytes);
        fmt::print(out, "{:<34} paged {:.1f}%   contiguous max-length ({} tokens) {:.1f}%\n",
                   "waste (slots not holding a token)", paged_waste, max_len, contig_waste);
        if (snapshot_error.empty() && snapshot_to_stdout) {
            std::ifstream in(snapshot_path, std::ios::binary);
            const std::string bytes((std::istreambuf_iterator<char>(in)),
                                    std::istreambuf_iterator<char>());
            in.close();
            std::filesystem::remove(snapshot_path);
            std::fwrite(bytes.data(), 1, bytes.size(), stdout);
            if (std::fflush(stdout) != 0) throw std::runtime_error("cannot write to stdout");
            fmt::print(out, "{:<34} to stdout, {} bytes (step {}, peak usage)\n", "snapshot",
                       bytes.size(), snapshot_step);
        } else if (snapshot_error.empty())
            fmt::print(out, "{:<34} {} (step {}, peak usage; pagedkv-dump shows it)\n", "snapshot",
                       snapshot_path, snapshot_step);
        else
            fmt::print(out, "{:<34} not written: {}\n", "snapshot", snapshot_error);
        fmt::print(out, "{:<34} {:.2f} s\n", "elapsed", secs);
        ctx.synchronize();
        return pool.stats().used_blocks == 0 && pool.validate() ? 0 : 1;
    } catch (const std::exception& e) {
        fmt::print(stderr, "pagedkv-demo: {}\n", e.what());
        return 1;
    }
}
