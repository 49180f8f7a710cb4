// Embedding in a host runtime: the library records into the host's command buffer between the
// host's own compute shaders, and the host's shaders read the pages through the paged view.
// The host (device, pipelines, command buffer, fence) is made here by hand, as a runtime would.
#include <vulkan/vulkan_core.h>

#include <cstring>
#include <filesystem>
#include <mutex>
#include <vector>

#include "cache/manager/access.hpp"
#include "cache/manager/attention.hpp"
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"
#include "caller_kernels.hpp"
#include "host_vulkan.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

// f must throw pagedkv::Error InvalidArgument with a message containing text. (While a
// recording is open nothing can be read back, so these tests prove "nothing changed" with a
// full check against the reference once the recording is finished.)
void refused(const std::string& text, const std::function<void()>& f) {
    try {
        f();
        FAIL("expected pagedkv::Error containing \"" << text << "\"");
    } catch (const Error& e) {
        INFO("message: " << e.what());
        CHECK(e.code() == ErrorCode::InvalidArgument);
        CHECK_THAT(e.what(), Catch::Contains(text));
    }
}

// What PRODUCE writes: base + i * step, i over the flat tensor.
std::vector<float> produced(size_t n, float base, float step) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i)
        v[i] = base + float(i) * step;
    return v;
}

CallerParams produce(const Tensor& t, float base, float step) {
    CallerParams p;
    p.a = t.device_address();
    p.n = uint32_t(t.numel());
    p.base = base;
    p.step = step;
    return p;
}

// VIEW_GATHER over one layer's K (or V) into out, (batch, heads, max_len, dim) f32.
CallerParams view_gather(const PagedView& view, const Tensor& out, bool value, uint32_t max_len) {
    CallerParams p;
    p.a = out.device_address();
    p.b = view.slab_table;
    p.n = uint32_t(out.numel());
    p.heads = view.kv_heads;
    p.dim = value ? view.v_head_dim : view.head_dim;
    p.max_len = max_len;
    p.block_size = view.block_size;
    p.slab_shift = view.slab_shift;
    p.token_major = view.layout == PageLayout::TokenMajor ? 1 : 0;
    p.indptr = view.indptr;
    p.indices = view.indices;
    p.last_page_len = view.last_page_len;
    p.first_slot = view.first_slot;
    p.block_bytes = view.block_bytes;
    p.page_offset = value ? view.v_offset : view.k_offset;
    p.scales_offset = value ? view.v_scales_offset : view.k_scales_offset;
    p.quant = view.dtype == DType::Int8 ? 1 : view.dtype == DType::FP8E4M3 ? 2 : 0;
    return p;
}

}  // namespace

TEST_CASE("the library records into the caller's command buffer between the caller's shaders") {
    on_adopted_device([](HostVulkan& host, Context& ctx) {
        CallerKernels kernels(host.device, host.family);
        BlockPool pool(ctx, small_config(DType::F32, 2, 2, 8, 4, 64));
        DynamicKVCache cache(pool);
        CacheHarness h(ctx, pool, cache, 11);
        for (uint32_t layer = 0; layer < 2; ++layer)
            h.append(3, 5, layer);  // prefilled the ordinary way: the library's own submits
        ctx.synchronize();
        const DeviceCounters before = ctx.counters();

        // One decode step in the host's command buffer: the host's shader computes the new
        // token's K and V, the library writes them into pages and gathers the layer, and the
        // host's next shader reads the gathered K and V, with no barrier of the host's.
        const auto shape = shape4(3, 2, 1, 8);
        Tensor k_new = Tensor::empty(ctx, shape, DType::F32);
        Tensor v_new = Tensor::empty(ctx, shape, DType::F32);
        VkCommandBuffer cmd = kernels.begin();
        ctx.begin_recording(cmd);
        REQUIRE(ctx.recording());
        kernels.dispatch(CallerKernels::Produce, produce(k_new, 0.5f, 0.25f));
        kernels.dispatch(CallerKernels::Produce, produce(v_new, -3.0f, 0.125f));
        auto [k, v] = cache.update(k_new, v_new, 0);
        Tensor combined = Tensor::empty(ctx, k.shape(), DType::F32);
        CallerParams c;
        c.a = k.device_address();
        c.b = v.device_address();
        c.c = combined.device_address();
        c.n = uint32_t(k.numel());
        kernels.dispatch(CallerKernels::Combine, c);
        cache.write(k_new, v_new, 1);  // layer 1 without the gather
        // The host's shader reads layer 1's keys straight from the pages, through the view.
        const PagedView view = cache.paged_view(1);
        Tensor from_pages = Tensor::empty(ctx, shape4(3, 2, 6, 8), DType::F32);
        kernels.dispatch(CallerKernels::ViewGather, view_gather(view, from_pages, false, 6));
        // The library's paged attention over layer 0, on a query the host's shader computes.
        Tensor q = Tensor::empty(ctx, shape4(3, 4, 1, 8), DType::F32);
        kernels.dispatch(CallerKernels::Produce, produce(q, -0.25f, 0.0078125f));
        // One dispatch, bracketed by a barrier before it (the host's writes, such as q) and one
        // after (for the host's reads). lavapipe runs commands in order, so only the count
        // shows a missing one here.
        const uint64_t barriers = ctx.counters().barriers;
        Tensor attention = cache.cached_attention(q, 0);
        CHECK(ctx.counters().barriers == barriers + 2);
        // Reading waits for the GPU, which cannot happen before the host submits.
        refused("cannot happen while recording", [&] { (void)k.to_host(); });
        const uint64_t id = ctx.end_recording();
        REQUIRE_FALSE(ctx.recording());
        // The library submitted nothing of this step; the host's buffer holds all of it.
        CHECK(ctx.counters().submits == before.submits);
        CHECK(ctx.counters().dispatches + ctx.counters().copies >
              before.dispatches + before.copies);
        // What the library gathered is not readable until the host says the buffer finished.
        refused("which is not marked finished", [&] { (void)k.to_host(); });
        kernels.submit_and_wait(host.queue);
        ctx.finish_recording(id);
        refused("no ended, unfinished recording", [&] { ctx.finish_recording(id); });

        const auto nk = produced(3 * 2 * 8, 0.5f, 0.25f);
        const auto nv = produced(3 * 2 * 8, -3.0f, 0.125f);
        const std::vector<std::vector<int64_t>> pos(3, std::vector<int64_t>{5});
        for (uint32_t layer = 0; layer < 2; ++layer)
            h.ref.update(nk, nv, 3, 1, layer, pos);
        const auto rk = h.ref.keys(0), rv = h.ref.values(0);
        std::vector<float> want(rk.size());
        for (size_t i = 0; i < want.size(); ++i)
            want[i] = rk[i] + 2.0f * rv[i];
        const auto got = combined.to_host();
        INFO("first difference: " << first_difference(got, want));
        REQUIRE(bit_equal(got, want));
        h.compare(k, v, 0, "update recorded into the caller's buffer");
        h.check();
        const auto layer1 = cache.get(1);
        REQUIRE(bit_equal(from_pages.to_host(), layer1->first.to_host()));
        const auto lengths = cache.seq_lengths(0);
        const Tensor flat = detail::contiguous_attention(q, k, v, lengths);
        REQUIRE(bit_equal(attention.to_host(), flat.to_host()));

        // The library's own batches work as before once the recording is finished.
        h.append(3, 2, 0);
        h.check();
    });
}

TEST_CASE("recording refuses what it cannot do with clear errors and changes nothing") {
    on_adopted_device([](HostVulkan& host, Context& ctx) {
        CallerKernels kernels(host.device, host.family);
        BlockPool pool(ctx, small_config(DType::F32, 1, 2, 8, 4, 16));
        DynamicKVCache cache(pool);
        CacheHarness h(ctx, pool, cache, 5);
        h.append(2, 3, 0);

        // Outside a recording the cache can be read back: it is exactly as before each refusal.
        const ErrorCode bad = ErrorCode::InvalidArgument;
        require_rejected(cache, bad, "end_recording: not recording into a caller's command buffer",
                         [&] { (void)ctx.end_recording(); });
        require_rejected(cache, bad, "finish_recording: no ended, unfinished recording 12345",
                         [&] { ctx.finish_recording(12345); });
        require_rejected(cache, bad, "begin_recording: the command buffer is null",
                         [&] { ctx.begin_recording(VK_NULL_HANDLE); });
        REQUIRE_FALSE(ctx.recording());

        VkCommandBuffer cmd = kernels.begin();
        ctx.begin_recording(cmd);
        refused("begin_recording: already recording into a command buffer",
                [&] { ctx.begin_recording(cmd); });
        refused("BlockPool: cannot be made while recording",
                [&] { BlockPool other(ctx, small_config(DType::F32, 1, 2, 8, 4, 4)); });
        refused("cannot happen while recording", [&] { (void)cache.get(0)->first.to_host(); });
        // An update refused for bad input records nothing and changes nothing.
        Tensor wrong = Tensor::empty(ctx, shape4(2, 3, 1, 8), DType::F32);
        refused("update: key has 3 heads, pool layout has 2 kv heads",
                [&] { cache.update(wrong, wrong, 0); });
        REQUIRE(ctx.recording());
        const uint64_t id = ctx.end_recording();
        kernels.submit_and_wait(host.queue);
        ctx.finish_recording(id);
        h.check();
    });
}

TEST_CASE("the paged view lets the caller's shader read every row's tokens from the pages") {
    const DType dtype = GENERATE(DType::F32, DType::Int8, DType::FP8E4M3);
    INFO(to_string(dtype));
    on_adopted_device([&](HostVulkan& host, Context& ctx) {
        CallerKernels kernels(host.device, host.family);
        PoolConfig cfg = small_config(dtype, 2, 2, 8, 4, 64);
        cfg.v_head_dim = 4;
        // Quantized pages: the kernel dequantizes to f32, as get() in compute dtype f32 does.
        cfg.compute_dtype = DType::F32;
        // 4 blocks a slab: 16 slabs. A block: 2 layers x 2 heads x 4 slots of K and V rows.
        cfg.max_slab_bytes =
            4 * 2 * 2 * 4 * ((8 + 4) * dtype_size(dtype) + 2 * dtype_scale_size(dtype));
        BlockPool pool(ctx, cfg);
        {
            // Where the view says the scales are: after each page's values.
            const PagedView v = DynamicKVCache(pool).paged_view(1);
            const uint64_t rows = 2 * 4, k_values = rows * 8 * dtype_size(dtype),
                           v_values = rows * 4 * dtype_size(dtype);
            CHECK(v.block_bytes * 4 == cfg.max_slab_bytes);
            CHECK(v.scale_bytes == dtype_scale_size(dtype));
            CHECK(v.k_offset == v.block_bytes / 2);  // layer 1
            if (is_quantized(dtype)) {
                CHECK(v.k_scales_offset == v.k_offset + k_values);
                CHECK(v.v_offset == v.k_scales_offset + rows * 4);
                CHECK(v.v_scales_offset == v.v_offset + v_values);
                CHECK(v.v_scales_offset + rows * 4 == v.block_bytes);
            } else {
                CHECK(v.k_scales_offset == 0);
                CHECK(v.v_scales_offset == 0);
                CHECK(v.v_offset == v.k_offset + k_values);
            }
        }
        DynamicKVCache cache(pool);
        CacheHarness h(ctx, pool, cache, 3);

        auto check_view = [&](uint32_t layer) {
            // No synchronize: paged_view() submits what is pending, ahead of the host's buffer.
            PagedView view = cache.paged_view(layer);
            REQUIRE(view.batch == cache.batch_size());
            REQUIRE(view.lengths == cache.seq_lengths(layer));
            REQUIRE(view.host_indptr.size() == size_t(view.batch) + 1);
            REQUIRE(view.host_indptr.back() == view.host_indices.size());
            REQUIRE(view.slabs.size() == pool.stats().num_slabs);
            const uint32_t L = uint32_t(cache.get_seq_length(layer));
            auto got = cache.get(layer);
            REQUIRE(got.has_value());
            for (bool value : {false, true}) {
                const uint32_t dim = value ? view.v_head_dim : view.head_dim;
                Tensor out =
                    Tensor::empty(ctx, shape4(view.batch, view.kv_heads, L, dim), DType::F32);
                kernels.begin();
                kernels.dispatch(CallerKernels::ViewGather, view_gather(view, out, value, L));
                kernels.submit_and_wait(host.queue);
                const auto mine = out.to_host();
                const auto lib = (value ? got->second : got->first).to_host();
                INFO((value ? "V" : "K") << " of layer " << layer
                                         << ", first difference: " << first_difference(mine, lib));
                REQUIRE(bit_equal(mine, lib));
            }
            return view;
        };

        // Rows that start part-way into their first page (crop), share pages (reorder), and
        // differ in length (a shorter row inserted from another cache).
        for (uint32_t layer = 0; layer < 2; ++layer)
            h.append(3, 9, layer);
        cache.crop(7);
        h.ref.crop(7);
        DynamicKVCache other(pool);
        CacheHarness ho(ctx, pool, other, 4);
        for (uint32_t layer = 0; layer < 2; ++layer)
            ho.append(1, 3, layer);
        cache.insert(other, 0, 3);
        h.ref.insert(ho.ref, 0, 3);
        const std::vector<int32_t> beams{3, 0, 0, 1};
        cache.reorder_cache(beams);
        h.ref.select(beams);
        h.check();
        const PagedView shared = check_view(1);
        CHECK(shared.host_first_slot[1] == 2);  // cropped from 9 to 7 tokens in pages of 4
        CHECK(shared.host_indices[shared.host_indptr[1]] ==
              shared.host_indices[shared.host_indptr[2]]);  // rows 1 and 2 share their pages
        CHECK(shared.lengths[0] == 3);

        for (int step = 0; step < 3; ++step)
            for (uint32_t layer = 0; layer < 2; ++layer)
                h.append(4, 1, layer);
        h.check();
        const PagedView after = check_view(0);
        // Copy-on-write gave rows 1 and 2 pages of their own where they wrote.
        CHECK(after.host_indices[after.host_indptr[2] - 1] !=
              after.host_indices[after.host_indptr[3] - 1]);
        check_view(1);

        DynamicKVCache empty(pool);
        const PagedView none = empty.paged_view(0);
        CHECK(none.batch == 0);
        CHECK(none.host_indptr == std::vector<uint32_t>{0});
        require_rejected(cache, ErrorCode::InvalidArgument,
                         "paged_view: layer_idx 2 out of range, pool has 2 layers",
                         [&] { (void)cache.paged_view(2); });
    });
}

TEST_CASE("what an unfinished recording writes is unreadable on the staging path too") {
    // Tensors in device-local memory are read through a staging copy the library submits
    // itself: that copy must not run ahead of the caller's buffer, so the read is refused.
    ContextOptions o;
    o.force_staging = true;
    ValidatedContext vc(o);
    Context& ctx = vc.ctx;
    detail::Device& dev = detail::Access::device(ctx);
    CallerKernels kernels(dev.handle(), dev.queue_family());
    BlockPool pool(ctx, small_config(DType::F32, 1, 2, 8, 4, 16));
    DynamicKVCache cache(pool);
    CacheHarness h(ctx, pool, cache, 8);
    h.append(2, 3, 0);
    ctx.synchronize();

    auto kv = h.make_kv(2, 1);
    ctx.begin_recording(kernels.begin());
    auto [k, v] = cache.update(kv.tk, kv.tv, 0);
    const uint64_t id = ctx.end_recording();
    refused("which is not marked finished", [&] { (void)k.to_host(); });
    const auto path = std::filesystem::temp_directory_path() / "pagedkv-unfinished.snap";
    refused("which is not marked finished",
            [&] { save_snapshot(path, pool, {&cache}, {.page_contents = true}); });
    {
        std::lock_guard lock(dev.mutex());  // the queue is the library's to synchronize
        kernels.submit_and_wait(dev.queue());
    }
    ctx.finish_recording(id);
    const std::vector<std::vector<int64_t>> pos(2, std::vector<int64_t>{3});
    h.ref.update(kv.k, kv.v, 2, 1, 0, pos);
    h.compare(k, v, 0, "update recorded into the caller's buffer, read by staging");
    save_snapshot(path, pool, {&cache}, {.page_contents = true});
    std::filesystem::remove(path);
    h.check();
}
