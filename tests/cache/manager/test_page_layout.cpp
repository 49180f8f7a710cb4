// PoolConfig::layout: head-major and token-major pages hold the same tokens (bit for bit
// against the CPU reference, on every byte path and in every dtype), each row lies where
// PageFormat::row_offset says, a decode write into token-major pages is one copy region per
// token, cached_attention reads both layouts to the same bits, Auto resolves to a concrete
// layout once per device, and snapshots keep the layout.
#include <chrono>
#include <cstring>
#include <filesystem>

#include "cache/manager/pool_state.hpp"
#include "cache/snapshot/snapshot_capture.hpp"
#include "cache_harness.hpp"
#include "reference_quant.hpp"
#include "shaders/kernels/row_copy.hpp"
#include "shaders/store/page_store.hpp"
#include "shaders/vulkan/device.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

constexpr PageLayout kLayouts[] = {PageLayout::HeadMajor, PageLayout::TokenMajor};

PoolConfig layout_config(DType t, PageLayout l, uint32_t heads = 3, uint32_t dim = 8,
                         uint32_t block = 4, uint32_t layers = 2, uint64_t blocks = 64) {
    PoolConfig c = small_config(t, layers, heads, dim, block, blocks);
    c.layout = l;
    return c;
}

float element(const uint8_t* p, DType t) {
    switch (t) {
        case DType::F32: {
            float f;
            std::memcpy(&f, p, 4);
            return f;
        }
        case DType::F16:
        case DType::BF16: {
            uint16_t h;
            std::memcpy(&h, p, 2);
            return t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
        case DType::Int8:
        case DType::FP8E4M3:
            break;
    }
    return 0;
}

// Reads the pages back (a snapshot capture) and checks that every token of every row, head and
// layer lies at PageFormat::row_offset within its page, holding the reference's values. In a
// quantized pool a row is its codes there and its scale at scales_offset() + row_offset(slot,
// head, 4): both bit for bit the reference quantizer's of the row as written (h.inputs), and
// they decode to the reference's values.
void check_page_bytes(CacheHarness& h, const PagedKVCache& cache) {
    const PagedKVCache* caches[] = {&cache};
    const SnapshotData s = detail::capture_snapshot(h.pool, caches, {}, true, "check_page_bytes");
    const PageFormat& f = s.layout;
    REQUIRE(f.layout == h.pool.config().layout);
    std::vector<uint64_t> index_of(s.layout.num_blocks, UINT64_MAX);
    for (size_t b = 0, i = 0; b < s.allocator.refcounts.size(); ++b)
        if (s.allocator.refcounts[b] > 0) index_of[b] = i++;
    const SnapshotCache& k = s.caches.at(0);
    size_t wrong = 0, checked = 0;
    for (uint32_t layer = 0; layer < f.num_layers; ++layer) {
        if (h.ref.seq_length(layer) == 0) continue;
        const auto keys = h.ref.keys(layer), values = h.ref.values(layer);
        REQUIRE((h.keep_inputs || !is_quantized(f.dtype)));
        const auto in_keys = h.inputs.keys(layer), in_values = h.inputs.values(layer);
        if (h.keep_inputs) REQUIRE(h.inputs.seq_length(layer) == h.ref.seq_length(layer));
        const DType compute = *h.pool.config().compute_dtype;
        const uint64_t max_len = uint64_t(h.ref.seq_length(layer));
        for (size_t r = 0; r < k.rows.size(); ++r)
            for (int64_t t = 0; t < k.len[layer][r]; ++t) {
                const uint64_t slot_all = uint64_t(k.start[layer][r] + t);
                const uint32_t block = index(k.rows[r][slot_all / f.block_size]);
                const uint32_t slot = uint32_t(slot_all % f.block_size);
                const uint8_t* page = s.pages.data() + index_of[block] * f.block_bytes();
                for (uint32_t head = 0; head < f.num_kv_heads; ++head)
                    for (bool value : {false, true}) {
                        const uint32_t dim = value ? f.v_head_dim : f.head_dim;
                        const uint64_t row_bytes = value ? f.v_row_bytes() : f.k_row_bytes();
                        const uint8_t* row = page + f.page_offset(layer, value) +
                                             f.row_offset(slot, head, row_bytes);
                        const auto& want = value ? values : keys;
                        const size_t at =
                            ((r * f.num_kv_heads + head) * max_len + uint64_t(t)) * dim;
                        if (is_quantized(f.dtype)) {
                            const auto& in = value ? in_values : in_keys;
                            const QuantizedRow q =
                                quantize_row(f.dtype, std::span<const float>(in).subspan(at, dim));
                            float scale;
                            std::memcpy(&scale,
                                        page + f.page_offset(layer, value) +
                                            f.scales_offset(value) +
                                            f.row_offset(slot, head, f.scale_bytes()),
                                        4);
                            wrong += std::memcmp(&scale, &q.scale, 4) != 0;
                            wrong += std::memcmp(row, q.codes.data(), dim) != 0;
                            for (uint32_t d = 0; d < dim; ++d) {
                                const float g =
                                    round_to(compute, dequantize(f.dtype, row[d], scale));
                                const float w = round_to(compute, want[at + d]);
                                wrong += std::memcmp(&w, &g, 4) != 0;
                            }
                            checked += dim + 2;
                            continue;
                        }
                        for (uint32_t d = 0; d < dim; ++d) {
                            const float w =
                                want[((r * f.num_kv_heads + head) * max_len + uint64_t(t)) * dim +
                                     d];
                            const float g = element(row + d * f.elem_bytes(), f.dtype);
                            wrong += std::memcmp(&w, &g, 4) != 0;
                            ++checked;
                        }
                    }
            }
    }
    INFO(wrong << " of " << checked << " page elements differ from the reference");
    CHECK(checked > 0);
    CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("row_offset places rows head-major or token-major", "[layout]") {
    PageFormat f{1, 3, 4, 4, 5, DType::F16};
    CHECK(f.row_offset(2, 1, 8) == (1 * 5 + 2) * 8);
    f.layout = PageLayout::TokenMajor;
    CHECK(f.row_offset(2, 1, 8) == (2 * 3 + 1) * 8);
    CHECK(f.k_page_bytes() == 3 * 5 * 8);  // the same sizes either way
    PoolShape s;
    static_cast<PageFormat&>(s) = f;
    s.num_blocks = 4;
    CHECK_FALSE(check_pool_shape(s).has_value());
    s.layout = PageLayout::Auto;  // a shape's layout is resolved
    REQUIRE(check_pool_shape(s).has_value());
    CHECK(check_pool_shape(s)->field == ShapeProblem::Field::Layout);
    s.layout = static_cast<PageLayout>(9);
    CHECK(check_pool_shape(s)->what ==
          "page layout 9 is neither 0 (head_major) nor 1 (token_major)");
    CHECK(std::string(to_string(PageLayout::TokenMajor)) == "token_major");
}

TEST_CASE("both page layouts match the reference bit for bit on every byte path and dtype",
          "[layout][gpu]") {
    // One context for every case (the validation layer's start-up dominates the small cases).
    ValidatedContext g;
    BlockPool warmup(g.ctx, layout_config(DType::F32, PageLayout::Auto));  // resolves Auto
    for (PageLayout layout : kLayouts)
        for (const PathMode& mode : kPathModes) {
            INFO(to_string(layout) << ", byte path: " << mode.name);
            use_path(g.ctx, mode);
            uint32_t seed = 40;
            for (DType dtype : kPoolDTypes) {
                INFO("dtype " << to_string(dtype));
                PoolConfig c = layout_config(dtype, layout, 3, 8, 4, 2, 96);
                // V rows of another size: K and V move separately.
                c.v_head_dim = is_quantized(dtype) ? 4 : 6;
                if (dtype == DType::FP8E4M3) c.compute_dtype = DType::BF16;
                TestPool pool(g.ctx, c);
                REQUIRE(pool.config().layout == layout);
                DynamicKVCache cache(pool);
                CacheHarness h(g.ctx, pool, cache, ++seed);
                h.keep_inputs = true;  // for check_page_bytes
                for (uint32_t l = 0; l < 2; ++l)
                    h.append(3, 9, l);  // prefill: runs of tokens, pages part-filled
                for (int step = 0; step < 5; ++step)
                    for (uint32_t l = 0; l < 2; ++l)
                        h.append(3, 1, l);  // decode: one token per row
                const std::vector<std::vector<int64_t>> pos{{2, 3}, {0, 1}, {13, 14}};
                h.write(3, 2, 0, CachePosition(pos), pos);  // overwrites
                cache.crop(11);
                h.ref.crop(11);
                h.inputs.crop(11);
                h.append(3, 2, 0);
                h.check();
                check_page_bytes(h, cache);
            }
        }
}

TEST_CASE("a decode write into token-major pages is one copy region per token", "[layout][gpu]") {
    ValidatedContext g;
    detail::Device& dev = detail::Access::device(g.ctx);
    constexpr uint32_t kHeads = 4, kDim = 8, kBlock = 4, kSeqs = 3, kTokens = 6;
    // tokens x heads x dim f32: a decode step's (batch, heads, 1, dim) and an NHD tensor are both
    // a token's heads side by side (head_stride 1).
    auto tensor = detail::Buffer::create(dev, uint64_t(kSeqs) * kTokens * kHeads * kDim * 4,
                                         detail::MemoryKind::Tensor);
    for (PageLayout layout : kLayouts) {
        DYNAMIC_SECTION(to_string(layout)) {
            PageFormat f{1, kHeads, kDim, kDim, kBlock, DType::F32};
            f.layout = layout;
            auto pages = detail::DevicePageStore::create(dev, f, 16, 0);
            const uint32_t per_token = layout == PageLayout::TokenMajor ? 1 : kHeads;
            auto regions = [&](std::span<const detail::RowEntry> entries, bool gather) {
                const uint64_t before = dev.counters().copy_regions;
                detail::record_row_copy_commands(
                    dev, *pages,
                    {tensor.get(), entries, kHeads, kDim * 4, 1, f.page_offset(0, false), gather,
                     tensor.get(), f.page_offset(0, true)});
                return dev.counters().copy_regions - before;
            };
            // Decode: one token of each sequence, in pages 2, 7 and 5.
            const detail::RowEntry decode[] = {{0 * kHeads, 2 * kBlock + 1},
                                               {1 * kHeads, 7 * kBlock},
                                               {2 * kHeads, 5 * kBlock + 3}};
            CHECK(regions(decode, false) == kSeqs * per_token * 2);  // K and V
            CHECK(regions(decode, true) == kSeqs * per_token * 2);
            // NHD prefill of one sequence: 6 tokens into pages 3 (all of it) and 9 (two slots).
            std::vector<detail::RowEntry> nhd;
            for (uint32_t t = 0; t < kTokens; ++t)
                nhd.push_back({t * kHeads, (t < kBlock ? 3 * kBlock : 9 * kBlock - kBlock) + t});
            CHECK(regions(nhd, false) ==
                  (layout == PageLayout::TokenMajor ? 2 : kTokens * kHeads) * 2);
            dev.synchronize();
        }
    }
}

TEST_CASE("cached_attention over token-major pages equals the head-major result bit for bit",
          "[layout][attention][gpu]") {
    struct Case {
        DType dtype;
        uint32_t kv_heads, q_heads, head_dim;
    };
    // 16-byte rows and offsets (the kernel's uvec4 staging) and 4-byte ones (word staging);
    // quantized pages (codes and scales), read with a query in the compute dtype (f16).
    const Case cases[] = {{DType::F32, 4, 8, 8},
                          {DType::F16, 3, 6, 6},
                          {DType::BF16, 2, 2, 64},
                          {DType::Int8, 2, 8, 64},
                          {DType::FP8E4M3, 3, 6, 8}};
    const detail::Device::AttentionPaths modes[] = {
        {false, 0}, {false, 16}, {true, detail::Device::kNoSplit}};
    ValidatedContext g;  // one context for every case
    for (const Case& ac : cases) {
        INFO(to_string(ac.dtype) << " " << ac.kv_heads << " kv heads, head_dim " << ac.head_dim);
        std::vector<float> results[2];
        for (int li = 0; li < 2; ++li) {
            TestPool pool(
                g.ctx, layout_config(ac.dtype, kLayouts[li], ac.kv_heads, ac.head_dim, 4, 1, 128));
            DynamicKVCache cache(pool);
            CacheHarness h(g.ctx, pool, cache, 77);  // the same tokens in both pools
            h.append(3, 70, 0);                      // two tiles, many pages
            cache.crop(61);                          // rows start part-way into a page
            h.ref.crop(61);
            h.append(3, 1, 0);
            std::mt19937 rng(5);
            const DType io = *pool.config().compute_dtype;
            auto qv = random_values(size_t(3) * ac.q_heads * ac.head_dim, rng, io);
            for (float& x : qv)
                x *= 0.125f;
            Tensor q = Tensor::from_host(g.ctx, qv, shape4(3, ac.q_heads, 1, ac.head_dim), io);
            for (const auto& mode : modes) {
                set_attention_paths(g.ctx, mode);
                const auto got = cache.cached_attention(q, 0).to_host();
                results[li].insert(results[li].end(), got.begin(), got.end());
            }
            set_attention_paths(g.ctx, {});
        }
        INFO("first difference: " << first_difference(results[1], results[0]));
        CHECK(bit_equal(results[1], results[0]));
    }
}

TEST_CASE("PageLayout::Auto resolves once per device to a concrete layout", "[layout][gpu]") {
    ValidatedContext g;
    detail::Device& dev = detail::Access::device(g.ctx);
    CHECK(dev.page_layout() == PageLayout::Auto);  // not measured before a pool asks
    PoolConfig c = small_config(DType::F16);
    c.layout = PageLayout::Auto;
    const auto t0 = std::chrono::steady_clock::now();
    BlockPool a(g.ctx, c);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const PageLayout picked = a.config().layout;
    UNSCOPED_INFO("Auto picked " << to_string(picked) << " on " << g.ctx.device_name()
                                 << "; the first pool took " << ms << " ms");
    CHECK((picked == PageLayout::HeadMajor || picked == PageLayout::TokenMajor));
    CHECK(dev.page_layout() == picked);
    DynamicKVCache cache(a);
    CacheHarness h(g.ctx, a, cache, 3);
    h.append(2, 5, 0);
    CHECK(cache.paged_view(0).layout == picked);
    // A pool that names a layout does not change what Auto means on the device.
    c.layout = picked == PageLayout::HeadMajor ? PageLayout::TokenMajor : PageLayout::HeadMajor;
    BlockPool b(g.ctx, c);
    CHECK(b.config().layout == c.layout);
    CHECK(b.config().layout != picked);
    c.layout = PageLayout::Auto;
    BlockPool d(g.ctx, c);
    CHECK(d.config().layout == picked);
    CHECK(dev.page_layout() == picked);
}

TEST_CASE("a pool with an unknown page layout is refused", "[layout][errors][gpu]") {
    ValidatedContext g;
    PoolConfig c = small_config(DType::F16);
    c.layout = static_cast<PageLayout>(7);
    try {
        TestPool pool(g.ctx, c);
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::InvalidArgument);
        CHECK(std::string(e.what()) ==
              "BlockPool: unknown page layout 7 (0 head_major, 1 token_major, 2 auto)");
    }
}

TEST_CASE("a snapshot keeps the page layout through save and restore", "[layout][snapshot][gpu]") {
    for (DType dtype : {DType::BF16, DType::Int8})
        for (PageLayout layout : kLayouts)
            DYNAMIC_SECTION(to_string(layout) << ", " << to_string(dtype)) {
                ValidatedContext g;
                // The device's Auto is the other layout where it can be: restore must not use it.
                detail::Access::device(g.ctx).set_page_layout(layout == PageLayout::HeadMajor
                                                                  ? PageLayout::TokenMajor
                                                                  : PageLayout::HeadMajor);
                const std::filesystem::path file =
                    std::filesystem::temp_directory_path() /
                    ("pagedkv-layout-" + std::string(to_string(layout)) + ".snap");
                TestPool pool(g.ctx, layout_config(dtype, layout));
                DynamicKVCache cache(pool);
                CacheHarness h(g.ctx, pool, cache, 9);
                h.append(2, 7, 0);
                h.append(2, 3, 1);
                save_snapshot(file, pool, {&cache}, {.page_contents = true});
                RestoredSnapshot r = restore_snapshot(g.ctx, file);
                std::filesystem::remove(file);
                CHECK(r.pool->config().layout == layout);
                CHECK(detail::Access::pool(*r.pool).format.layout == layout);
                REQUIRE(r.caches.size() == 1);
                for (uint32_t l = 0; l < 2; ++l) {
                    auto got = r.caches[0]->get(l);
                    REQUIRE(got.has_value());
                    // (What a quantized pool returns: the reference's values in its compute dtype.)
                    auto want_k = h.ref.keys(l), want_v = h.ref.values(l);
                    for (auto* w : {&want_k, &want_v})
                        for (float& x : *w)
                            x = round_to(*pool.config().compute_dtype, x);
                    CHECK(bit_equal(got->first.to_host(), want_k));
                    CHECK(bit_equal(got->second.to_host(), want_v));
                }
                // The restored pages take new tokens in their own layout.
                CacheHarness hr(g.ctx, *r.pool, *r.caches[0], 9);
                hr.ref = h.ref;
                hr.append(2, 2, 0);
                hr.check();
            }
}
