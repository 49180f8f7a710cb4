// The convert kernel against the host's conversions (pagedkv/dtype.hpp), bit for bit: every
// f16 and bf16 pattern, and f32 patterns covering every exponent and sign with the mantissa
// tails where rounding decides (ties, just below and above them) plus random ones.
#include <bit>
#include <cstring>
#include <random>
#include <vector>

#include "cache/manager/access.hpp"
#include "host_vulkan.hpp"
#include "shaders/kernels/convert.hpp"
#include "shaders/vulkan/device.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

// The host's conversion of one element's bits, as the bits of dtype `to`.
uint32_t host_convert(uint32_t bits, DType from, DType to) {
    float f = 0.0f;
    switch (from) {
        case DType::F32:
            f = std::bit_cast<float>(bits);
            break;
        case DType::F16:
            f = f16_to_f32(uint16_t(bits));
            break;
        case DType::BF16:
            f = bf16_to_f32(uint16_t(bits));
            break;
        case DType::Int8:
        case DType::FP8E4M3:
            FAIL("the convert kernel takes float dtypes only");
    }
    switch (to) {
        case DType::F32:
            return std::bit_cast<uint32_t>(f);
        case DType::F16:
            return f32_to_f16(f);
        case DType::BF16:
            return f32_to_bf16(f);
        case DType::Int8:
        case DType::FP8E4M3:
            break;
    }
    return 0;
}

std::vector<char> pack(const std::vector<uint32_t>& bits, DType t) {
    const size_t e = dtype_size(t);
    std::vector<char> out(bits.size() * e);
    for (size_t i = 0; i < bits.size(); ++i) {
        if (e == 4) {
            std::memcpy(&out[i * 4], &bits[i], 4);
        } else {
            const uint16_t h = uint16_t(bits[i]);
            std::memcpy(&out[i * 2], &h, 2);
        }
    }
    return out;
}

std::vector<uint32_t> unpack(const std::vector<char>& bytes, DType t) {
    const size_t e = dtype_size(t);
    std::vector<uint32_t> out(bytes.size() / e);
    for (size_t i = 0; i < out.size(); ++i) {
        if (e == 4) {
            std::memcpy(&out[i], &bytes[i * 4], 4);
        } else {
            uint16_t h;
            std::memcpy(&h, &bytes[i * 2], 2);
            out[i] = h;
        }
    }
    return out;
}

// Runs the kernel over `bits` (elements of `from`) and checks every result against the host.
void check_kernel(Context& ctx, const std::vector<uint32_t>& bits, DType from, DType to) {
    INFO(to_string(from) << " -> " << to_string(to) << ", " << bits.size() << " elements");
    detail::Device& dev = detail::Access::device(ctx);
    const auto in = pack(bits, from);
    std::vector<char> out(bits.size() * dtype_size(to));
    auto src = detail::Buffer::create(dev, in.size(), detail::MemoryKind::Tensor);
    auto dst = detail::Buffer::create(dev, out.size(), detail::MemoryKind::Tensor);
    src->write(in.data(), in.size());
    {
        detail::Device::CallLock lock(dev);
        detail::record_convert(dev, *src, from, *dst, to, bits.size());
    }
    dst->read(out.data(), out.size());
    const auto got = unpack(out, to);
    size_t wrong = 0;
    for (size_t i = 0; i < bits.size(); ++i) {
        const uint32_t want = host_convert(bits[i], from, to);
        if (got[i] != want && wrong++ < 8)
            UNSCOPED_INFO("input 0x" << std::hex << bits[i] << ": got 0x" << got[i] << ", want 0x"
                                     << want << std::dec);
    }
    REQUIRE(wrong == 0);
}

std::vector<uint32_t> all_16bit_patterns() {
    std::vector<uint32_t> v(65536);
    for (uint32_t i = 0; i < 65536; ++i)
        v[i] = i;
    return v;
}

// Every sign and exponent (the top 16 bits), each with low halves around the f16 and bf16
// rounding points, then random patterns.
std::vector<uint32_t> f32_patterns(std::mt19937& rng) {
    const uint32_t tails[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x2000, 0x3000,
                              0x7fff, 0x8000, 0x8001, 0xefff, 0xf000, 0xffff};
    std::vector<uint32_t> v;
    v.reserve(65536 * 16 + (1 << 20));
    for (uint32_t hi = 0; hi < 65536; ++hi) {
        for (uint32_t lo : tails)
            v.push_back(hi << 16 | lo);
        for (int r = 0; r < 3; ++r)
            v.push_back(hi << 16 | (rng() & 0xffffu));
    }
    for (int i = 0; i < (1 << 20); ++i)
        v.push_back(uint32_t(rng()));
    return v;
}

}  // namespace

TEST_CASE("convert kernel: every f16 and bf16 pattern converts as on the host", "[convert][gpu]") {
    ValidatedContext vc;
    const auto all = all_16bit_patterns();
    for (DType from : {DType::F16, DType::BF16})
        for (DType to : {DType::F32, DType::F16, DType::BF16})
            check_kernel(vc.ctx, all, from, to);
}

TEST_CASE("convert kernel: f32 patterns round to f16 and bf16 as on the host", "[convert][gpu]") {
    ValidatedContext vc;
    std::mt19937 rng(20240601);
    const auto patterns = f32_patterns(rng);
    for (DType to : {DType::F16, DType::BF16, DType::F32})
        check_kernel(vc.ctx, patterns, DType::F32, to);
}

TEST_CASE("convert kernel: odd element counts touch no element past the end", "[convert][gpu]") {
    ValidatedContext vc;
    detail::Device& dev = detail::Access::device(vc.ctx);
    std::mt19937 rng(3);
    for (size_t n : {size_t(1), size_t(7), size_t(1001)}) {
        std::vector<uint32_t> bits(n);
        for (uint32_t& b : bits)
            b = uint32_t(rng());
        std::vector<uint32_t> halves(n);
        for (size_t i = 0; i < n; ++i)
            halves[i] = bits[i] & 0xffffu;
        if (!dev.has_16bit_storage()) {
            detail::Device::CallLock lock(dev);
            auto a = detail::Buffer::create(dev, 4 * n, detail::MemoryKind::Tensor);
            auto b = detail::Buffer::create(dev, 4 * n, detail::MemoryKind::Tensor);
            REQUIRE_THROWS_AS(detail::record_convert(dev, *a, DType::F32, *b, DType::F16, n),
                              Error);
            continue;
        }
        check_kernel(vc.ctx, bits, DType::F32, DType::F16);
        check_kernel(vc.ctx, halves, DType::F16, DType::F32);
        check_kernel(vc.ctx, halves, DType::BF16, DType::F16);
        // The element after the last is left alone: a 16-bit tensor inside a larger buffer.
        auto src = detail::Buffer::create(dev, 4 * n, detail::MemoryKind::Tensor);
        auto dst = detail::Buffer::create(dev, 2 * n + 2, detail::MemoryKind::Tensor);
        const auto in = pack(bits, DType::F32);
        src->write(in.data(), in.size());
        const std::vector<char> guard(2 * n + 2, char(0x5a));
        dst->write(guard.data(), guard.size());
        {
            detail::Device::CallLock lock(dev);
            detail::record_convert(dev, *src, DType::F32, *dst, DType::F16, n);
        }
        std::vector<char> out(2 * n + 2);
        dst->read(out.data(), out.size());
        CHECK(out[2 * n] == char(0x5a));
        CHECK(out[2 * n + 1] == char(0x5a));
    }
}

TEST_CASE("convert kernel: without 16-bit storage an odd count is refused, an even one converts",
          "[convert][adopt][gpu]") {
    HostVulkan host(/*enable_storage16=*/false);
    {
        Context ctx = Context::adopt(host.external());
        detail::Device& dev = detail::Access::device(ctx);
        REQUIRE_FALSE(dev.has_16bit_storage());
        auto src = detail::Buffer::create(dev, 64, detail::MemoryKind::Tensor);
        auto dst = detail::Buffer::create(dev, 64, detail::MemoryKind::Tensor);
        {
            detail::Device::CallLock lock(dev);
            const uint64_t dispatches = ctx.counters().dispatches;
            try {
                detail::record_convert(dev, *src, DType::F32, *dst, DType::BF16, 7);
                FAIL("expected Unsupported");
            } catch (const Error& e) {
                CHECK(e.code() == ErrorCode::Unsupported);
                CHECK_THAT(e.what(), Catch::Contains("convert: 7 f32 elements to bf16 need "
                                                     "storageBuffer16BitAccess"));
            }
            CHECK(ctx.counters().dispatches == dispatches);
        }
        std::mt19937 rng(5);
        std::vector<uint32_t> bits(4096);
        for (uint32_t& b : bits)
            b = uint32_t(rng());
        check_kernel(ctx, bits, DType::F32, DType::F16);
        check_kernel(ctx, bits, DType::F32, DType::BF16);
        for (uint32_t& b : bits)
            b &= 0xffffu;
        check_kernel(ctx, bits, DType::F16, DType::F32);
        check_kernel(ctx, bits, DType::BF16, DType::F16);
        ctx.synchronize();
    }
    require_no_messages(host);
}
