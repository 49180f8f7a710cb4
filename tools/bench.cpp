// pagedkv-bench: every figure a ratio measured side by side in one run on one device (GPU
// timestamps, warm-up, median of many), printed as a table and written as JSON. Nothing here
// is asserted by a test: speed and memory targets live in this tool.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "allocator/block_allocator.hpp"
#include "bench/allocator_churn.hpp"
#include "bench/hybrid.hpp"
#include "bench/swap_bench.hpp"
#include "bench/transfer.hpp"
#include "cache/manager/access.hpp"
#include "cache/manager/attention.hpp"
#include "cache/manager/pool_state.hpp"
#include "engine.hpp"
#include "json_text.hpp"
#include "pagedkv/pagedkv.hpp"
#include "shaders/kernels/page_copy.hpp"
#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/buffer.hpp"
#include "shaders/vulkan/device.hpp"
#include "shaders/vulkan/gpu_timer.hpp"
#include "svg_writer.hpp"

using namespace pagedkv;

namespace {

// Records a flat vkCmdCopyBuffer of `bytes` (the device's own copy speed) in `pieces` equal
// copies, between two buffers of its own: the baseline of the bandwidth figures.
struct FlatCopy {
    FlatCopy(detail::Device& d, uint64_t n, int p)
        : dev(d),
          bytes(n),
          pieces(p),
          src(detail::Buffer::create(d, n, detail::MemoryKind::DeviceLocal)),
          dst(detail::Buffer::create(d, n, detail::MemoryKind::DeviceLocal)) {}
    void operator()() const {
        const uint64_t each = bytes / uint64_t(pieces);
        VkCommandBuffer cmd = dev.batches().record({src.get()}, {dst.get()});
        for (int p = 0; p < pieces; ++p) {
            VkBufferCopy r{uint64_t(p) * each, uint64_t(p) * each, each};
            vkCmdCopyBuffer(cmd, src->handle(), dst->handle(), 1, &r);
        }
    }
    detail::Device& dev;
    uint64_t bytes;
    int pieces;
    std::shared_ptr<detail::Buffer> src, dst;
};

double time_flat_copy(detail::Device& dev, detail::GpuTimer& timer, uint64_t bytes,
                      int pieces = 1) {
    const FlatCopy copy(dev, bytes, pieces);
    return timer.median(copy);
}

Tensor random_tensor(Context& ctx, std::mt19937& rng, std::vector<int64_t> shape, DType t) {
    int64_t n = 1;
    for (int64_t d : shape)
        n *= d;
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v)
        x = dist(rng);
    return Tensor::from_host(ctx, v, std::move(shape), t);
}

struct Row {
    std::string name, value, note;
};

struct Report {
    std::vector<Row> rows;
    std::map<std::string, double> json;
    void add(const std::string& key, const std::string& name, double v, const std::string& fmt_v,
             const std::string& note = "") {
        rows.push_back({name, fmt_v, note});
        json[key] = v;
    }
};

// Progress on stderr while the bench runs (the table comes at the end, on stdout).
// Each section prints "[i/n] name" when it starts and "[i/n] name: 2.1 s" when it is done;
// these are the steps in between.
void progress(const std::string& what) {
    fmt::print(stderr, "        {}\n", what);
}

double median_of(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

// A ratio measured side by side: baseline and variant alternate (b v, v b, b v, ...) so that
// load drifting over the run hits both alike; each pair gives one ratio of the two medians.
// Device time from GPU timestamps around each run; host time is the CPU time of the calls
// that record the run (what the library costs the host, without the submit and the wait).
struct Paired {
    double ratio = 0, ratio_min = 0, ratio_max = 0;  // variant / baseline, device time
    double base_device = 0, var_device = 0;          // medians, seconds
    double base_host = 0, var_host = 0;

    std::string text() const {
        return fmt::format("{:.2f}x ({:.2f}-{:.2f})", ratio, ratio_min, ratio_max);
    }
};

Paired paired(detail::GpuTimer& timer, const std::function<void()>& baseline,
              const std::function<void()>& variant, int pairs = 5, int reps = 5) {
    std::vector<double> ratios, bd, vd, bh, vh;
    auto run = [&](const std::function<void()>& f, std::vector<double>& dev,
                   std::vector<double>& host) {
        std::vector<double> d, h;
        for (const auto& r : timer.runs(f, reps, 1)) {
            d.push_back(r.device_s);
            h.push_back(r.host_s);
        }
        dev.push_back(median_of(d));
        host.push_back(median_of(h));
        return dev.back();
    };
    for (int i = 0; i < pairs; ++i) {
        double b = 0, v = 0;
        if (i % 2 == 0) {
            b = run(baseline, bd, bh);
            v = run(variant, vd, vh);
        } else {
            v = run(variant, vd, vh);
            b = run(baseline, bd, bh);
        }
        ratios.push_back(v / b);
    }
    Paired p;
    p.ratio = median_of(ratios);
    p.ratio_min = *std::min_element(ratios.begin(), ratios.end());
    p.ratio_max = *std::max_element(ratios.begin(), ratios.end());
    p.base_device = median_of(bd);
    p.var_device = median_of(vd);
    p.base_host = median_of(bh);
    p.var_host = median_of(vh);
    return p;
}

// Adds a paired figure and its spread (key, key_min, key_max); `inverse` reports
// baseline / variant instead (a bandwidth against a copy: higher is better).
void add_paired(Report& rep, const std::string& key, const std::string& name, const Paired& p,
                bool inverse, const std::string& note) {
    const double v = inverse ? 1 / p.ratio : p.ratio;
    const double lo = inverse ? 1 / p.ratio_max : p.ratio_min;
    const double hi = inverse ? 1 / p.ratio_min : p.ratio_max;
    rep.rows.push_back(
        {name, fmt::format("{:.2f}x", v), fmt::format("{:.2f}-{:.2f}; {}", lo, hi, note)});
    rep.json[key] = v;
    rep.json[key + "_min"] = lo;
    rep.json[key + "_max"] = hi;
}

const char* path_name(BytePath p) {
    return p == BytePath::Shader ? "shader" : p == BytePath::CopyCommands ? "copy" : "auto";
}

// Runs f once with the shader path and once with copy commands, then restores the choice.
void for_each_path(Context& ctx, const std::function<void(const std::string&)>& f) {
    const auto chosen = detail::Access::device(ctx).byte_paths();
    for (BytePath p : {BytePath::Shader, BytePath::CopyCommands}) {
        detail::Access::device(ctx).set_byte_paths({p, p, chosen.whole_rows});
        f(path_name(p));
    }
    detail::Access::device(ctx).set_byte_paths(chosen);
}

PoolConfig layout(uint32_t layers, uint64_t blocks) {
    PoolConfig c;
    c.num_layers = layers;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.block_size = 16;
    c.dtype = DType::F16;
    c.num_blocks = blocks;
    return c;
}

// Scatter (write) and gather (get) of one prefill of `tokens` tokens, against a flat copy of
// the same bytes (K and V: two copies), interleaved, on each byte path.
void bench_prefill(Context& ctx, detail::GpuTimer& timer, Report& rep, uint32_t tokens) {
    progress(fmt::format("prefill, {} tokens", tokens));
    std::mt19937 rng(1);
    const PoolConfig c = layout(1, tokens / 16 + 4);
    BlockPool pool(ctx, c);
    Tensor k = random_tensor(ctx, rng, {1, 8, tokens, 128}, c.dtype);
    Tensor v = random_tensor(ctx, rng, {1, 8, tokens, 128}, c.dtype);
    const uint64_t bytes = 2 * k.nbytes();
    const FlatCopy copy(detail::Access::device(ctx), bytes, 2);  // K and V
    DynamicKVCache cache(pool);
    cache.write(k, v, 0);
    const double copy_s = timer.median(copy);
    const std::string shape = fmt::format("prefill {} tokens x 8 heads x 128, f16", tokens);
    rep.add("copy_gbps_prefill", "vkCmdCopyBuffer, same bytes", 2 * bytes / copy_s / 1e9,
            fmt::format("{:.1f} GB/s", 2 * bytes / copy_s / 1e9), shape);
    const BytePath chosen = ctx.gather_path();
    for_each_path(ctx, [&](const std::string& path) {
        const Paired scatter = paired(timer, copy, [&] { cache.write(k, v, 0, int64_t(0)); });
        const Paired gather = paired(timer, copy, [&] { (void)cache.get(0); });
        add_paired(rep, "gather_ratio_prefill_" + path, "gather / copy (prefill, " + path + ")",
                   gather, true,
                   fmt::format("{:.1f} GB/s, host {:.0f} us", 2 * bytes / gather.var_device / 1e9,
                               gather.var_host * 1e6));
        add_paired(rep, "scatter_ratio_prefill_" + path, "scatter / copy (prefill, " + path + ")",
                   scatter, true,
                   fmt::format("{:.1f} GB/s, host {:.0f} us", 2 * bytes / scatter.var_device / 1e9,
                               scatter.var_host * 1e6));
        if (path == path_name(chosen)) {
            rep.json["gather_ratio_prefill"] = 1 / gather.ratio;
            rep.json["gather_ratio_prefill_min"] = 1 / gather.ratio_max;
            rep.json["gather_ratio_prefill_max"] = 1 / gather.ratio_min;
        }
    });
}

// A decode step the way serving engines run it: every row appends one token to every layer.
// The paged cache (write, appending: the rows grow from `context`) against two contiguous
// caches of the same bytes: llama.cpp-style (a layer's cells hold all heads of a token and a
// step's tokens go to consecutive cells: one copy region per K/V per layer) and Hugging
// Face-style ((rows, heads, max_len, dim) per layer: one region per row and head).
struct DecodeShape {
    uint32_t rows, layers, context, heads, dim;
};

struct DecodeFigures {
    Paired llama, hf, flat;
    double paged_host_us = 0, llama_host_us = 0;
    uint64_t paged_regions = 0, paged_dispatches = 0;
};

DecodeFigures measure_decode(Context& ctx, detail::GpuTimer& timer, const DecodeShape& d) {
    detail::Device& dev = detail::Access::device(ctx);
    const uint32_t appends = 128;  // room for the steps the measurement appends
    PoolConfig c = layout(d.layers, uint64_t(d.rows) * ((d.context + appends) / 16 + 2));
    c.num_kv_heads = d.heads;
    c.head_dim = d.dim;
    BlockPool pool(ctx, c);
    DynamicKVCache cache(pool);
    {
        // Prefill in chunks of up to 256 tokens (the values do not matter for timing).
        const uint32_t chunk = std::min<uint32_t>(256, d.context);
        std::vector<float> ones(size_t(d.rows) * d.heads * chunk * d.dim, 0.5f);
        Tensor k = Tensor::from_host(ctx, ones, {d.rows, d.heads, chunk, d.dim}, c.dtype);
        for (uint32_t l = 0; l < d.layers; ++l)
            for (uint32_t t = 0; t < d.context; t += chunk)
                cache.write(k, k, l);
        ctx.synchronize();
    }
    std::mt19937 rng(2);
    Tensor tk = random_tensor(ctx, rng, {d.rows, d.heads, 1, d.dim}, c.dtype);
    detail::Buffer& src = detail::Access::buffer(tk);
    const uint64_t row_bytes = uint64_t(d.dim) * 2;
    const uint64_t token_bytes = row_bytes * d.heads;  // one token of one row, K or V
    const uint64_t step_bytes = token_bytes * d.rows;  // one layer's K (or V) in a step
    const uint64_t cap = d.context + appends;          // tokens per row in the contiguous caches
    // Contiguous caches: per layer a K and a V buffer of rows x cap tokens.
    std::vector<std::shared_ptr<detail::Buffer>> contiguous;
    for (uint32_t i = 0; i < 2 * d.layers; ++i)
        contiguous.push_back(detail::Buffer::create(dev, uint64_t(d.rows) * cap * token_bytes,
                                                    detail::MemoryKind::DeviceLocal));
    uint64_t llama_pos = d.context, hf_pos = d.context;
    auto paged_step = [&] {
        for (uint32_t l = 0; l < d.layers; ++l)
            cache.write(tk, tk, l);
    };
    auto llama_step = [&] {
        // Cells [pos * rows, (pos + 1) * rows) of every layer: a step's tokens side by side.
        const uint64_t at = (llama_pos++ % cap) * step_bytes;
        for (auto& dst : contiguous) {
            VkCommandBuffer cmd = dev.batches().record({&src}, {dst.get()});
            VkBufferCopy r{0, at, step_bytes};
            vkCmdCopyBuffer(cmd, src.handle(), dst->handle(), 1, &r);
        }
    };
    std::vector<VkBufferCopy> hf_regions(size_t(d.rows) * d.heads);
    auto hf_step = [&] {
        const uint64_t t = hf_pos++ % cap;
        for (uint32_t b = 0; b < d.rows; ++b)
            for (uint32_t h = 0; h < d.heads; ++h)
                hf_regions[size_t(b) * d.heads + h] = {
                    (uint64_t(b) * d.heads + h) * row_bytes,
                    ((uint64_t(b) * d.heads + h) * cap + t) * row_bytes, row_bytes};
        for (auto& dst : contiguous) {
            VkCommandBuffer cmd = dev.batches().record({&src}, {dst.get()});
            vkCmdCopyBuffer(cmd, src.handle(), dst->handle(), uint32_t(hf_regions.size()),
                            hf_regions.data());
        }
    };
    // The same bytes as one flat copy per K/V (no per-layer commands at all): data movement.
    const FlatCopy flat_step(dev, 2 * step_bytes * d.layers, 1);
    DecodeFigures f;
    f.llama = paired(timer, llama_step, paged_step);
    f.hf = paired(timer, hf_step, paged_step);
    f.flat = paired(timer, flat_step, paged_step);
    f.paged_host_us = f.llama.var_host * 1e6;
    f.llama_host_us = f.llama.base_host * 1e6;
    ctx.synchronize();
    const DeviceCounters before = ctx.counters();
    paged_step();
    ctx.synchronize();
    const DeviceCounters after = ctx.counters();
    f.paged_regions = after.copies - before.copies;
    f.paged_dispatches = after.dispatches - before.dispatches;
    return f;
}

// A decode write into head-major and into token-major pages (PoolConfig::layout): `rows` rows
// write one token each (8 heads x 128, f16) into 4 layers, overwriting their last position so
// that the pages stay where they are, against one flat copy of the same bytes (K and V of every
// layer), interleaved, on each byte path. Token-major makes a token's heads one contiguous run,
// so the copy path moves one region per token instead of one per head.
void bench_decode_layouts(Context& ctx, detail::GpuTimer& timer, Report& rep, uint32_t rows) {
    constexpr uint32_t kLayers = 4, kContext = 40;
    progress(fmt::format("decode write by page layout, {} rows x {} layers", rows, kLayers));
    detail::Device& dev = detail::Access::device(ctx);
    std::mt19937 rng(4);
    Tensor prefill = random_tensor(ctx, rng, {rows, 8, kContext, 128}, DType::F16);
    Tensor tk = random_tensor(ctx, rng, {rows, 8, 1, 128}, DType::F16);
    const uint64_t step_bytes = 2 * tk.nbytes() * kLayers;  // K and V of every layer
    const FlatCopy flat(dev, step_bytes, 1);
    struct Pool {
        std::unique_ptr<BlockPool> pool;
        std::unique_ptr<DynamicKVCache> cache;
    };
    Pool pools[2];
    const PageLayout layouts[2] = {PageLayout::HeadMajor, PageLayout::TokenMajor};
    for (int i = 0; i < 2; ++i) {
        PoolConfig c = layout(kLayers, uint64_t(rows) * (kContext / 16 + 2));
        c.layout = layouts[i];
        pools[i].pool = std::make_unique<BlockPool>(ctx, c);
        pools[i].cache = std::make_unique<DynamicKVCache>(*pools[i].pool);
        for (uint32_t l = 0; l < kLayers; ++l)
            pools[i].cache->write(prefill, prefill, l);
    }
    ctx.synchronize();
    auto step = [&](int i) {
        return [&, i] {
            for (uint32_t l = 0; l < kLayers; ++l)
                pools[i].cache->write(tk, tk, l, int64_t(kContext - 1));
        };
    };
    const BytePath chosen = ctx.scatter_path();
    for_each_path(ctx, [&](const std::string& path) {
        const uint64_t regions0 = ctx.counters().copy_regions;
        step(0)();
        const uint64_t regions1 = ctx.counters().copy_regions;
        step(1)();
        const uint64_t regions2 = ctx.counters().copy_regions;
        ctx.synchronize();
        const Paired head = paired(timer, flat, step(0));
        const Paired token = paired(timer, flat, step(1));
        const Paired over = paired(timer, step(0), step(1));  // token / head, side by side
        const std::string shape = fmt::format("{} rows x 8 heads x 128, {} layers", rows, kLayers);
        add_paired(rep, "decode_write_head_major_vs_copy_" + path,
                   "decode write head-major / copy (" + path + ")", head, true,
                   fmt::format("{}; {} regions a step, host {:.0f} us", shape, regions1 - regions0,
                               head.var_host * 1e6));
        add_paired(rep, "decode_write_token_major_vs_copy_" + path,
                   "decode write token-major / copy (" + path + ")", token, true,
                   fmt::format("{}; {} regions a step, host {:.0f} us", shape, regions2 - regions1,
                               token.var_host * 1e6));
        add_paired(rep, "decode_write_token_major_speedup_" + path,
                   "decode write token- over head-major (" + path + ")", over, true,
                   "head-major time / token-major time, interleaved");
        if (path == path_name(chosen)) {
            for (const auto& [key, p] : {std::pair{"decode_write_head_major_vs_copy", head},
                                         std::pair{"decode_write_token_major_vs_copy", token},
                                         std::pair{"decode_write_token_major_speedup", over}}) {
                rep.json[key] = 1 / p.ratio;
                rep.json[std::string(key) + "_min"] = 1 / p.ratio_max;
                rep.json[std::string(key) + "_max"] = 1 / p.ratio_min;
            }
        }
    });
    PoolConfig c = layout(1, 4);  // Auto: what this device picked
    BlockPool picked(ctx, c);
    rep.rows.push_back({"page layout Auto picks", to_string(picked.config().layout),
                        "measured once per device when the first pool is made"});
}

void bench_decode_steps(Context& ctx, detail::GpuTimer& timer, Report& rep, uint32_t rows,
                        uint32_t host_layers) {
    for (uint32_t context : {512u, 2048u}) {
        // Two layers of 8 x 128 f16 heads: the step's cost per layer, at a pool size lavapipe
        // holds (64 rows x 2048 tokens x 2 layers is 1 GiB of pages).
        const DecodeShape d{rows, 2, context, 8, 128};
        progress(
            fmt::format("decode step, {} rows x {} tokens x {} layers", rows, context, d.layers));
        const DecodeFigures f = measure_decode(ctx, timer, d);
        const std::string shape =
            fmt::format("{} rows, context {}, {} layers of 8 x 128 f16", rows, context, d.layers);
        const std::string suffix = context == 2048 ? "" : fmt::format("_{}", context);
        add_paired(rep, "decode_step_paged_over_contiguous" + suffix,
                   fmt::format("decode step paged / llama.cpp-style ({})", context), f.llama, false,
                   fmt::format("{}; device {:.0f} vs {:.0f} us", shape, f.llama.var_device * 1e6,
                               f.llama.base_device * 1e6));
        add_paired(
            rep, "decode_step_paged_over_hf" + suffix,
            fmt::format("decode step paged / HF-style per head ({})", context), f.hf, false,
            fmt::format("contiguous (rows, heads, len, dim): {:.0f} us", f.hf.base_device * 1e6));
        add_paired(
            rep, "decode_scatter_ratio" + suffix,
            fmt::format("decode scatter / one flat copy ({})", context), f.flat, true,
            fmt::format("{} copy commands, {} dispatches per step; host {:.0f} us "
                        "(llama.cpp-style {:.0f} us)",
                        f.paged_regions, f.paged_dispatches, f.paged_host_us, f.llama_host_us));
    }
    // Host time of a whole model's step: 32 layers. Head size does not change what the host
    // does (entries and regions per head), so small heads keep the pool small.
    const DecodeShape d{rows, host_layers, 512, 8, 16};
    const std::string chosen = path_name(ctx.scatter_path());
    for_each_path(ctx, [&](const std::string& path) {
        progress(
            fmt::format("decode host time, {} rows x {} layers, {} path", rows, host_layers, path));
        const DecodeFigures f = measure_decode(ctx, timer, d);
        const std::string note = fmt::format(
            "CPU time of {} write() calls, {} rows, context 512; device {:.0f} us; "
            "llama.cpp-style recording {:.0f} us, device {:.0f} us",
            host_layers, rows, f.llama.var_device * 1e6, f.llama_host_us,
            f.llama.base_device * 1e6);
        rep.json["decode_device_us_per_step_" + path] = f.llama.var_device * 1e6;
        rep.add("decode_host_us_per_step_" + path,
                fmt::format("host time per decode step ({} x {}, {})", rows, host_layers, path),
                f.paged_host_us, fmt::format("{:.0f} us", f.paged_host_us), note);
        if (path == chosen) rep.json["decode_host_us_per_step"] = f.paged_host_us;
    });
}

// Decode attention read through the block table (cached_attention) against what a runtime
// without a paged kernel does: gather the layer, then the same shader on contiguous K/V.
void bench_attention(Context& ctx, detail::GpuTimer& timer, Report& rep, uint32_t rows,
                     uint32_t context) {
    std::mt19937 rng(5);
    const uint32_t q_heads = 32;
    const PoolConfig c = layout(1, uint64_t(rows) * (context / 16 + 1));
    BlockPool pool(ctx, c);
    DynamicKVCache cache(pool);
    Tensor pk = random_tensor(ctx, rng, {rows, 8, context, 128}, c.dtype);
    cache.write(pk, pk, 0);
    Tensor q = random_tensor(ctx, rng, {rows, q_heads, 1, 128}, c.dtype);
    const std::vector<int64_t> lengths = cache.seq_lengths(0);
    auto [k, v] = *cache.get(0);
    progress(fmt::format("decode attention, {} rows x {} tokens", rows, context));
    const Paired contiguous = paired(
        timer, [&] { (void)detail::contiguous_attention(q, k, v, lengths); },
        [&] { (void)cache.cached_attention(q, 0); }, 5, 3);
    const Paired gathered = paired(
        timer,
        [&] {
            auto kv = cache.get(0);
            (void)detail::contiguous_attention(q, kv->first, kv->second, lengths);
        },
        [&] { (void)cache.cached_attention(q, 0); }, 5, 3);
    const std::string shape = fmt::format("{} rows x {} tokens, {} query heads over 8 x 128, f16",
                                          rows, context, q_heads);
    add_paired(rep, "attention_paged_over_contiguous", "paged attention / contiguous attention",
               contiguous, false,
               fmt::format("{}; {:.2f} ms paged; the cost of reading through the block table",
                           shape, contiguous.var_device * 1e3));
    add_paired(rep, "attention_paged_over_gather", "paged attention / (gather + attention)",
               gathered, false, "what a runtime without a paged kernel pays");
}

// Copy-on-write page copies against one multi-region and one flat vkCmdCopyBuffer.
void bench_page_copy(Context& ctx, detail::GpuTimer& timer, Report& rep) {
    const uint32_t pages = 256;
    const PoolConfig c = layout(4, 2 * pages + 8);
    BlockPool pool(ctx, c);
    std::mt19937 rng(3);
    DynamicKVCache cache(pool);
    Tensor k = random_tensor(ctx, rng, {1, 8, pages * 16 - 8, 128}, c.dtype);
    for (uint32_t l = 0; l < 4; ++l)
        cache.write(k, k, l);
    const uint64_t block = pool.stats().block_bytes;
    // The library's page copy: fork every row, then one write per sharer copies its pages.
    std::vector<std::pair<uint32_t, uint32_t>> copies;
    for (uint32_t i = 0; i < pages; ++i)
        copies.emplace_back(i, pages + 4 + i);
    auto& st = detail::Access::pool(pool);
    const double cow = timer.median([&] {
        detail::record_page_copies(detail::Access::device(ctx), *st.shards[0].pages, copies);
    });
    const double flat = time_flat_copy(detail::Access::device(ctx), timer, block * pages);
    rep.add("page_copy_ratio", "page copy / flat copy", flat / cow,
            fmt::format("{:.2f}x", flat / cow),
            fmt::format("{} pages of {} KiB, one region per page", pages, block / 1024));
}

// The host tier: swap_out / swap_in of whole sequences against a host memcpy of the same bytes.
void bench_swap(Context& ctx, Report& rep) {
    progress("swap: host tier against memcpy");
    const bench::SwapResult r = bench::measure_swap(ctx);
    const std::string shape = fmt::format("{} pages, {:.0f} MiB; memcpy {:.2f} GB/s", r.pages,
                                          double(r.bytes) / double(1 << 20), r.memcpy_gbs);
    rep.rows.push_back({"swap_out GB/s / memcpy", fmt::format("{:.2f}x", r.out_ratio),
                        fmt::format("{:.2f}-{:.2f}; {:.2f} GB/s device; {}; device {:.1f} ms, "
                                    "host {:.2f} ms, wall {:.1f} ms",
                                    r.out_min, r.out_max, r.out_gbs, shape, r.out_device_ms,
                                    r.out_host_ms, r.out_wall_ms)});
    rep.rows.push_back(
        {"swap_in GB/s / memcpy", fmt::format("{:.2f}x", r.in_ratio),
         fmt::format("{:.2f}-{:.2f}; {:.2f} GB/s device; device {:.1f} ms, host "
                     "{:.2f} ms, wall {:.1f} ms",
                     r.in_min, r.in_max, r.in_gbs, r.in_device_ms, r.in_host_ms, r.in_wall_ms)});
    rep.json["swap_out_over_memcpy"] = r.out_ratio;
    rep.json["swap_out_over_memcpy_min"] = r.out_min;
    rep.json["swap_out_over_memcpy_max"] = r.out_max;
    rep.json["swap_in_over_memcpy"] = r.in_ratio;
    rep.json["swap_in_over_memcpy_min"] = r.in_min;
    rep.json["swap_in_over_memcpy_max"] = r.in_max;
    rep.json["swap_memcpy_gbs"] = r.memcpy_gbs;
    rep.json["swap_out_gbs"] = r.out_gbs;
    rep.json["swap_in_gbs"] = r.in_gbs;
    rep.json["swap_out_host_ms"] = r.out_host_ms;
    rep.json["swap_in_host_ms"] = r.in_host_ms;
    rep.json["swap_out_device_ms"] = r.out_device_ms;
    rep.json["swap_in_device_ms"] = r.in_device_ms;
}

// A series of (x, y) points for the scaling plot.
struct Series {
    std::string name, color;
    std::vector<std::pair<double, double>> points;
};

// Gather bandwidth against size, for each byte path and for a flat copy of the same bytes.
std::vector<Series> sweep_gather(Context& ctx, detail::GpuTimer& timer) {
    std::vector<Series> out{{"gather, shader", "#1f77b4", {}},
                            {"gather, copy commands", "#ff7f0e", {}},
                            {"vkCmdCopyBuffer (flat)", "#2ca02c", {}}};
    std::mt19937 rng(6);
    for (uint32_t tokens : {256u, 1024u, 4096u, 16384u}) {
        progress(fmt::format("gather sweep, {} tokens", tokens));
        BlockPool pool(ctx, layout(1, tokens / 16 + 4));
        DynamicKVCache cache(pool);
        Tensor k = random_tensor(ctx, rng, {1, 8, tokens, 128}, DType::F16);
        cache.write(k, k, 0);
        const double bytes = 2.0 * 2 * double(k.nbytes());  // K and V, read + written
        // A time the device did not measure (no timestamp: zero, or not finite) is a gap in
        // the chart, not a zero.
        auto gbps = [&](double t) {
            return t > 0 && std::isfinite(t) ? bytes / t / 1e9
                                             : std::numeric_limits<double>::quiet_NaN();
        };
        int i = 0;
        for_each_path(ctx, [&](const std::string&) {
            const double t = timer.median([&] { (void)cache.get(0); }, 7, 2);
            out[size_t(i++)].points.emplace_back(bytes / 2, gbps(t));
        });
        const double t = time_flat_copy(detail::Access::device(ctx), timer, 2 * k.nbytes(), 2);
        out[2].points.emplace_back(bytes / 2, gbps(t));
    }
    return out;
}

// "Nice" axis values: 1, 2 or 5 times a power of ten.
double nice_at_least(double v) {
    const double p = std::pow(10.0, std::floor(std::log10(v)));
    for (double m : {1.0, 2.0, 5.0})
        if (m * p >= v * (1 - 1e-9)) return m * p;
    return 10 * p;
}
double nice_at_most(double v) {
    const double p = std::pow(10.0, std::floor(std::log10(v)));
    for (double m : {5.0, 2.0})
        if (m * p <= v * (1 + 1e-9)) return m * p;
    return p;
}

// A tick label: 1.5, 20, 500, 2k, 50M.
std::string tick_label(double v) {
    if (std::fabs(v) >= 1e9) return fmt::format("{:g}G", v / 1e9);
    if (std::fabs(v) >= 1e6) return fmt::format("{:g}M", v / 1e6);
    if (std::fabs(v) >= 1e3) return fmt::format("{:g}k", v / 1e3);
    return fmt::format("{:g}", v);
}

// A log-x line chart at (x0, y0), 440 x 300: the plot, then its legend below the axis label
// (never over the lines). Ticks are nice values: the y axis from 0 in steps of 1, 2 or 5 x
// 10^k, the x axis at 1, 2 and 5 x 10^k (powers of ten alone over more than two decades). A
// point whose y is not finite was not measured: the line has a gap there; a series with no
// point is listed as absent, and a chart without any point says `missing` in its plot.
void chart(tools::SvgWriter& svg, double x0, double y0, const std::string& title,
           const std::string& xlabel, const std::string& ylabel, const std::vector<Series>& series,
           const std::string& missing) {
    const double left = x0 + 50, right = x0 + 420, top = y0 + 30, bottom = y0 + 200;
    double xmin = 1e300, xmax = 0, ymax = 0;
    bool any = false;
    for (const auto& s : series)
        for (auto [x, y] : s.points) {
            xmin = std::min(xmin, x);
            xmax = std::max(xmax, x);
            if (!std::isfinite(y)) continue;
            ymax = std::max(ymax, y);
            any = true;
        }
    svg.text("text", {{"x", left}, {"y", y0 + 16}, {"font-size", 14}, {"font-weight", "bold"}},
             title);
    svg.element("line",
                {{"x1", left}, {"y1", bottom}, {"x2", right}, {"y2", bottom}, {"stroke", "#333"}});
    svg.element("line",
                {{"x1", left}, {"y1", bottom}, {"x2", left}, {"y2", top}, {"stroke", "#333"}});
    svg.text("text",
             {{"x", (left + right) / 2},
              {"y", bottom + 30},
              {"font-size", 11},
              {"text-anchor", "middle"}},
             xlabel);
    svg.text("text",
             {{"x", x0 + 12},
              {"y", (top + bottom) / 2},
              {"font-size", 11},
              {"transform", fmt::format("rotate(-90 {} {})", x0 + 12, (top + bottom) / 2)},
              {"text-anchor", "middle"}},
             ylabel);
    auto fixed1 = [](double v) { return fmt::format("{:.1f}", v); };
    if (xmax > 0) {
        // The x axis spans nice values around the points.
        const double lo = nice_at_most(xmin), hi = nice_at_least(xmax);
        const bool decades_only = std::log10(hi / lo) > 2.01;
        const double llo =
            std::log10(decades_only ? std::pow(10.0, std::floor(std::log10(lo) + 1e-9)) : lo);
        const double lhi =
            std::log10(decades_only ? std::pow(10.0, std::ceil(std::log10(hi) - 1e-9)) : hi);
        auto px = [&](double x) {
            return left + (std::log10(x) - llo) / std::max(lhi - llo, 1e-9) * (right - left);
        };
        std::vector<double> ticks;
        for (double p = std::pow(10.0, std::floor(llo)); p <= std::pow(10.0, lhi) * 1.0001; p *= 10)
            for (double m : {1.0, 2.0, 5.0}) {
                const double t = m * p, lt = std::log10(t);
                if ((decades_only && m != 1.0) || lt < llo - 1e-9 || lt > lhi + 1e-9) continue;
                ticks.push_back(t);
            }
        for (double t : ticks) {
            svg.element("line", {{"x1", fixed1(px(t))},
                                 {"y1", bottom},
                                 {"x2", fixed1(px(t))},
                                 {"y2", bottom + 4},
                                 {"stroke", "#333"}});
            svg.text("text",
                     {{"x", fixed1(px(t))},
                      {"y", bottom + 15},
                      {"font-size", 10},
                      {"text-anchor", "middle"}},
                     tick_label(t));
        }
        // The y axis from 0 to a nice top in at most 5 nice steps.
        const double step = any && ymax > 0 ? nice_at_least(ymax / 5) : 1;
        const double ytop = any && ymax > 0 ? std::ceil(ymax / step - 1e-9) * step : 5;
        auto py = [&](double y) { return bottom - y / ytop * (bottom - top); };
        for (int i = 0; i * step <= ytop * (1 + 1e-9); ++i) {
            const double y = i * step;
            if (i > 0)
                svg.element("line", {{"x1", left},
                                     {"y1", fixed1(py(y))},
                                     {"x2", right},
                                     {"y2", fixed1(py(y))},
                                     {"stroke", "#eee"}});
            svg.text("text",
                     {{"x", left - 4},
                      {"y", fixed1(py(y) + 3)},
                      {"font-size", 10},
                      {"text-anchor", "end"}},
                     tick_label(y));
        }
        for (const auto& s : series) {
            // One polyline per run of measured points: a point not measured leaves a gap.
            std::string pts;
            size_t n = 0;
            auto flush = [&] {
                if (n > 1)
                    svg.element("polyline", {{"fill", "none"},
                                             {"stroke", s.color},
                                             {"stroke-width", 2},
                                             {"points", pts}});
                pts.clear();
                n = 0;
            };
            for (auto [x, y] : s.points) {
                if (!std::isfinite(y)) {
                    flush();
                    continue;
                }
                pts += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
                ++n;
            }
            flush();
            for (auto [x, y] : s.points)
                if (std::isfinite(y))
                    svg.element("circle", {{"cx", fixed1(px(x))},
                                           {"cy", fixed1(py(y))},
                                           {"r", 3},
                                           {"fill", s.color}});
        }
    }
    if (!any)
        svg.text("text",
                 {{"x", (left + right) / 2},
                  {"y", (top + bottom) / 2},
                  {"font-size", 12},
                  {"text-anchor", "middle"},
                  {"fill", "#666"}},
                 missing);
    // The legend, below the plot.
    int row = 0;
    for (const auto& s : series) {
        const bool absent = std::none_of(s.points.begin(), s.points.end(),
                                         [](const auto& p) { return std::isfinite(p.second); });
        const double ly = bottom + 44 + 14 * row;
        if (absent)
            svg.element("rect", {{"x", left + 10},
                                 {"y", ly - 9},
                                 {"width", 10},
                                 {"height", 10},
                                 {"fill", "none"},
                                 {"stroke", s.color}});
        else
            svg.element("rect", {{"x", left + 10},
                                 {"y", ly - 9},
                                 {"width", 10},
                                 {"height", 10},
                                 {"fill", s.color}});
        svg.text(
            "text",
            {{"x", left + 24}, {"y", ly}, {"font-size", 11}, {"fill", absent ? "#666" : "#000"}},
            absent ? s.name + " (not measured in this run)" : s.name);
        ++row;
    }
}

// The allocator under churn against a raw free list doing the same operations
// (tools/bench/allocator_churn.hpp), at 1k to 1M pages.
std::vector<Series> bench_allocator(Report& rep) {
    std::vector<Series> out{{"BlockAllocator + BlockTable", "#1f77b4", {}},
                            {"raw std::vector free list", "#2ca02c", {}}};
    for (uint64_t n : {1000ull, 10000ull, 100000ull, 1000000ull}) {
        progress(fmt::format("allocator under churn, {} pages", n));
        const bench::ChurnResult r = bench::measure_churn(n);
        out[0].points.emplace_back(double(n), r.ns_per_page_allocator);
        out[1].points.emplace_back(double(n), r.ns_per_page_raw);
        if (n == 10000) continue;  // plotted, not tabulated
        const std::string key = fmt::format("allocator_churn_ratio_{}", n);
        rep.rows.push_back(
            {fmt::format("allocator / raw under churn ({} pages)", n),
             fmt::format("{:.2f}x", r.ratio),
             fmt::format("{:.2f}-{:.2f}; {:.1f} vs {:.1f} ns per page, pool 90% "
                         "full, sequences of 1-128 pages",
                         r.ratio_min, r.ratio_max, r.ns_per_page_allocator, r.ns_per_page_raw)});
        rep.json[key] = r.ratio;
        rep.json[key + "_min"] = r.ratio_min;
        rep.json[key + "_max"] = r.ratio_max;
    }
    return out;
}

// Waste and concurrency on a synthetic trace: paged pages vs contiguous max-length slots.
void bench_memory(Report& rep) {
    std::mt19937 rng(4);
    std::lognormal_distribution<double> prompt(std::log(400.0), 0.9), output(std::log(150.0), 0.8);
    const uint32_t max_len = 4096, block = 16;
    const uint64_t budget_tokens = 1u << 20;  // memory for 1M token slots
    std::vector<uint32_t> lens;
    for (int i = 0; i < 4000; ++i) {
        const uint32_t p = std::clamp<uint32_t>(uint32_t(prompt(rng)), 16, max_len / 2);
        const uint32_t o = std::clamp<uint32_t>(uint32_t(output(rng)), 1, max_len - p);
        lens.push_back(p + o);
    }
    double tokens = 0, paged_slots = 0;
    for (uint32_t l : lens) {
        tokens += l;
        paged_slots += double((l + block - 1) / block * block);
    }
    const double contiguous_slots = double(lens.size()) * max_len;
    uint64_t fit = 0, used = 0;
    for (uint32_t l : lens) {
        const uint64_t need = (l + block - 1) / block * block;
        if (used + need > budget_tokens) break;
        used += need;
        ++fit;
    }
    const uint64_t fit_contiguous = budget_tokens / max_len;
    rep.add("waste_paged_pct", "waste, paged (block 16)", 100 * (1 - tokens / paged_slots),
            fmt::format("{:.1f}%", 100 * (1 - tokens / paged_slots)),
            fmt::format("{} log-normal sequences, mean {:.0f} tokens", lens.size(),
                        tokens / double(lens.size())));
    rep.add("waste_contiguous_pct", "waste, contiguous max-length",
            100 * (1 - tokens / contiguous_slots),
            fmt::format("{:.1f}%", 100 * (1 - tokens / contiguous_slots)),
            fmt::format("{} slots per sequence", max_len));
    rep.add("concurrency_ratio", "sequences that fit, paged / contiguous",
            double(fit) / double(fit_contiguous),
            fmt::format("{:.1f}x", double(fit) / double(fit_contiguous)),
            fmt::format("{} vs {} in {} token slots", fit, fit_contiguous, budget_tokens));
}

// Beam search: 4 beams over a 2,048-token prompt, 128 steps; pages used, shared vs copied.
void bench_beams(Context& ctx, Report& rep) {
    PoolConfig c = layout(1, 2048);
    c.num_kv_heads = 1;
    c.head_dim = 8;
    BlockPool pool(ctx, c);
    DynamicKVCache cache(pool);
    std::mt19937 rng(5);
    cache.write(random_tensor(ctx, rng, {1, 1, 2048, 8}, c.dtype),
                random_tensor(ctx, rng, {1, 1, 2048, 8}, c.dtype), 0);
    cache.batch_repeat_interleave(4);
    uint64_t peak = 0;
    Tensor t = random_tensor(ctx, rng, {4, 1, 1, 8}, c.dtype);
    for (int step = 0; step < 128; ++step) {
        cache.write(t, t, 0);
        std::vector<int32_t> beams(4);
        for (auto& b : beams)
            b = int32_t(rng() % 4);
        cache.reorder_cache(beams);
        peak = std::max(peak, pool.stats().used_blocks);
    }
    ctx.synchronize();
    const uint64_t copied = 4 * ((2048 + 128 + 15) / 16);
    rep.add("beam_pages_shared", "beam search pages, shared", double(peak), fmt::format("{}", peak),
            fmt::format("4 beams, 2048-token prompt, 128 steps; {} page copies",
                        pool.stats().pages_copied));
    rep.add("beam_pages_copied", "beam search pages, copying", double(copied),
            fmt::format("{}", copied), "every beam its own pages");
    rep.add("beam_saving_pct", "beam search pages saved",
            100.0 * (1 - double(peak) / double(copied)),
            fmt::format("{:.0f}%", 100.0 * (1 - double(peak) / double(copied))));
}

// `steps` steps of an engine, each one submit waited for (GpuTimer::runs: device time from
// timestamps around each step, host time the CPU time of recording it), the wall time around
// them all: one run's figures.
struct LoopRun {
    double steps_s = 0, tokens_s = 0, device_ms = 0, host_us = 0, tokens_per_step = 0;
};
LoopRun time_steps(detail::GpuTimer& timer, serve::Engine& engine, uint32_t steps) {
    const uint64_t tokens0 = engine.stats().tokens_written;
    const auto t0 = std::chrono::steady_clock::now();
    const auto runs = timer.runs([&] { engine.step(); }, int(steps), 0);
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double dev = 0;
    std::vector<double> host;
    for (const auto& r : runs) {
        dev += r.device_s;
        host.push_back(r.host_s);
    }
    const double n = double(runs.size());
    const double tokens = double(engine.stats().tokens_written - tokens0);
    return {n / wall, tokens / wall, dev / n * 1e3, median_of(host) * 1e6, tokens / n};
}

// A row of the median of runs, with their min-max, and its JSON keys (key, key_min, key_max).
void add_spread(Report& rep, const std::string& key, const std::string& name, std::vector<double> v,
                const std::string& unit, const std::string& note) {
    std::sort(v.begin(), v.end());
    rep.rows.push_back({name, fmt::format("{:.1f}{}", v[v.size() / 2], unit),
                        fmt::format("{:.1f}-{:.1f}; {}", v.front(), v.back(), note)});
    rep.json[key] = v[v.size() / 2];
    rep.json[key + "_min"] = v.front();
    rep.json[key + "_max"] = v.back();
}

// Sequence transfer (tools/bench/transfer.hpp): over UCX on loopback against a host memcpy of
// the same bytes, in turns; and the byte form.
void bench_transfer(Report& rep) {
    progress("transfer: export + import over UCX loopback, against memcpy");
    const bench::TransferFigures f = bench::measure_transfer(9);
    const std::string how =
        fmt::format("{}; pages sent {}", f.shape,
                    f.direct ? "straight from the pool's mapped memory" : "through a staging copy");
    std::vector<double> pct;
    for (double r : f.ratio)
        pct.push_back(100 * r);
    add_spread(rep, "transfer_ucx_over_memcpy_pct", "transfer over UCX / host memcpy", pct, "%",
               how + "; export + import, in turns with the memcpy");
    add_spread(rep, "transfer_ucx_gbps", "transfer over UCX, GB/s", f.ucx_gbps, "",
               fmt::format("page bytes / host wall time ({:.1f} ms median)", median_of(f.ucx_ms)));
    add_spread(rep, "transfer_memcpy_gbps", "host memcpy, same bytes, GB/s", f.memcpy_gbps, "",
               fmt::format("host wall time ({:.1f} ms median)", median_of(f.memcpy_ms)));
    add_spread(rep, "transfer_export_bytes_gbps", "export_sequence to bytes, GB/s", f.export_gbps,
               "", "byte form: read pages, checksum, pack");
    add_spread(rep, "transfer_import_bytes_gbps", "import_sequence of bytes, GB/s", f.import_gbps,
               "", "byte form: check, checksum, allocate, write pages");
}

// The serving engine's loop (tools/serve/engine.hpp, what `pagedkv-demo serve` runs) without
// its CPU checks: after a warm-up of the trace, `steps` steps each one submit waited for
// (GpuTimer::runs: device time from timestamps around each step, host time the CPU time of
// recording it), the wall time around them all. Three runs of the same trace from scratch.
void bench_serve(Context& ctx, detail::GpuTimer& timer, Report& rep, uint32_t steps) {
    // Small heads and two layers: lavapipe runs a step's attention (64 rows over contexts of
    // up to ~300 tokens) in tens of milliseconds, and the row must stay a few seconds.
    PoolConfig c = layout(2, 128);
    c.num_kv_heads = 2;
    c.head_dim = 32;
    serve::TraceOptions trace;
    trace.requests = 400;
    trace.arrivals_per_step = 1.0;
    trace.max_prompt = 256;
    trace.max_output = 64;
    serve::EngineOptions opt;
    opt.check = false;
    opt.q_heads = 4;
    const uint32_t warmup = 8;
    std::vector<double> steps_s, tokens_s, device_ms, host_us;
    serve::EngineStats last;
    uint64_t peak = 0;
    for (int run = 0; run < 3; ++run) {
        progress(fmt::format("serve loop, run {} of 3: {} steps after {}", run + 1, steps, warmup));
        BlockPool pool(ctx, c);
        serve::Engine engine(ctx, pool, serve::make_trace(trace), opt);
        engine.run(warmup);
        ctx.synchronize();
        const LoopRun r = time_steps(timer, engine, steps);
        steps_s.push_back(r.steps_s);
        tokens_s.push_back(r.tokens_s);
        device_ms.push_back(r.device_ms);
        host_us.push_back(r.host_us);
        last = engine.stats();
        peak = std::max(peak, last.peak_pages);
    }
    const std::string shape = fmt::format(
        "{} steps of a Poisson trace, budget {} tokens, {} layers of {} x {} f16, {} query heads",
        steps, opt.token_budget, c.num_layers, c.num_kv_heads, c.head_dim, opt.q_heads);
    add_spread(rep, "serve_steps_per_s", "serve loop steps / s", steps_s, "",
               shape + "; host wall time, each step submitted and waited for");
    add_spread(rep, "serve_tokens_per_s", "serve loop tokens / s", tokens_s, "",
               "K/V rows written (prefill chunks, decodes, drafts), host wall time");
    add_spread(rep, "serve_device_ms_per_step", "serve loop device time per step", device_ms, " ms",
               fmt::format("GPU timestamps; host recording {:.0f} us per step (median)",
                           median_of(host_us)));
    rep.json["serve_host_us_per_step"] = median_of(host_us);
    const uint64_t contiguous = last.contiguous_pages_peak;
    rep.add("serve_peak_pages", "serve loop pages, peak", double(peak), fmt::format("{}", peak),
            fmt::format("of {}; {} preemptions, {} forks, {} rollbacks over {} steps", c.num_blocks,
                        last.preemptions, last.forks, last.rollbacks, last.steps));
    rep.add("serve_contiguous_pages", "serve loop pages, contiguous max-length", double(contiguous),
            fmt::format("{}", contiguous),
            fmt::format("{} sequences at once x {} tokens", last.peak_sequences, last.max_length));
    rep.add("serve_pages_over_contiguous", "serve pages paged / contiguous",
            double(peak) / double(contiguous),
            fmt::format("{:.2f}x", double(peak) / double(contiguous)),
            "peak pages held against a contiguous max-length cache for the same sequences");
}

// Prefix caching on the shared-prefix trace (serve::make_shared_prefix_trace: one system
// prompt, conversations whose turns re-send their history). The working set is measured by a
// dry run on a pool that never evicts; then, for pools of 100%, 50%, 25% and 12% of it, the
// engine runs the whole trace dry (the manager's bookkeeping and the library's prefix cache,
// no K/V computed: the counts do not depend on it) beside the oracle, an infinite cache on the
// same schedule. Then three runs on the pool that holds the working set reach the middle of
// the trace dry and time `steps` computed steps, as the serve rows do.
void bench_prefix(Context& ctx, detail::GpuTimer& timer, Report& rep, uint32_t steps) {
    PoolConfig c = layout(2, 0);
    c.num_kv_heads = 2;
    c.head_dim = 32;
    const serve::SharedPrefixOptions sp;
    const std::vector<serve::Request> trace = serve::make_shared_prefix_trace(sp);
    uint64_t prompt_sum = 0;
    for (const serve::Request& r : trace)
        prompt_sum += r.prompt;
    serve::EngineOptions opt;
    opt.check = false;
    opt.q_heads = 4;
    ManagerOptions mopt;
    mopt.prefix_caching = true;
    progress(
        fmt::format("prefix caching: working set of {} conversations over a {}-token system "
                    "prompt ({} turns)",
                    sp.conversations, sp.system_prompt, trace.size()));
    const uint64_t ws = serve::working_set(ctx, c, trace, opt);
    const uint64_t least = serve::least_pages(trace, c.block_size, opt.draft_tokens);
    rep.add(
        "prefix_working_set_pages", "prefix trace working set, pages", double(ws),
        fmt::format("{}", ws),
        fmt::format("{} conversations x {}-{} turns over a {}-token system prompt, {} prompt "
                    "tokens; most pages held (used or cached) by a pool that never evicts",
                    sp.conversations, sp.min_turns, sp.max_turns, sp.system_prompt, prompt_sum));
    uint64_t full_steps = 0;
    for (const double share : {1.0, 0.5, 0.25, 0.12}) {
        const int pct = int(std::lround(share * 100));
        progress(fmt::format("prefix caching: pool of {}% of the working set, dry", pct));
        c.num_blocks = serve::pool_for_share(ws, share, mopt.watermark, least);
        BlockPool pool(ctx, c);
        serve::EngineOptions dry = opt;
        dry.compute = false;
        dry.oracle = true;
        serve::Engine engine(ctx, pool, trace, dry, mopt);
        const serve::EngineStats& s = engine.run();
        if (share == 1.0) full_steps = s.steps;
        const double prompt = double(s.prompt_tokens);
        const double computed = double(s.prompt_tokens - s.hit_tokens) / prompt;
        const double oracle = double(s.prompt_tokens - s.oracle_hit_tokens) / prompt;
        const double hits =
            s.oracle_hit_tokens ? double(s.hit_tokens) / double(s.oracle_hit_tokens) : 0.0;
        const std::string k = fmt::format("_{}", pct);
        rep.add("prefix_prefill_ratio" + k, fmt::format("prefix {}% pool: prefill / no cache", pct),
                computed, fmt::format("{:.3f}", computed),
                fmt::format("oracle {:.3f} ({:+.1f}%); {} pages; {} of {} prompt tokens "
                            "computed over {} admissions, {} preemptions",
                            oracle, 100 * (computed / oracle - 1), c.num_blocks,
                            s.prompt_tokens - s.hit_tokens, s.prompt_tokens, s.admissions,
                            s.preemptions));
        rep.json["prefix_oracle_prefill_ratio" + k] = oracle;
        rep.add(
            "prefix_hits_over_oracle" + k, fmt::format("prefix {}% pool: hits / oracle hits", pct),
            hits, fmt::format("{:.3f}", hits),
            fmt::format("{} of the oracle's {} tokens; {} pages evicted, peak {} pages held",
                        s.hit_tokens, s.oracle_hit_tokens, s.evictions, s.peak_pages_with_cached));
        rep.json["prefix_evictions" + k] = double(s.evictions);
        rep.json["prefix_pool_pages" + k] = double(c.num_blocks);
    }

    c.num_blocks = serve::pool_for_share(ws, 1.0, mopt.watermark, least);
    const uint64_t skip = full_steps / 2;
    std::vector<double> steps_s, device_ms, host_us, tokens_step;
    for (int run = 0; run < 3; ++run) {
        progress(fmt::format("prefix caching, run {} of 3: {} steps after {} dry", run + 1, steps,
                             skip));
        BlockPool pool(ctx, c);
        serve::Engine engine(ctx, pool, trace, opt, mopt);
        engine.set_compute(false);
        engine.run(skip);
        engine.set_compute(true);
        ctx.synchronize();
        const LoopRun r = time_steps(timer, engine, steps);
        steps_s.push_back(r.steps_s);
        device_ms.push_back(r.device_ms);
        host_us.push_back(r.host_us);
        tokens_step.push_back(r.tokens_per_step);
    }
    add_spread(
        rep, "prefix_steps_per_s", "prefix loop steps / s", steps_s, "",
        fmt::format("{} steps from step {} of {}, pool {} pages (100%), {} layers of {} x {} "
                    "f16; host wall time",
                    steps, skip, full_steps, c.num_blocks, c.num_layers, c.num_kv_heads,
                    c.head_dim));
    add_spread(rep, "prefix_device_ms_per_step", "prefix loop device time per step", device_ms,
               " ms",
               fmt::format("GPU timestamps; host recording {:.0f} us per step (median), {:.0f} K/V "
                           "rows written per step",
                           median_of(host_us), median_of(tokens_step)));
    rep.json["prefix_host_us_per_step"] = median_of(host_us);
}

}  // namespace

// Quantized pages (PoolConfig::dtype Int8 / FP8E4M3) against f16 pages: tokens a GiB holds
// (scales counted), decode write and decode attention time side by side, and accuracy on a
// fixed Gaussian set: K, V, Q ~ N(0, 1), written as f32 into an f32 pool (the reference) and
// into f16, int8 and fp8 pools computing in f32, so that the errors are the pages' alone.
void bench_quantized(Context& ctx, detail::GpuTimer& timer, Report& rep, uint32_t rows,
                     uint32_t context) {
    constexpr DType kQuantized[] = {DType::Int8, DType::FP8E4M3};
    // Memory: a Llama-3-8B-like block (32 layers, 8 kv heads of 128, 16 tokens).
    auto tokens_per_gib = [&](DType t) {
        PoolConfig c = layout(32, 1);
        c.dtype = t;
        BlockPool pool(ctx, c);
        return 16.0 * double(1ull << 30) / double(pool.stats().block_bytes);
    };
    const double f16_tokens = tokens_per_gib(DType::F16);
    rep.add("quant_tokens_per_gib_f16", "tokens per GiB, f16 pages", f16_tokens,
            fmt::format("{:.0f}", f16_tokens), "32 layers x 8 kv heads x 128, K and V");
    for (DType t : kQuantized) {
        const double n = tokens_per_gib(t);
        const std::string name = to_string(t);
        rep.add("quant_tokens_per_gib_" + name, "tokens per GiB, " + name + " pages", n,
                fmt::format("{:.0f}", n), "scales counted: 4 bytes per token per kv head");
        rep.add("quant_tokens_ratio_" + name, name + " / f16 tokens per GiB", n / f16_tokens,
                fmt::format("{:.3f}x", n / f16_tokens), "same bytes of pool");
    }

    // Speed: one decode step's write (rows x 1 token x 4 layers, from f16 inputs, overwriting
    // the last position) and one layer's decode attention (32 query heads), f16 pages against
    // each quantized dtype, interleaved.
    constexpr uint32_t kLayers = 4;
    std::mt19937 rng(6);
    Tensor prefill = random_tensor(ctx, rng, {rows, 8, context, 128}, DType::F16);
    Tensor tk = random_tensor(ctx, rng, {rows, 8, 1, 128}, DType::F16);
    Tensor q = random_tensor(ctx, rng, {rows, 32, 1, 128}, DType::F16);
    struct Pool {
        std::unique_ptr<BlockPool> pool;
        std::unique_ptr<DynamicKVCache> cache;
    };
    auto make = [&](DType t) {
        PoolConfig c = layout(kLayers, uint64_t(rows) * (context / 16 + 2));
        c.dtype = t;
        c.compute_dtype = DType::F16;
        Pool p{std::make_unique<BlockPool>(ctx, c), nullptr};
        p.cache = std::make_unique<DynamicKVCache>(*p.pool);
        for (uint32_t l = 0; l < kLayers; ++l)
            p.cache->write(prefill, prefill, l);
        return p;
    };
    progress(fmt::format("quantized pages: decode write and attention, {} rows x {} tokens", rows,
                         context));
    Pool f16 = make(DType::F16);
    auto write_step = [&](Pool& p) {
        return [&] {
            for (uint32_t l = 0; l < kLayers; ++l)
                p.cache->write(tk, tk, l, int64_t(context - 1));
        };
    };
    auto attend = [&](Pool& p) { return [&] { (void)p.cache->cached_attention(q, 0); }; };
    for (DType t : kQuantized) {
        Pool qp = make(t);
        ctx.synchronize();
        const std::string name = to_string(t);
        const Paired w = paired(timer, write_step(f16), write_step(qp));
        add_paired(rep, "quant_decode_write_" + name + "_over_f16",
                   "decode write " + name + " / f16", w, false,
                   fmt::format("{} rows x 8 x 128, {} layers, f16 on the chosen path ({}); device "
                               "{:.0f} vs {:.0f} us, host {:.0f} vs {:.0f} us",
                               rows, kLayers, path_name(ctx.scatter_path()), w.var_device * 1e6,
                               w.base_device * 1e6, w.var_host * 1e6, w.base_host * 1e6));
        // Kernel against kernel: f16 pages written by the copy_rows shader.
        const auto chosen = detail::Access::device(ctx).byte_paths();
        detail::Access::device(ctx).set_byte_paths(
            {BytePath::Shader, BytePath::Shader, chosen.whole_rows});
        const Paired ws = paired(timer, write_step(f16), write_step(qp));
        detail::Access::device(ctx).set_byte_paths(chosen);
        add_paired(rep, "quant_decode_write_" + name + "_over_f16_shader",
                   "decode write " + name + " / f16 (shader)", ws, false,
                   fmt::format("f16 by the copy_rows shader; device {:.0f} vs {:.0f} us",
                               ws.var_device * 1e6, ws.base_device * 1e6));
        const Paired a = paired(timer, attend(f16), attend(qp), 5, 3);
        add_paired(rep, "quant_attention_" + name + "_over_f16",
                   "decode attention " + name + " / f16", a, false,
                   fmt::format("{} rows x {} tokens, 32 q heads; device {:.2f} vs {:.2f} ms, host "
                               "{:.0f} vs {:.0f} us",
                               rows, context, a.var_device * 1e3, a.base_device * 1e3,
                               a.var_host * 1e6, a.base_host * 1e6));
    }

    // Accuracy on the Gaussian set.
    progress("quantized pages: accuracy on a Gaussian K/V/Q set");
    std::mt19937 g(20261202);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto gaussian = [&](std::vector<int64_t> shape) {
        int64_t n = 1;
        for (int64_t d : shape)
            n *= d;
        std::vector<float> v(static_cast<size_t>(n));
        for (float& x : v)
            x = normal(g);
        return Tensor::from_host(ctx, v, std::move(shape), DType::F32);
    };
    const int64_t r = rows, n = context;
    const Tensor gk = gaussian({r, 8, n, 128}), gv = gaussian({r, 8, n, 128});
    const Tensor gq = gaussian({r, 32, 1, 128});
    struct Out {
        std::vector<float> k, v, attention;
    };
    auto run = [&](DType t) {
        PoolConfig c = layout(1, uint64_t(rows) * (context / 16 + 1));
        c.dtype = t;
        c.compute_dtype = DType::F32;
        BlockPool pool(ctx, c);
        DynamicKVCache cache(pool);
        cache.write(gk, gv, 0);
        const auto kv = cache.get(0);
        return Out{kv->first.to_host(), kv->second.to_host(),
                   cache.cached_attention(gq, 0).to_host()};
    };
    const Out ref = run(DType::F32);
    struct Err {
        double max = 0, mean = 0, rel = 0;  // rel: mean |error| / mean |reference|
    };
    auto error = [](const std::vector<float>& got, const std::vector<float>& want) {
        Err e;
        double sum_ref = 0;
        for (size_t i = 0; i < want.size(); ++i) {
            const double d = std::fabs(double(got[i]) - double(want[i]));
            e.max = std::max(e.max, d);
            e.mean += d;
            sum_ref += std::fabs(double(want[i]));
        }
        e.rel = e.mean / sum_ref;
        e.mean /= double(want.size());
        return e;
    };
    for (DType t : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        const Out o = run(t);
        const std::string name = to_string(t);
        std::vector<float> got_kv = o.k, want_kv = ref.k;
        got_kv.insert(got_kv.end(), o.v.begin(), o.v.end());
        want_kv.insert(want_kv.end(), ref.v.begin(), ref.v.end());
        const Err kv = error(got_kv, want_kv), at = error(o.attention, ref.attention);
        rep.add("quant_kv_max_abs_error_" + name, "K/V max abs error, " + name, kv.max,
                fmt::format("{:.2e}", kv.max),
                fmt::format("mean {:.2e}; N(0,1) K/V, {} rows x {} tokens x 8 x 128, vs f32",
                            kv.mean, rows, context));
        rep.json["quant_kv_mean_abs_error_" + name] = kv.mean;
        rep.add("quant_attention_rel_error_" + name, "attention rel. error, " + name, at.rel,
                fmt::format("{:.2e}", at.rel),
                fmt::format("mean |err| / mean |f32 output|; max abs {:.2e}, mean abs {:.2e}",
                            at.max, at.mean));
        rep.json["quant_attention_max_abs_error_" + name] = at.max;
        rep.json["quant_attention_mean_abs_error_" + name] = at.mean;
    }
}

// Writes text to path, or to stdout when path is "-".
void write_file(const std::string& path, const std::string& text) {
    if (path == "-") {
        std::fwrite(text.data(), 1, text.size(), stdout);
        if (std::fflush(stdout) != 0) throw std::runtime_error("cannot write to stdout");
        return;
    }
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + path);
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (std::fclose(f) != 0 || !ok) throw std::runtime_error("cannot write " + path);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main(int argc, char** argv) {
    std::string json_path = "pagedkv-bench.json", svg_path = "pagedkv-bench.svg";
    uint32_t prefill_tokens = 16384, decode_rows = 64, decode_layers = 32;
    uint32_t attention_rows = 16, attention_context = 512, serve_steps = 24, prefix_steps = 8;
    const std::vector<std::string> sections{
        "prefill", "decode", "layouts", "page-copy", "attention", "allocator", "gather", "memory",
        "beams",   "serve",  "prefix",  "quant",     "swap",      "transfer",  "hybrid"};
    std::vector<std::string> only;
    int hybrid_pairs = 5;
    CLI::App app{
        "pagedkv-bench: every figure a ratio measured side by side in one run on one device, "
        "printed as a table and written as JSON, with an SVG of the scaling sweeps. Progress "
        "goes to stderr.",
        "pagedkv-bench"};
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.add_option("--json", json_path,
                   "where the figures are written as JSON (-: stdout, the table then on stderr)")
        ->type_name("FILE")
        ->capture_default_str();
    app.add_option("--svg", svg_path,
                   "where the charts are written (-: stdout, the table then on stderr)")
        ->type_name("FILE")
        ->capture_default_str();
    app.add_option("--rows", decode_rows, "rows (sequences) of the decode figures")
        ->type_name("ROWS")
        ->capture_default_str()
        ->check(CLI::Range(1u, 4096u));
    app.add_option("--attention-context", attention_context,
                   "tokens per row in the decode attention figures")
        ->type_name("TOKENS")
        ->capture_default_str()
        ->check(CLI::Range(1u, 65536u));
    app.add_option("--layers", decode_layers, "layers of the decode host-time figure")
        ->type_name("LAYERS")
        ->capture_default_str()
        ->check(CLI::Range(1u, 256u));
    app.add_option("--serve-steps", serve_steps, "timed steps of each serve loop run")
        ->type_name("STEPS")
        ->capture_default_str()
        ->check(CLI::Range(1u, 128u));
    app.add_option("--prefix-steps", prefix_steps,
                   "timed steps of each prefix-caching run (contexts of ~1-2k tokens: slow on "
                   "lavapipe)")
        ->type_name("STEPS")
        ->capture_default_str()
        ->check(CLI::Range(1u, 128u));
    app.add_option("--hybrid-pairs", hybrid_pairs,
                   "interleaved pairs of the hybrid decode-step timing (0: page counts only)")
        ->type_name("PAIRS")
        ->capture_default_str()
        ->check(CLI::Range(0, 64));
    app.add_option("--only", only,
                   "run only these sections (comma-separated); the SVG charts allocator and "
                   "gather, a chart left out says so")
        ->type_name("SECTIONS")
        ->delimiter(',')
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->check(CLI::IsMember(sections));
    try {
        app.parse(argc, argv);
        if (json_path == "-" && svg_path == "-")
            throw CLI::ValidationError("--json and --svg", "only one of them can be - (stdout)");
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "pagedkv-bench: {}\nRun with --help for more information.\n", e.what());
        return 2;
    }
    // With the JSON or the SVG on stdout, the table goes to stderr.
    std::FILE* table = json_path == "-" || svg_path == "-" ? stderr : stdout;
    try {
        const auto t0 = std::chrono::steady_clock::now();
        fmt::print(stderr, "pagedkv-bench: opening the device\n");
        Context ctx = Context::create();
        detail::GpuTimer timer(detail::Access::device(ctx));
        Report rep;
        auto want = [&](const std::string& s) {
            return only.empty() || std::find(only.begin(), only.end(), s) != only.end();
        };
        std::vector<Series> alloc_series, gather_series;
        std::string hybrid_text;
        int status = 0;
        const std::map<std::string, std::function<void()>> run{
            {"prefill",
             [&] {
                 bench_prefill(ctx, timer, rep, prefill_tokens);
                 rep.rows.push_back({"paths chosen (scatter, gather)",
                                     fmt::format("{}, {}", path_name(ctx.scatter_path()),
                                                 path_name(ctx.gather_path())),
                                     fmt::format("shader threads move {}",
                                                 detail::Access::device(ctx).byte_paths().whole_rows
                                                     ? "whole rows"
                                                     : "single words")});
             }},
            {"decode", [&] { bench_decode_steps(ctx, timer, rep, decode_rows, decode_layers); }},
            {"layouts", [&] { bench_decode_layouts(ctx, timer, rep, decode_rows); }},
            {"page-copy", [&] { bench_page_copy(ctx, timer, rep); }},
            {"attention",
             [&] { bench_attention(ctx, timer, rep, attention_rows, attention_context); }},
            {"allocator", [&] { alloc_series = bench_allocator(rep); }},
            {"gather", [&] { gather_series = sweep_gather(ctx, timer); }},
            {"memory", [&] { bench_memory(rep); }},
            {"beams", [&] { bench_beams(ctx, rep); }},
            {"serve", [&] { bench_serve(ctx, timer, rep, serve_steps); }},
            {"prefix", [&] { bench_prefix(ctx, timer, rep, prefix_steps); }},
            {"quant", [&] { bench_quantized(ctx, timer, rep, attention_rows, attention_context); }},
            {"swap", [&] { bench_swap(ctx, rep); }},
            {"transfer", [&] { bench_transfer(rep); }},
            {"hybrid", [&] {
                 // tools/bench/hybrid.hpp; the bench exits 1 when its bar is not met.
                 const bench::HybridFigures h =
                     bench::measure_hybrid(ctx, {4096, 32768, 131072}, hybrid_pairs);
                 for (const bench::HybridRow& r : bench::hybrid_rows(h))
                     rep.rows.push_back({r.name, r.value, r.note});
                 for (const auto& [k, v] : bench::hybrid_json(h))
                     rep.json[k] = v;
                 hybrid_text = bench::hybrid_table(h);
                 if (!bench::hybrid_bar_met(h)) {
                     hybrid_text +=
                         "FAILED: at 32k the hybrid layout holds more than 25% of one "
                         "table's bytes\n";
                     status = 1;
                 }
             }}};
        std::vector<std::string> plan;
        for (const std::string& s : sections)
            if (want(s)) plan.push_back(s);
        fmt::print(stderr, "pagedkv-bench: {} ({:.1f} s); {} sections\n", ctx.device_name(),
                   seconds_since(t0), plan.size());
        for (size_t i = 0; i < plan.size(); ++i) {
            fmt::print(stderr, "[{}/{}] {}\n", i + 1, plan.size(), plan[i]);
            const auto s0 = std::chrono::steady_clock::now();
            run.at(plan[i])();
            fmt::print(stderr, "[{}/{}] {}: {:.1f} s\n", i + 1, plan.size(), plan[i],
                       seconds_since(s0));
        }
        const double secs = seconds_since(t0);

        fmt::print(table, "pagedkv-bench on {} ({:.1f} s)\n\n", ctx.device_name(), secs);
        size_t width = 40;  // the figure column, as wide as its longest name
        for (const Row& r : rep.rows)
            width = std::max(width, r.name.size());
        fmt::print(table, "{:<{}} {:>10}  {}\n", "figure", width, "value", "measured on");
        for (const Row& r : rep.rows)
            fmt::print(table, "{:<{}} {:>10}  {}\n", r.name, width, r.value, r.note);
        if (!hybrid_text.empty()) fmt::print(table, "\n{}", hybrid_text);
        std::fflush(table);
        // Keys stay in this order: the three about the run, then the figures by name. Every
        // value goes through nlohmann-json: strings escaped, a figure that is not finite null.
        tools::Json json;
        json["schema_version"] = 1;
        json["device"] = ctx.device_name();
        json["seconds"] = tools::json_number(std::round(secs * 100) / 100);
        for (const auto& [k, v] : rep.json)
            json[k] = tools::json_number(v);
        write_file(json_path, tools::json_text(json));
        if (!want("allocator") && !want("gather")) {
            fmt::print(table, "\nwrote {} (no charts: --only left out their sweeps)\n",
                       json_path == "-" ? "the JSON to stdout" : json_path);
            return status;
        }
        const std::string left_out = "not measured in this run (--only)";
        const double w = 880, h = 300;
        tools::SvgWriter svg({{"width", w}, {"height", h}, {"font-family", "sans-serif"}});
        svg.element("rect", {{"width", w}, {"height", h}, {"fill", "white"}});
        chart(svg, 0, 0, "allocator under churn, ns per page", "pool size (pages)", "ns",
              alloc_series, left_out);
        chart(svg, 440, 0, "gather bandwidth (K+V, read + written)", "bytes gathered", "GB/s",
              gather_series, want("gather") ? "no GPU timings in this run" : left_out);
        svg.text("text",
                 {{"x", w / 2},
                  {"y", h - 4},
                  {"font-size", 10},
                  {"text-anchor", "middle"},
                  {"fill", "#666"}},
                 "pagedkv-bench on " + std::string(ctx.device_name()));
        write_file(svg_path, svg.finish());
        fmt::print(table, "\nwrote {} and {}\n",
                   json_path == "-" ? "the JSON to stdout" : json_path,
                   svg_path == "-" ? "the SVG to stdout" : svg_path);
        return status;
    } catch (const std::exception& e) {
        fmt::print(stderr, "pagedkv-bench: {}\n", e.what());
        return 1;
    }
}
