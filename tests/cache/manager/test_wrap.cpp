// Tensor::wrap: a host runtime's own VkBuffer read in place as K/V, query or anything else a
// Tensor is taken for, bit for bit as the same values uploaded with from_host; bad views are
// refused before anything is made, and the library never frees or recycles the host's buffer.
#include <vulkan/vulkan_core.h>

#include <cstring>
#include <memory>
#include <vector>

#include "cache/manager/access.hpp"
#include "cache_harness.hpp"
#include "cache_state_snapshot.hpp"
#include "caller_kernels.hpp"
#include "host_vulkan.hpp"
#include "raw_buffer.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

// values (already representable in t) as the bytes a runtime would hold.
std::vector<char> encode(const std::vector<float>& values, DType t) {
    std::vector<char> out(values.size() * dtype_size(t));
    for (size_t i = 0; i < values.size(); ++i) {
        if (t == DType::F32) {
            std::memcpy(&out[i * 4], &values[i], 4);
            continue;
        }
        const uint16_t h = t == DType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
        std::memcpy(&out[i * 2], &h, 2);
    }
    return out;
}

int64_t numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape)
        n *= d;
    return n;
}

// One host buffer holding several tensors at chosen offsets.
struct HostTensors {
    Context& ctx;
    std::unique_ptr<RawBuffer> buffer;
    HostTensors(Context& c, VkDeviceSize bytes) : ctx(c), buffer(new RawBuffer(c, bytes)) {}
    Tensor put(VkDeviceSize offset, const std::vector<float>& values, std::vector<int64_t> shape,
               DType t) {
        const auto bytes = encode(values, t);
        REQUIRE(offset + bytes.size() <= buffer->size);
        buffer->write(offset, bytes.data(), bytes.size());
        return Tensor::wrap(ctx, buffer->buffer, offset, std::move(shape), t);
    }
};

void require_bits(const Tensor& got, const Tensor& want, const char* what) {
    INFO(what);
    REQUIRE(got.shape() == want.shape());
    const auto g = got.to_host(), w = want.to_host();
    INFO("first difference: " << first_difference(g, w));
    REQUIRE(bit_equal(g, w));
}

}  // namespace

TEST_CASE("a wrapped host buffer is read in place as K and V, bit for bit as from_host input",
          "[wrap][gpu]") {
    for (DType dtype : kPoolDTypes)
        for (const PathMode& mode : kPathModes) {
            INFO(to_string(dtype) << ", " << mode.name);
            const DType in = is_quantized(dtype) ? DType::F16 : dtype;  // K/V's dtype
            ValidatedContext vc;
            Context& ctx = vc.ctx;
            use_path(ctx, mode);
            TestPool pool_a(ctx, small_config(dtype, 2, 2, 8, 4, 64));
            TestPool pool_b(ctx, small_config(dtype, 2, 2, 8, 4, 64));
            DynamicKVCache uploaded(pool_a), wrapped(pool_b);
            std::mt19937 rng(7);
            std::vector<HostTensors> hosts;
            hosts.reserve(8);
            // Prefill, then decode steps; K at an offset that is a multiple of 4 but not of 16
            // (narrower words on the shader path), V somewhere after it.
            const uint32_t steps[] = {5, 1, 1, 3};
            for (uint32_t layer = 0; layer < 2; ++layer)
                for (uint32_t seq : steps) {
                    const auto shape = shape4(3, 2, seq, 8);
                    const auto n = size_t(numel(shape));
                    const auto k = random_values(n, rng, in), v = random_values(n, rng, in);
                    const VkDeviceSize k_at = 36, v_at = 36 + n * dtype_size(in) + 8;
                    HostTensors& host = hosts.emplace_back(ctx, v_at + n * 4 + 100);
                    const Tensor wk = host.put(k_at, k, shape, in);
                    const Tensor wv = host.put(v_at, v, shape, in);
                    CHECK(wk.is_wrapped());
                    CHECK(wk.vk_buffer() == host.buffer->buffer);
                    CHECK(wk.vk_offset() == k_at);
                    const auto [ka, va] =
                        uploaded.update(Tensor::from_host(ctx, k, shape, in),
                                        Tensor::from_host(ctx, v, shape, in), layer);
                    const auto [kb, vb] = wrapped.update(wk, wv, layer);
                    require_bits(kb, ka, "update's keys");
                    require_bits(vb, va, "update's values");
                }
            for (uint32_t layer = 0; layer < 2; ++layer) {
                const auto a = uploaded.get(layer), b = wrapped.get(layer);
                REQUIRE(a.has_value());
                REQUIRE(b.has_value());
                require_bits(b->first, a->first, "get's keys");
                require_bits(b->second, a->second, "get's values");
            }
            REQUIRE(pool_b.check() == "");
            ctx.synchronize();  // before the host frees its buffers
        }
}

TEST_CASE("a wrapped query drives cached_attention like an uploaded one",
          "[wrap][attention][gpu]") {
    for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
        INFO(to_string(dtype));
        ValidatedContext vc;
        Context& ctx = vc.ctx;
        TestPool pool(ctx, small_config(dtype, 1, 2, 8, 4, 64));
        DynamicKVCache cache(pool);
        CacheHarness h(ctx, pool, cache, 3);
        h.append(2, 9, 0);
        std::mt19937 rng(5);
        const auto shape = shape4(2, 4, 1, 8);
        const auto q = random_values(size_t(numel(shape)), rng, dtype);
        HostTensors host(ctx, 4096);
        const Tensor wq = host.put(20, q, shape, dtype);
        require_bits(cache.cached_attention(wq, 0),
                     cache.cached_attention(Tensor::from_host(ctx, q, shape, dtype), 0),
                     "attention");
        ctx.synchronize();
    }
}

TEST_CASE("to_host reads a wrapped tensor where the host put it, and sees the host's later writes",
          "[wrap][gpu]") {
    for (bool staged : {false, true}) {
        ContextOptions o;
        o.force_staging = staged;
        ValidatedContext vc(o);
        Context& ctx = vc.ctx;
        std::mt19937 rng(11);
        HostTensors host(ctx, 1 << 16);
        for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
            INFO(to_string(dtype));
            for (VkDeviceSize offset : {VkDeviceSize(0), VkDeviceSize(4), VkDeviceSize(1000)}) {
                const std::vector<int64_t> shape{3, 5, 7};  // odd element count
                const auto values = random_values(size_t(numel(shape)), rng, dtype);
                const Tensor t = host.put(offset, values, shape, dtype);
                REQUIRE(t.nbytes() == values.size() * dtype_size(dtype));
                REQUIRE(bit_equal(t.to_host(), values));
                // A view, not a copy: the host's next write shows.
                const auto again = random_values(values.size(), rng, dtype);
                host.put(offset, again, shape, dtype);
                REQUIRE(bit_equal(t.to_host(), again));
            }
        }
        // An empty view is fine too.
        const Tensor none = Tensor::wrap(ctx, host.buffer->buffer, 64, {0, 8}, DType::F16);
        CHECK(none.numel() == 0);
        CHECK(none.to_host().empty());
    }
}

TEST_CASE("wrap refuses bad views with the values named, and changes nothing",
          "[wrap][errors][gpu]") {
    ValidatedContext vc;
    Context& ctx = vc.ctx;
    TestPool pool(ctx, small_config(DType::F16, 1, 2, 8, 4, 64));
    DynamicKVCache cache(pool);
    CacheHarness h(ctx, pool, cache, 1);
    h.append(2, 5, 0);
    RawBuffer raw(ctx, 4096);
    auto refused = [&](const std::string& text, auto&& f) {
        require_rejected(cache, ErrorCode::InvalidArgument, text, f);
    };
    const VkBuffer b = raw.buffer;
    refused("wrap: the VkBuffer is null",
            [&] { (void)Tensor::wrap(ctx, VK_NULL_HANDLE, 0, {4}, DType::F32); });
    refused("wrap: offset 6 is not a multiple of 4 bytes",
            [&] { (void)Tensor::wrap(ctx, b, 6, {4}, DType::F16); });
    refused("tensor shape [2, -1, 8] has a negative dimension", [&] {
        (void)Tensor::wrap(ctx, b, 0, {2, -1, 8}, DType::F16);
    });
    refused("wrap: unknown dtype 7", [&] { (void)Tensor::wrap(ctx, b, 0, {4}, DType(7)); });
    refused("wrap: int8 is a pool dtype only; tensors hold f32, f16 or bf16",
            [&] { (void)Tensor::wrap(ctx, b, 0, {4}, DType::Int8); });
    refused("wrap: fp8e4m3 is a pool dtype only",
            [&] { (void)Tensor::wrap(ctx, b, 0, {4}, DType::FP8E4M3); });
    // Past the memory requirements (at least the 4096 bytes the buffer was made with).
    const std::string alloc = std::to_string(raw.allocation);
    refused("wrap: bytes [16, " + std::to_string(16 + raw.allocation) +
                ") do not fit the buffer, whose memory requirements are " + alloc + " bytes",
            [&] { (void)Tensor::wrap(ctx, b, 16, {int64_t(raw.allocation / 4)}, DType::F32); });
    refused("bytes [" + std::to_string(raw.allocation + 4) + ", " +
                std::to_string(raw.allocation + 8) + ") do not fit",
            [&] { (void)Tensor::wrap(ctx, b, raw.allocation + 4, {1}, DType::F32); });
    // With the size the host made it with, an overrun into the rounding slack is caught too.
    refused("wrap: shape [2, 512] of f32 needs bytes [8, 4104), the buffer has 4096", [&] {
        (void)Tensor::wrap(ctx, b, 8, {2, 512}, DType::F32, 4096);
    });
    refused("needs bytes [4100, 4100), the buffer has 4096",
            [&] { (void)Tensor::wrap(ctx, b, 4100, {0}, DType::F32, 4096); });
    CHECK(Tensor::wrap(ctx, b, 4088, {2}, DType::F32, 4096).numel() == 2);  // the last bytes
    h.check();
    ctx.synchronize();
}

TEST_CASE("a wrapped buffer is never recycled into the buffer cache nor destroyed",
          "[wrap][lifetime][gpu]") {
    ValidatedContext vc;
    Context& ctx = vc.ctx;
    detail::Device& dev = detail::Access::device(ctx);
    RawBuffer raw(ctx, 1 << 17);
    // A first read leaves its staging buffer in the cache; the baseline counts it.
    (void)Tensor::wrap(ctx, raw.buffer, 0, {1 << 15}, DType::F32).to_host();
    ctx.synchronize();
    const uint64_t cached = dev.buffer_cache().cached_bytes();
    {
        Tensor t = Tensor::wrap(ctx, raw.buffer, 0, {1 << 15}, DType::F32);
        Tensor copy = t;
        (void)copy.to_host();
    }
    ctx.synchronize();
    CHECK(dev.buffer_cache().cached_bytes() == cached);
    // The buffer still works: the host writes, a new view reads it.
    const std::vector<float> values{1.5f, -2.0f, 3.25f, 0.0f};
    raw.write(128, values.data(), 16);
    CHECK(bit_equal(Tensor::wrap(ctx, raw.buffer, 128, {4}, DType::F32).to_host(), values));
    // And the library's own tensors of that size class come from fresh memory, not from it.
    Tensor own = Tensor::empty(ctx, {1 << 15}, DType::F32);
    CHECK(own.vk_buffer() != raw.buffer);
    ctx.synchronize();
}

TEST_CASE("on an adopted device the host destroys its wrapped buffer itself, and nothing leaks",
          "[wrap][adopt][gpu]") {
    on_adopted_device([](HostVulkan& host, Context& ctx) {
        TestPool pool(ctx, small_config(DType::F16, 1, 2, 8, 4, 32));
        DynamicKVCache cache(pool);
        const auto shape = shape4(1, 2, 3, 8);
        std::mt19937 rng(2);
        const auto k = random_values(48, rng, DType::F16);
        {
            RawBuffer raw(host.physical, host.device, 4096);
            const auto bytes = encode(k, DType::F16);
            raw.write(64, bytes.data(), bytes.size());
            const Tensor wk = Tensor::wrap(ctx, raw.buffer, 64, shape, DType::F16);
            auto [keys, values] = cache.update(wk, wk, 0);
            REQUIRE(bit_equal(keys.to_host(), k));
            ctx.synchronize();
        }  // the host frees the buffer while the library still holds its (inert) view
        require_no_messages(host);
        REQUIRE(bit_equal(cache.get(0)->first.to_host(), k));
    });
}

TEST_CASE("a buffer the host's command writes is wrapped and cached in the same command buffer",
          "[wrap][embedding][gpu]") {
    on_adopted_device([](HostVulkan& host, Context& ctx) {
        CallerKernels kernels(host.device, host.family);
        TestPool pool(ctx, small_config(DType::BF16, 1, 2, 8, 4, 32));
        DynamicKVCache cache(pool);
        const auto shape = shape4(2, 2, 3, 8);
        std::mt19937 rng(9);
        const auto k = random_values(96, rng, DType::BF16), v = random_values(96, rng, DType::BF16);
        const auto kb = encode(k, DType::BF16), vb = encode(v, DType::BF16);
        RawBuffer raw(host.physical, host.device, 1024);
        // The host fills the buffer with transfer commands in its own command buffer, then
        // the library scatters from it in the same buffer (its entry barrier orders them).
        VkCommandBuffer cmd = kernels.begin();
        vkCmdUpdateBuffer(cmd, raw.buffer, 16, kb.size(), kb.data());
        vkCmdUpdateBuffer(cmd, raw.buffer, 400, vb.size(), vb.data());
        ctx.begin_recording(cmd);
        const Tensor wk = Tensor::wrap(ctx, raw.buffer, 16, shape, DType::BF16);
        const Tensor wv = Tensor::wrap(ctx, raw.buffer, 400, shape, DType::BF16);
        auto [keys, values] = cache.update(wk, wv, 0);
        const uint64_t id = ctx.end_recording();
        kernels.submit_and_wait(host.queue);
        ctx.finish_recording(id);
        REQUIRE(bit_equal(keys.to_host(), k));
        REQUIRE(bit_equal(values.to_host(), v));
        ctx.synchronize();
    });
}
