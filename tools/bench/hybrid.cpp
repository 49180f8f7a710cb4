#include "hybrid.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cache/manager/access.hpp"
#include "pagedkv/pagedkv.hpp"
#include "shaders/vulkan/gpu_timer.hpp"

namespace pagedkv::bench {

namespace {

constexpr uint32_t kLayers = 34, kWindow = 1024, kHeads = 8, kDim = 256, kBlock = 16;
constexpr uint32_t kChunk = 4096, kDecode = 32;

// Gemma 3-like: every sixth layer (5, 11, 17, 23, 29) full attention, the others sliding.
std::vector<uint32_t> gemma3_windows() {
    std::vector<uint32_t> w(kLayers, kWindow);
    for (uint32_t l = 5; l < kLayers; l += 6)
        w[l] = 0;
    return w;
}

PoolConfig config(uint32_t heads, uint32_t dim, uint64_t blocks, bool hybrid) {
    PoolConfig c;
    c.num_layers = kLayers;
    c.num_kv_heads = heads;
    c.head_dim = dim;
    c.block_size = kBlock;
    c.dtype = DType::F16;
    c.num_blocks = blocks;
    if (hybrid) c.layer_windows = gemma3_windows();
    return c;
}

uint64_t pages_for(uint64_t tokens) {
    return (tokens + kBlock - 1) / kBlock;
}

struct Count {
    uint64_t held = 0, peak = 0, tokens = 0;
};

// One sequence prefilled in chunks, then decoding a few tokens, K/V not written (only pages
// are counted); pages held at the end and the most in use while a step ran.
Count count_pages(Context& ctx, uint64_t context, bool hybrid) {
    const uint64_t full = pages_for(context + kDecode) + 2;
    // A hybrid pool's pages hold fewer layers; each sliding group holds its window and, while a
    // chunk runs, the chunk's pages too.
    const uint64_t blocks = hybrid ? full + 7 * pages_for(kWindow + kChunk + kBlock) : full;
    BlockPool pool(ctx, config(1, 4, blocks, hybrid));
    KVManager mgr(pool, {0.0});
    const SeqId s = mgr.add_sequence();
    Count c;
    auto step = [&](uint32_t n) {
        Step st = mgr.begin_step(std::vector<SeqId>{s}, std::vector<uint32_t>{n});
        c.peak = std::max(c.peak, pool.stats().used_blocks);
        mgr.end_step(std::move(st));
    };
    for (uint64_t t = 0; t < context; t += kChunk)
        step(uint32_t(std::min<uint64_t>(kChunk, context - t)));
    for (uint32_t i = 0; i < kDecode; ++i)
        step(1);
    c.held = mgr.pages_held();
    c.tokens = uint64_t(mgr.length(s));
    if (c.held != pool.stats().used_blocks)
        throw std::runtime_error(fmt::format("pages_held {} but the pool has {} in use", c.held,
                                             pool.stats().used_blocks));
    c.peak = std::max(c.peak, c.held);
    return c;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

// A decode step of `rows` sequences at ~4k tokens, every layer written and attended, on the
// hybrid pool and on one table, in interleaved pairs.
HybridTiming time_decode(Context& ctx, int pairs) {
    constexpr uint32_t rows = 1, context = 4096, heads = 1, dim = 32, q_heads = 2;
    constexpr uint32_t prefill_chunk = 512, reps = 3;
    HybridTiming t;
    t.shape = fmt::format(
        "{} sequence(s) at {} tokens, {} kv head x {}, {} q heads, f16; begin_step, write + "
        "attention of {} layers, end_step",
        rows, context, heads, dim, q_heads, kLayers);
    // Appends per row: (reps + warm-up) per run, two runs per pair.
    const uint64_t grow = uint64_t(pairs) * 2 * (reps + 1) + kBlock;
    std::vector<float> ones(size_t(rows) * prefill_chunk * heads * dim, 0.0f);
    for (size_t i = 0; i < ones.size(); ++i)
        ones[i] = float(int(i % 17) - 8) / 8.0f;
    const Tensor kv_prefill =
        Tensor::from_host(ctx, ones, {int64_t(rows) * prefill_chunk, heads, dim}, DType::F16);
    const Tensor kv_step = Tensor::from_host(
        ctx, std::vector<float>(size_t(rows) * heads * dim, 0.25f), {rows, heads, dim}, DType::F16);
    const Tensor q_step =
        Tensor::from_host(ctx, std::vector<float>(size_t(rows) * q_heads * dim, 0.5f),
                          {rows, q_heads, dim}, DType::F16);
    struct Side {
        std::unique_ptr<BlockPool> pool;
        std::unique_ptr<KVManager> mgr;
        std::vector<SeqId> ids;
    };
    auto make = [&](bool hybrid) {
        const uint64_t full = pages_for(context + grow) + 2;
        const uint64_t per_row =
            hybrid ? full + 7 * pages_for(kWindow + prefill_chunk + grow + kBlock) : full;
        Side s;
        s.pool = std::make_unique<BlockPool>(ctx, config(heads, dim, rows * per_row, hybrid));
        s.mgr = std::make_unique<KVManager>(*s.pool, ManagerOptions{0.0});
        for (uint32_t r = 0; r < rows; ++r)
            s.ids.push_back(s.mgr->add_sequence());
        for (uint32_t done = 0; done < context; done += prefill_chunk) {
            Step st = s.mgr->begin_step(s.ids, std::vector<uint32_t>(rows, prefill_chunk));
            for (uint32_t l = 0; l < kLayers; ++l)
                s.mgr->write(st, l, kv_prefill, kv_prefill);
            s.mgr->end_step(std::move(st));
        }
        ctx.synchronize();
        return s;
    };
    Side hybrid = make(true), one = make(false);
    const std::vector<uint32_t> one_each(rows, 1);
    auto decode = [&](Side& s) {
        return [&s, &one_each, &kv_step, &q_step] {
            Step st = s.mgr->begin_step(s.ids, one_each);
            for (uint32_t l = 0; l < kLayers; ++l) {
                s.mgr->write(st, l, kv_step, kv_step);
                (void)s.mgr->attention(st, l, q_step);
            }
            s.mgr->end_step(std::move(st));
        };
    };
    detail::GpuTimer timer(detail::Access::device(ctx));
    std::vector<double> dev_ratio, host_ratio, hd, od, hh, oh;
    auto run = [&](Side& s, std::vector<double>& dev, std::vector<double>& host) {
        std::vector<double> d, h;
        for (const auto& r : timer.runs(decode(s), reps, 1)) {
            d.push_back(r.device_s);
            h.push_back(r.host_s);
        }
        dev.push_back(median(d));
        host.push_back(median(h));
    };
    for (int p = 0; p < pairs; ++p) {
        if (p % 2 == 0) {
            run(one, od, oh);
            run(hybrid, hd, hh);
        } else {
            run(hybrid, hd, hh);
            run(one, od, oh);
        }
        dev_ratio.push_back(hd.back() / od.back());
        host_ratio.push_back(hh.back() / oh.back());
    }
    t.measured = true;
    t.device_ratio = median(dev_ratio);
    t.device_min = *std::min_element(dev_ratio.begin(), dev_ratio.end());
    t.device_max = *std::max_element(dev_ratio.begin(), dev_ratio.end());
    t.host_ratio = median(host_ratio);
    t.host_min = *std::min_element(host_ratio.begin(), host_ratio.end());
    t.host_max = *std::max_element(host_ratio.begin(), host_ratio.end());
    t.hybrid_device_ms = median(hd) * 1e3;
    t.one_table_device_ms = median(od) * 1e3;
    t.hybrid_host_ms = median(hh) * 1e3;
    t.one_table_host_ms = median(oh) * 1e3;
    return t;
}

std::string size_text(uint64_t bytes) {
    const double mib = double(bytes) / double(1 << 20);
    return mib >= 1024 ? fmt::format("{:.2f} GiB", mib / 1024) : fmt::format("{:.1f} MiB", mib);
}

std::string context_text(uint64_t tokens) {
    return tokens % 1024 == 0 ? fmt::format("{}k", tokens / 1024) : fmt::format("{}", tokens);
}

}  // namespace

HybridFigures measure_hybrid(Context& ctx, const std::vector<uint64_t>& contexts,
                             int timing_pairs) {
    HybridFigures f;
    const std::vector<uint32_t> windows = gemma3_windows();
    f.layers = kLayers;
    f.full_layers = uint32_t(std::count(windows.begin(), windows.end(), 0u));
    f.window = kWindow;
    f.kv_heads = kHeads;
    f.head_dim = kDim;
    f.block_size = kBlock;
    f.chunk = kChunk;
    f.decode_steps = kDecode;
    {
        // The real shape's page bytes, from pools of one page.
        BlockPool hybrid(ctx, config(kHeads, kDim, 1, true));
        BlockPool one(ctx, config(kHeads, kDim, 1, false));
        f.hybrid_page_bytes = hybrid.stats().block_bytes;
        f.one_table_page_bytes = one.stats().block_bytes;
        // Layers a hybrid page holds: its bytes over one layer's.
        f.per_page = uint32_t(f.hybrid_page_bytes * kLayers / f.one_table_page_bytes);
    }
    const uint64_t token_bytes = uint64_t(kHeads) * kDim * 2 * 2;  // one layer, K and V, f16
    uint64_t largest = 0;
    for (uint64_t n : contexts) {
        const Count h = count_pages(ctx, n, true), o = count_pages(ctx, n, false);
        if (h.tokens != o.tokens) throw std::runtime_error("the two runs' lengths differ");
        HybridContext c;
        c.context = n;
        c.tokens = h.tokens;
        c.hybrid_pages = h.held;
        c.hybrid_peak_pages = h.peak;
        c.one_table_pages = o.held;
        c.hybrid_bytes = h.held * f.hybrid_page_bytes;
        c.one_table_bytes = o.held * f.one_table_page_bytes;
        c.dynamic_bytes = uint64_t(kLayers) * c.tokens * token_bytes;
        c.windowed_bytes =
            (uint64_t(f.full_layers) * c.tokens +
             uint64_t(kLayers - f.full_layers) * std::min<uint64_t>(c.tokens, kWindow)) *
            token_bytes;
        f.contexts.push_back(c);
        largest = std::max(largest, n);
    }
    f.static_bytes = uint64_t(kLayers) * largest * token_bytes;
    if (timing_pairs > 0) f.timing = time_decode(ctx, timing_pairs);
    return f;
}

std::string hybrid_table(const HybridFigures& f) {
    std::string out = fmt::format(
        "hybrid layout: {} layers ({} full attention, {} sliding over {} tokens), {} kv heads x "
        "{}, f16, pages of {} tokens: a hybrid page holds {} layers ({}), one table's page all "
        "{} ({}).\npages: KVManager::pages_held after a prefill in chunks of {} and {} decode "
        "steps (run on pools of 1 kv head x 4: page counts do not depend on the heads); bytes: "
        "those pages x the real shape's page bytes. DynamicCache: {} layers x tokens x K+V, "
        "contiguous.\n",
        f.layers, f.full_layers, f.layers - f.full_layers, f.window, f.kv_heads, f.head_dim,
        f.block_size, f.per_page, size_text(f.hybrid_page_bytes), f.layers,
        size_text(f.one_table_page_bytes), f.chunk, f.decode_steps, f.layers);
    out += fmt::format("{:>8} {:>8} {:>8} {:>10} {:>11} {:>11} {:>11} {:>9} {:>9}\n", "context",
                       "hybrid", "1 table", "peak", "hybrid", "1 table", "Dynamic", "hyb/1tab",
                       "hyb/Dyn");
    out += fmt::format("{:>8} {:>8} {:>8} {:>10} {:>11} {:>11} {:>11} {:>9} {:>9}\n", "", "pages",
                       "pages", "hyb pages", "bytes", "bytes", "bytes", "", "");
    for (const HybridContext& c : f.contexts)
        out += fmt::format("{:>8} {:>8} {:>8} {:>10} {:>11} {:>11} {:>11} {:>8.1f}% {:>8.1f}%\n",
                           context_text(c.context), c.hybrid_pages, c.one_table_pages,
                           c.hybrid_peak_pages, size_text(c.hybrid_bytes),
                           size_text(c.one_table_bytes), size_text(c.dynamic_bytes),
                           100.0 * double(c.hybrid_bytes) / double(c.one_table_bytes),
                           100.0 * double(c.hybrid_bytes) / double(c.dynamic_bytes));
    out += fmt::format(
        "peak: pages in use while a prefill chunk ran (a sliding group holds its window and the "
        "chunk until the step ends). A static cache for {} tokens: {}.\n",
        context_text(f.contexts.empty() ? 0 : f.contexts.back().context),
        size_text(f.static_bytes));
    return out;
}

std::vector<HybridRow> hybrid_rows(const HybridFigures& f) {
    std::vector<HybridRow> rows;
    for (const HybridContext& c : f.contexts) {
        const std::string k = context_text(c.context);
        rows.push_back(
            {"hybrid / one table bytes, " + k,
             fmt::format("{:.1f}%", 100.0 * double(c.hybrid_bytes) / double(c.one_table_bytes)),
             fmt::format("{} pages of {} layers ({}) vs {} of {} ({}); Gemma 3-like, {} tokens",
                         c.hybrid_pages, f.per_page, size_text(c.hybrid_bytes), c.one_table_pages,
                         f.layers, size_text(c.one_table_bytes), c.tokens)});
        rows.push_back(
            {"hybrid / DynamicCache bytes, " + k,
             fmt::format("{:.1f}%", 100.0 * double(c.hybrid_bytes) / double(c.dynamic_bytes)),
             fmt::format("contiguous {} layers x tokens x K+V: {}; windowed contiguous {}",
                         f.layers, size_text(c.dynamic_bytes), size_text(c.windowed_bytes))});
    }
    const HybridTiming& t = f.timing;
    if (t.measured) {
        rows.push_back(
            {"decode step hybrid / one table, device", fmt::format("{:.2f}x", t.device_ratio),
             fmt::format("{:.2f}-{:.2f}; {:.2f} vs {:.2f} ms; {}", t.device_min, t.device_max,
                         t.hybrid_device_ms, t.one_table_device_ms, t.shape)});
        rows.push_back(
            {"decode step hybrid / one table, host", fmt::format("{:.2f}x", t.host_ratio),
             fmt::format("{:.2f}-{:.2f}; {:.2f} vs {:.2f} ms recording the step", t.host_min,
                         t.host_max, t.hybrid_host_ms, t.one_table_host_ms)});
    }
    return rows;
}

std::map<std::string, double> hybrid_json(const HybridFigures& f) {
    std::map<std::string, double> j;
    // Bytes as KiB and MiB: the JSON keeps 6 significant digits.
    const double kib = 1024.0, mib = 1024.0 * 1024.0;
    j["hybrid_page_kib"] = double(f.hybrid_page_bytes) / kib;
    j["hybrid_one_table_page_kib"] = double(f.one_table_page_bytes) / kib;
    j["hybrid_static_mib"] = double(f.static_bytes) / mib;
    for (const HybridContext& c : f.contexts) {
        const std::string k = "_" + context_text(c.context);
        j["hybrid_pages" + k] = double(c.hybrid_pages);
        j["hybrid_peak_pages" + k] = double(c.hybrid_peak_pages);
        j["hybrid_one_table_pages" + k] = double(c.one_table_pages);
        j["hybrid_mib" + k] = double(c.hybrid_bytes) / mib;
        j["hybrid_one_table_mib" + k] = double(c.one_table_bytes) / mib;
        j["hybrid_dynamic_mib" + k] = double(c.dynamic_bytes) / mib;
        j["hybrid_windowed_mib" + k] = double(c.windowed_bytes) / mib;
        j["hybrid_over_one_table" + k] = double(c.hybrid_bytes) / double(c.one_table_bytes);
        j["hybrid_over_dynamic" + k] = double(c.hybrid_bytes) / double(c.dynamic_bytes);
    }
    const HybridTiming& t = f.timing;
    if (t.measured) {
        j["hybrid_decode_device_ratio"] = t.device_ratio;
        j["hybrid_decode_device_ratio_min"] = t.device_min;
        j["hybrid_decode_device_ratio_max"] = t.device_max;
        j["hybrid_decode_host_ratio"] = t.host_ratio;
        j["hybrid_decode_host_ratio_min"] = t.host_min;
        j["hybrid_decode_host_ratio_max"] = t.host_max;
        j["hybrid_decode_device_ms"] = t.hybrid_device_ms;
        j["hybrid_decode_one_table_device_ms"] = t.one_table_device_ms;
        j["hybrid_decode_host_ms"] = t.hybrid_host_ms;
        j["hybrid_decode_one_table_host_ms"] = t.one_table_host_ms;
    }
    return j;
}

bool hybrid_bar_met(const HybridFigures& f) {
    for (const HybridContext& c : f.contexts)
        if (c.context == 32768 && double(c.hybrid_bytes) > kHybridBar * double(c.one_table_bytes))
            return false;
    return true;
}

}  // namespace pagedkv::bench
