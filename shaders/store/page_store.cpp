#include "shaders/store/page_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "pagedkv/error.hpp"
#include "shaders/kernels/row_copy.hpp"
#include "shaders/vulkan/device.hpp"
#include "shaders/vulkan/gpu_timer.hpp"

namespace pagedkv::detail {

StoreSlabs make_store_slabs(Device& dev, const PageFormat& format, uint64_t num_blocks,
                            uint64_t max_slab_bytes, MemoryKind kind, const char* what) {
    const uint64_t block_bytes = format.block_bytes();
    // As large as the device allows: the kernels address pages, nothing binds a slab.
    uint64_t limit = dev.max_buffer_bytes();
    if (max_slab_bytes) limit = std::min(limit, max_slab_bytes);
    if (block_bytes > limit)
        throw Error(ErrorCode::CapacityExceeded,
                    fmt::format("{}one block needs {} bytes ({} layers x K+V pages), more than a "
                                "slab may hold ({} bytes); use a smaller block_size",
                                what, block_bytes, format.num_layers, limit));
    StoreSlabs out;
    while ((uint64_t(2) << out.shift) * block_bytes <= limit &&
           (uint64_t(1) << out.shift) < num_blocks)
        ++out.shift;
    const uint64_t per_slab = uint64_t(1) << out.shift;
    std::vector<uint64_t> addresses;
    for (uint64_t first = 0; first < num_blocks; first += per_slab) {
        const uint64_t blocks = std::min(per_slab, num_blocks - first);
        out.slabs.push_back(Buffer::create(dev, blocks * block_bytes, kind));
        addresses.push_back(out.slabs.back()->address());
    }
    out.table = Buffer::create(dev, addresses.size() * sizeof(uint64_t), kind);
    out.table->write(addresses.data(), addresses.size() * sizeof(uint64_t));
    return out;
}

std::shared_ptr<DevicePageStore> DevicePageStore::create(Device& dev, const PageFormat& format,
                                                         uint64_t num_blocks,
                                                         uint64_t max_slab_bytes) {
    StoreSlabs s =
        make_store_slabs(dev, format, num_blocks, max_slab_bytes, MemoryKind::DeviceLocal, "");
    return std::make_shared<DevicePageStore>(format, num_blocks, s.shift, std::move(s.slabs),
                                             std::move(s.table));
}

void resolve_byte_paths(Device& dev) {
    Device::BytePaths paths = dev.byte_paths();
    if (paths.scatter != BytePath::Auto && paths.gather != BytePath::Auto) {
        paths.whole_rows = dev.is_cpu();
        dev.set_byte_paths(paths);
        return;
    }
    const BytePath fallback = dev.is_cpu() ? BytePath::CopyCommands : BytePath::Shader;
    if (!GpuTimer::supported(dev)) {
        paths.whole_rows = dev.is_cpu();
        if (paths.scatter == BytePath::Auto) paths.scatter = fallback;
        if (paths.gather == BytePath::Auto) paths.gather = fallback;
        dev.set_byte_paths(paths);
        return;
    }
    // A decode-like workload: 1024 single tokens of 8 heads x 256 bytes spread over pages in a
    // shuffled order, and a prefill-like one: 256 whole pages (8 MiB) in order. Each path is
    // timed on both and the faster in total wins. (With 64 pages the fixed cost of a run hid the
    // difference on lavapipe, which then picked the shader at a third of copy speed.)
    const PageFormat layout{1, 8, 128, 128, 16, DType::F16};
    const uint32_t blocks = 256, tokens = blocks * 16;
    auto storage = DevicePageStore::create(dev, layout, blocks, 0);
    auto tensor = Buffer::create(dev, uint64_t(tokens) * 8 * 256, MemoryKind::Tensor);
    std::vector<uint32_t> order(blocks);
    std::iota(order.begin(), order.end(), 0u);
    std::shuffle(order.begin(), order.end(), std::mt19937(7));
    std::vector<RowEntry> in_order, scattered;
    for (uint32_t t = 0; t < tokens; ++t)
        in_order.push_back({t, t});
    for (uint32_t t = 0; t < 1024; ++t)
        scattered.push_back({t, order[t % blocks] * 16 + t / blocks});
    GpuTimer timer(dev);
    auto time = [&](bool gather, auto record) {
        double total = 0;
        for (const auto* entries : {&in_order, &scattered}) {
            RowCopy op{tensor.get(), *entries, 8, 256, gather ? tokens : tokens, 0, gather};
            total += timer.median([&] { record(dev, *storage, op); }, 3, 1);
        }
        return total;
    };
    // First the shader's thread shape (words or whole rows per thread), then shader vs copies.
    double shader_time[2] = {0, 0};
    for (bool rows : {false, true}) {
        dev.set_byte_paths({BytePath::Shader, BytePath::Shader, rows});
        shader_time[rows] =
            time(true, record_row_copy_shader) + time(false, record_row_copy_shader);
    }
    paths.whole_rows = shader_time[1] < shader_time[0];
    dev.set_byte_paths({BytePath::Shader, BytePath::Shader, paths.whole_rows});
    for (bool gather : {false, true}) {
        BytePath& p = gather ? paths.gather : paths.scatter;
        if (p != BytePath::Auto) continue;
        const double shader = time(gather, record_row_copy_shader);
        const double copies = time(gather, record_row_copy_commands);
        p = copies < shader ? BytePath::CopyCommands : BytePath::Shader;
    }
    dev.set_byte_paths(paths);
}

PageLayout resolve_page_layout(Device& dev) {
    if (dev.page_layout() != PageLayout::Auto) return dev.page_layout();
    if (!GpuTimer::supported(dev)) {
        dev.set_page_layout(PageLayout::TokenMajor);
        return PageLayout::TokenMajor;
    }
    // A decode step: 16 sequences write one token each (8 heads x 256 bytes, the heads adjacent
    // in the (batch, heads, 1, dim) tensor) to slots spread over 64 pages, on the byte path the
    // device uses for scatter. Timed head-major and token-major in alternation, a few runs
    // each, the smaller median wins (ties: token-major, the NHD layout runtimes expect). A few
    // milliseconds on lavapipe.
    constexpr uint32_t kHeads = 8, kDim = 128, kBlock = 16, kBlocks = 64, kSeqs = 16;
    std::vector<RowEntry> entries;
    for (uint32_t b = 0; b < kSeqs; ++b)
        entries.push_back({b * kHeads, ((b * 37) % kBlocks) * kBlock + (b * 5) % kBlock});
    auto tensor = Buffer::create(dev, uint64_t(kSeqs) * kHeads * kDim * 2, MemoryKind::Tensor);
    std::shared_ptr<DevicePageStore> stores[2];
    for (PageLayout l : {PageLayout::HeadMajor, PageLayout::TokenMajor}) {
        PageFormat f{1, kHeads, kDim, kDim, kBlock, DType::F16};
        f.layout = l;
        stores[l == PageLayout::TokenMajor] = DevicePageStore::create(dev, f, kBlocks, 0);
    }
    GpuTimer timer(dev);
    std::vector<double> times[2];
    for (int round = 0; round < 3; ++round)
        for (int l = 0; l < 2; ++l) {
            RowCopy op{tensor.get(), entries, kHeads, kDim * 2, 1, 0, false};
            times[l].push_back(timer.median([&] { record_row_copy(dev, *stores[l], op); }, 3, 1));
        }
    for (auto& t : times)
        std::sort(t.begin(), t.end());
    const PageLayout l = times[0][1] < times[1][1] ? PageLayout::HeadMajor : PageLayout::TokenMajor;
    dev.set_page_layout(l);
    return l;
}

}  // namespace pagedkv::detail
