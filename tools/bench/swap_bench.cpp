#include "swap_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "cache/manager/access.hpp"
#include "pagedkv/pagedkv.hpp"
#include "shaders/vulkan/device.hpp"
#include "shaders/vulkan/gpu_timer.hpp"

namespace pagedkv::bench {

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

SwapResult measure_swap(Context& ctx, uint32_t layers, uint32_t seqs, uint32_t tokens, int pairs) {
    PoolConfig c;
    c.num_layers = layers;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.block_size = 16;
    c.dtype = DType::F16;
    const uint64_t pages = uint64_t(seqs) * ((tokens + 15) / 16);
    c.num_blocks = pages + 8;
    c.num_host_blocks = pages;
    BlockPool pool(ctx, c);
    KVManager mgr(pool);
    std::vector<SeqId> ids;
    for (uint32_t i = 0; i < seqs; ++i)
        ids.push_back(mgr.add_sequence());
    {
        std::mt19937 rng(11);
        std::uniform_real_distribution<float> dist(-1, 1);
        std::vector<float> kv(size_t(seqs) * tokens * 8 * 128);
        for (float& x : kv)
            x = dist(rng);
        const Tensor t = Tensor::from_host(ctx, kv, {int64_t(seqs) * tokens, 8, 128}, DType::F16);
        Step st = mgr.begin_step(ids, std::vector<uint32_t>(seqs, tokens));
        for (uint32_t l = 0; l < layers; ++l)
            mgr.write(st, l, t, t);
        mgr.end_step(std::move(st));
        ctx.synchronize();
    }
    SwapResult r;
    r.pages = pages;
    r.bytes = pages * pool.stats().block_bytes;
    std::vector<uint8_t> a(r.bytes, 1), b(r.bytes, 2);
    detail::Device& dev = detail::Access::device(ctx);
    detail::GpuTimer timer(dev);
    using clock = std::chrono::steady_clock;
    auto memcpy_s = [&] {
        std::vector<double> t;
        for (int i = 0; i < 3; ++i) {
            const auto t0 = clock::now();
            std::memcpy(b.data(), a.data(), r.bytes);
            t.push_back(std::chrono::duration<double>(clock::now() - t0).count());
        }
        return median(t);
    };
    std::vector<double> mc, od, id, oh, ih, ow, iw, out_ratio, in_ratio;
    auto swap = [&](bool out) {
        const auto t0 = clock::now();
        const auto runs = timer.runs(
            [&] {
                for (SeqId s : ids)
                    out ? mgr.swap_out(s) : mgr.swap_in(s);
            },
            1, 0);
        (out ? ow : iw).push_back(std::chrono::duration<double>(clock::now() - t0).count());
        (out ? od : id).push_back(runs[0].device_s);
        (out ? oh : ih).push_back(runs[0].host_s);
        return runs[0].device_s;
    };
    swap(true);  // warm-up: first touch of the host pages, pipelines
    swap(false);
    od.clear(), id.clear(), oh.clear(), ih.clear(), ow.clear(), iw.clear();
    for (int p = 0; p < pairs; ++p) {
        double m = 0, o = 0, i = 0;
        if (p % 2 == 0) {
            m = memcpy_s();
            o = swap(true);
            i = swap(false);
        } else {
            o = swap(true);
            i = swap(false);
            m = memcpy_s();
        }
        mc.push_back(m);
        out_ratio.push_back(m / o);  // bandwidth ratio: time of the copy / time of the swap
        in_ratio.push_back(m / i);
    }
    const double gb = double(r.bytes) / 1e9;
    r.memcpy_gbs = gb / median(mc);
    r.out_gbs = gb / median(od);
    r.in_gbs = gb / median(id);
    r.out_ratio = median(out_ratio);
    r.in_ratio = median(in_ratio);
    r.out_min = *std::min_element(out_ratio.begin(), out_ratio.end());
    r.out_max = *std::max_element(out_ratio.begin(), out_ratio.end());
    r.in_min = *std::min_element(in_ratio.begin(), in_ratio.end());
    r.in_max = *std::max_element(in_ratio.begin(), in_ratio.end());
    r.out_device_ms = median(od) * 1e3;
    r.in_device_ms = median(id) * 1e3;
    r.out_host_ms = median(oh) * 1e3;
    r.in_host_ms = median(ih) * 1e3;
    r.out_wall_ms = median(ow) * 1e3;
    r.in_wall_ms = median(iw) * 1e3;
    return r;
}

}  // namespace pagedkv::bench
