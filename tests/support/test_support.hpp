// Test support: a validated GPU context that fails the test on any validation message,
// random K/V data representable in each dtype, and a bit-exact comparison.
#pragma once

#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "cache/manager/access.hpp"
#include "pagedkv/pagedkv.hpp"
#include "reference_quant.hpp"

namespace pagedkv::test {

// Whether tests run under the validation layer: always, except in the sanitizer builds of the
// test command, which set PAGEDKV_TEST_NO_VALIDATION=1 (the layer under ASan costs ~8 s per
// process; the normal suite covers validation).
inline bool validation_wanted() {
    const char* v = std::getenv("PAGEDKV_TEST_NO_VALIDATION");
    if (!(v && std::string(v) == "1")) return true;
    // ctest sets PAGEDKV_VALIDATION=1 on every test, which the library also obeys.
    setenv("PAGEDKV_VALIDATION", "0", 1);
    return false;
}

// A Context with the Khronos validation layer on; at the end of the test every message the
// layer reported fails it.
struct ValidatedContext {
    Context ctx;
    explicit ValidatedContext(ContextOptions o = {})
        : ctx(Context::create([&] {
              o.enable_validation = validation_wanted();
              return o;
          }())) {}
    ~ValidatedContext() {
        ctx.synchronize();
        const auto messages = ctx.validation_messages();
        for (const auto& m : messages)
            UNSCOPED_INFO(m);
        CHECK(messages.empty());
    }
};

// Values exactly representable in dtype t (so the upload rounds nothing away).
inline std::vector<float> random_values(size_t n, std::mt19937& rng, DType t) {
    std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
    std::vector<float> out(n);
    for (float& x : out)
        x = round_to(t, dist(rng));
    return out;
}

// A file name of its own for each test process, removed at the end of the test.
struct TempFile {
    std::filesystem::path path;
    explicit TempFile(const std::string& name)
        : path(std::filesystem::temp_directory_path() /
               ("pagedkv-" + std::to_string(::getpid()) + "-" + name)) {}
    ~TempFile() {
        std::error_code ec;
        std::filesystem::remove(path, ec);
    }
};

// Runs f, which must throw pagedkv::Error with `code` and a message containing `text`.
template <class F>
void require_error(F&& f, ErrorCode code, const std::string& text) {
    try {
        f();
        FAIL("expected pagedkv::Error containing \"" << text << "\"");
    } catch (const Error& e) {
        INFO("message: " << e.what());
        REQUIRE(e.code() == code);
        REQUIRE_THAT(e.what(), Catch::Contains(text));
    }
}

// Equal bit for bit (so -0.0 != 0.0 and NaN payloads count).
inline bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Where two float vectors first differ, for failure messages.
inline std::string first_difference(const std::vector<float>& got, const std::vector<float>& want) {
    if (got.size() != want.size())
        return "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
    for (size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0)
            return "index " + std::to_string(i) + ": got " + std::to_string(got[i]) + ", want " +
                   std::to_string(want[i]);
    return "none";
}

// The page layout the differential tests run under: env PAGEDKV_TEST_LAYOUT = head, token or
// auto (tests/CMakeLists.txt registers the GPU tests once with each of head and token); unset:
// head-major. Any other value fails loudly rather than testing something else.
inline PageLayout test_layout() {
    const char* v = std::getenv("PAGEDKV_TEST_LAYOUT");
    const std::string s = v ? v : "head";
    if (s == "head") return PageLayout::HeadMajor;
    if (s == "token") return PageLayout::TokenMajor;
    if (s == "auto") return PageLayout::Auto;
    FAIL("PAGEDKV_TEST_LAYOUT must be head, token or auto, not '" << s << "'");
    return PageLayout::Auto;
}

// A small pool layout for tests (in test_layout()'s page layout).
inline PoolConfig small_config(DType dtype, uint32_t layers = 2, uint32_t heads = 2,
                               uint32_t dim = 8, uint32_t block = 4, uint64_t blocks = 64) {
    PoolConfig c;
    c.num_layers = layers;
    c.num_kv_heads = heads;
    c.head_dim = dim;
    c.block_size = block;
    c.dtype = dtype;
    c.num_blocks = blocks;
    c.layout = test_layout();
    return c;
}

// Every pool dtype: the float ones, then the quantized ones (Int8, FP8E4M3).
inline constexpr DType kPoolDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Int8,
                                        DType::FP8E4M3};
inline constexpr DType kQuantDTypes[] = {DType::Int8, DType::FP8E4M3};

// The dtype of the K/V a test writes into a pool of (resolved) config c: the pool's dtype, or
// for a quantized pool its compute dtype.
inline DType input_dtype(const PoolConfig& c) {
    return is_quantized(c.dtype) ? c.compute_dtype.value_or(DType::F16) : c.dtype;
}

// What a pool of (resolved) config c gives back, in its compute dtype, for input x (values
// exact in input_dtype(c)) of whole rows of dim elements: the reference quantizer's values for a
// quantized pool, else x rounded to the compute dtype (exact unless the compute dtype is
// narrower than the pool's).
inline std::vector<float> stored_values(const PoolConfig& c, std::vector<float> x, size_t dim) {
    const DType compute = c.compute_dtype.value_or(is_quantized(c.dtype) ? DType::F16 : c.dtype);
    if (is_quantized(c.dtype)) return quantize_rows(c.dtype, compute, x, dim);
    for (float& f : x)
        f = round_to(compute, f);
    return x;
}

inline std::vector<int64_t> shape4(uint32_t b, uint32_t h, uint32_t s, uint32_t d) {
    return {int64_t(b), int64_t(h), int64_t(s), int64_t(d)};
}

}  // namespace pagedkv::test

#include "shaders/store/page_store.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::test {

// The three ways bytes can move; differential tests run under each, whatever the device picks.
struct PathMode {
    const char* name;
    BytePath path;
    bool whole_rows;
};
inline constexpr PathMode kPathModes[] = {{"copy commands", BytePath::CopyCommands, false},
                                          {"shader, a word per thread", BytePath::Shader, false},
                                          {"shader, a row per thread", BytePath::Shader, true}};

// The second devices of the live test pools over two devices (PoolPartner), by their first
// device: settings a test makes on its context apply to them too.
inline std::multimap<detail::Device*, detail::Device*>& pool_partners() {
    static std::multimap<detail::Device*, detail::Device*> partners;
    return partners;
}
// f(device) on ctx's device and on the second device of every live test pool over it.
template <class F>
void on_pool_devices(Context& ctx, F&& f) {
    detail::Device& first = detail::Access::device(ctx);
    f(first);
    auto [from, to] = pool_partners().equal_range(&first);
    for (auto it = from; it != to; ++it)
        f(*it->second);
}

inline void use_path(Context& ctx, const PathMode& m) {
    on_pool_devices(ctx, [&](detail::Device& d) {
        d.set_byte_paths({m.path, m.path, m.whole_rows});
    });
}
inline void set_attention_paths(Context& ctx, const detail::Device::AttentionPaths& p) {
    on_pool_devices(ctx, [&](detail::Device& d) { d.set_attention_paths(p); });
}

// How many devices the tests' pools span: env PAGEDKV_TEST_DEVICES = 1 (unset) or 2
// (tests/CMakeLists.txt registers the GPU tests a second time over two logical devices, through
// --devices=2 of tests/support/test_main.cpp). Anything else fails loudly.
inline uint32_t test_devices() {
    const char* v = std::getenv("PAGEDKV_TEST_DEVICES");
    const std::string s = v ? v : "1";
    if (s == "1") return 1;
    if (s == "2") return 2;
    FAIL("PAGEDKV_TEST_DEVICES must be 1 or 2, not '" << s << "'");
    return 1;
}

// The second device of a test pool: another logical device (VkDevice) on the same physical
// device, validated like the first, using the first's byte paths (no timing run of its own).
struct PoolPartner {
    std::unique_ptr<ValidatedContext> partner;
    Context* devices[2] = {nullptr, nullptr};

    PoolPartner(Context& ctx, const PoolConfig& c) {
        devices[0] = &ctx;
        if (test_devices() == 1 || c.num_kv_heads % 2 != 0) return;
        detail::Device& first = detail::Access::device(ctx);
        {
            std::lock_guard lock(first.mutex());
            detail::resolve_byte_paths(first);
        }
        partner = std::make_unique<ValidatedContext>();
        detail::Device& second = detail::Access::device(partner->ctx);
        second.set_byte_paths(first.byte_paths());
        second.set_attention_paths(first.attention_paths());
        devices[1] = &partner->ctx;
        pool_partners().emplace(&first, &second);
    }
    ~PoolPartner() {
        if (!partner) return;
        auto& all = pool_partners();
        detail::Device* second = &detail::Access::device(partner->ctx);
        for (auto it = all.begin(); it != all.end(); ++it)
            if (it->second == second) {
                all.erase(it);
                break;
            }
    }
    PoolPartner(const PoolPartner&) = delete;
    PoolPartner& operator=(const PoolPartner&) = delete;
    std::span<Context* const> span() const { return {devices, partner ? 2u : 1u}; }
};

// The tests' BlockPool: over ctx alone, or with PAGEDKV_TEST_DEVICES=2 (and an even number of kv
// heads) over ctx and a second logical device it keeps. Tensors stay on ctx, where the all-heads
// calls take them.
struct TestPool : private PoolPartner, public BlockPool {
    TestPool(Context& ctx, PoolConfig c) : PoolPartner(ctx, c), BlockPool(span(), c) {}
    // The partner's context (nullptr over one device).
    Context* second() const { return partner ? &partner->ctx : nullptr; }
};

}  // namespace pagedkv::test
