#include "pagedkv/block_pool.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "cache/manager/access.hpp"
#include "cache/manager/pool_state.hpp"
#include "pagedkv/error.hpp"
#include "shaders/kernels/row_copy.hpp"
#include "shaders/store/host_page_store.hpp"
#include "shaders/store/page_store.hpp"
#include "shaders/vulkan/batch.hpp"

namespace pagedkv {

namespace detail {

PoolState::PoolState(std::vector<std::shared_ptr<Device>> devices, const PoolConfig& cfg)
    : device(devices.at(0)),
      config(cfg),
      groups(LayerGroups::make(cfg.num_layers, cfg.layer_windows)),
      format(pool_shape(cfg).format()),
      allocator(cfg.num_blocks) {
    if (cfg.num_host_blocks) host_allocator = std::make_unique<BlockAllocator>(cfg.num_host_blocks);
    const uint32_t heads = format.num_kv_heads / uint32_t(devices.size());
    for (size_t d = 0; d < devices.size(); ++d) {
        Shard s;
        s.device = std::move(devices[d]);
        s.format = format;
        s.format.num_kv_heads = heads;
        s.first_head = uint32_t(d) * heads;
        s.pages = DevicePageStore::create(*s.device, s.format, cfg.num_blocks, cfg.max_slab_bytes);
        if (cfg.num_host_blocks)
            s.host_pages =
                HostPageStore::create(*s.device, s.format, cfg.num_host_blocks, cfg.max_slab_bytes);
        shards.push_back(std::move(s));
    }
}

}  // namespace detail

namespace {

PoolConfig checked(PoolConfig c, const detail::Device& dev, uint32_t num_devices = 1) {
    if (c.v_head_dim == 0) c.v_head_dim = c.head_dim;
    if (const auto problem = check_layer_windows(c.num_layers, c.layer_windows))
        throw Error(ErrorCode::InvalidArgument, "BlockPool: " + *problem);
    // Every layer full attention is the plain layout.
    if (std::all_of(c.layer_windows.begin(), c.layer_windows.end(),
                    [](uint32_t w) { return w == 0; }))
        c.layer_windows.clear();
    if (!known_layout(c.layout))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("BlockPool: unknown page layout {} (0 head_major, 1 token_major, "
                                "2 auto)",
                                static_cast<uint32_t>(c.layout)));
    // The same checks as a snapshot's layout (one function for both): dimensions, dtype, page
    // slots within 32 bits, block and pool bytes within 64 bits, a slab of at least one block.
    // (Auto is resolved after these checks; every layout has the same sizes.)
    PoolShape layout = detail::pool_shape(c);
    if (layout.layout == PageLayout::Auto) layout.layout = PageLayout::HeadMajor;
    if (const auto problem = check_pool_shape(layout))
        throw Error(ErrorCode::InvalidArgument, "BlockPool: " + problem->what);
    if (!c.compute_dtype) c.compute_dtype = is_quantized(c.dtype) ? DType::F16 : c.dtype;
    if (!is_float_dtype(*c.compute_dtype))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("BlockPool: compute_dtype {} is not f32, f16 or bf16",
                                to_string(*c.compute_dtype)));
    // Odd rows of 16-bit elements, in the pages or in what gathers convert them to.
    const bool odd_rows = (dtype_size(c.dtype) == 2 || dtype_size(*c.compute_dtype) == 2) &&
                          ((c.head_dim % 2) != 0 || (c.v_head_dim % 2) != 0);
    if (odd_rows && !dev.has_16bit_storage())
        throw Error(ErrorCode::Unsupported,
                    fmt::format("BlockPool: {}-element rows of {} (compute dtype {}) need "
                                "storageBuffer16BitAccess and shaderInt16, which this device "
                                "lacks or did not enable",
                                c.head_dim % 2 != 0 ? c.head_dim : c.v_head_dim, to_string(c.dtype),
                                to_string(*c.compute_dtype)));
    // Refused here, not at the first write: some drivers (lavapipe) hand out address space
    // for far more memory than exists.
    // The host tier's blocks are 32-bit ids too (block * block_size slots are not needed:
    // kernels never address host pages by slot).
    if (c.num_host_blocks > uint64_t(UINT32_MAX) ||
        c.num_host_blocks > UINT64_MAX / layout.block_bytes())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("BlockPool: num_host_blocks {} is too large (at most {} blocks "
                                "of {} bytes)",
                                c.num_host_blocks,
                                std::min<uint64_t>(UINT32_MAX, UINT64_MAX / layout.block_bytes()),
                                layout.block_bytes()));
    // Each device holds its share of the heads.
    const uint64_t total =
        layout.block_bytes() / num_devices * c.num_blocks;  // no overflow: checked above
    const uint64_t heap = dev.device_local_heap_bytes();
    if (total > heap)
        throw Error(ErrorCode::OutOfMemory,
                    fmt::format("BlockPool: {} blocks of {} bytes need {} bytes ({:.1f} GiB), more "
                                "than the device's memory heap of {} bytes ({:.1f} GiB)",
                                c.num_blocks, layout.block_bytes(), total,
                                double(total) / double(1ull << 30), heap,
                                double(heap) / double(1ull << 30)));
    return c;
}

}  // namespace

BlockPool::BlockPool(Context& ctx, PoolConfig config) {
    Context* const one[] = {&ctx};
    init(one, std::move(config));
}

BlockPool::BlockPool(std::span<Context* const> devices, PoolConfig config) {
    init(devices, std::move(config));
}

void BlockPool::init(std::span<Context* const> contexts, PoolConfig config) {
    if (contexts.empty())
        throw Error(ErrorCode::InvalidArgument, "BlockPool: no devices given (one or more)");
    std::vector<std::shared_ptr<detail::Device>> devices;
    for (size_t i = 0; i < contexts.size(); ++i) {
        if (!contexts[i])
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("BlockPool: device {} is a null Context", i));
        const auto& d = detail::Access::device_ptr(*contexts[i]);
        if (!d)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("BlockPool: device {} is a moved-from Context", i));
        for (size_t j = 0; j < devices.size(); ++j)
            if (devices[j] == d)
                throw Error(ErrorCode::InvalidArgument,
                            fmt::format("BlockPool: devices {} and {} are the same Context (each "
                                        "device holds its own share of the heads)",
                                        j, i));
        devices.push_back(d);
    }
    const auto n = uint32_t(devices.size());
    if (n > 1 && (config.num_kv_heads == 0 || config.num_kv_heads % n != 0))
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("BlockPool: num_kv_heads {} cannot be split evenly over {} devices",
                                config.num_kv_heads, n));
    // One lock per device from the checks to the end: another thread's begin_recording() in
    // between would capture the slab table upload and the byte-path timing, which must be
    // submitted here.
    std::vector<std::unique_lock<std::recursive_mutex>> locks;
    for (const auto& d : devices) {
        locks.emplace_back(d->mutex());
        if (d->batches().recording_external())
            throw Error(ErrorCode::InvalidArgument,
                        "BlockPool: cannot be made while recording into the caller's command "
                        "buffer (it measures the device with its own submits); make pools "
                        "before Context::begin_recording()");
    }
    PoolConfig c = config;
    for (const auto& d : devices)
        c = checked(config, *d, n);
    for (const auto& d : devices)
        detail::resolve_byte_paths(*d);
    // Measured after the byte paths: it times the scatter path the pool will use. One layout
    // for every device (the first device's).
    if (c.layout == PageLayout::Auto) c.layout = detail::resolve_page_layout(*devices[0]);
    state_ = std::make_shared<detail::PoolState>(std::move(devices), c);
    state_->pool = this;
}

uint32_t BlockPool::num_devices() const noexcept {
    return uint32_t(state_->shards.size());
}

BlockPool::~BlockPool() {
    if (!state_) return;
    for (const auto& s : state_->shards)
        s.device->synchronize_quietly();
    // Caches still made over this pool keep its state (and pages) until they go.
    std::lock_guard lock(state_->device->mutex());
    state_->pool = nullptr;
}

const PoolConfig& BlockPool::config() const noexcept {
    return state_->config;
}

PoolStats BlockPool::stats() const {
    std::lock_guard lock(state_->device->mutex());
    const AllocatorCounters& c = state_->allocator.counters();
    PoolStats s;
    static_cast<BlockCounts&>(s) = c;
    s.pages_copied = state_->pages_copied;
    s.block_bytes = state_->format.block_bytes();
    for (const auto& shard : state_->shards) {
        s.total_bytes += shard.pages->bytes();
        s.num_slabs += shard.pages->slabs().size();
        if (shard.host_pages) s.host_bytes += shard.host_pages->bytes();
    }
    if (state_->host_allocator) {
        s.host_blocks = state_->host_allocator->num_blocks();
        s.used_host_blocks = state_->host_allocator->counters().used_blocks;
    }
    s.pages_swapped_out = state_->pages_swapped_out;
    s.pages_swapped_in = state_->pages_swapped_in;
    return s;
}

std::string BlockPool::check() const {
    std::lock_guard lock(state_->device->mutex());
    std::string problem = state_->allocator.check();
    if (problem.empty() && state_->prefix) problem = state_->prefix->check();
    if (problem.empty() && state_->host_allocator) {
        problem = state_->host_allocator->check();
        if (!problem.empty()) problem = "host tier: " + problem;
    }
    if (problem.empty())
        problem = state_->links.check(state_->allocator, state_->host_allocator.get());
    if (problem.empty() && state_->host_prefix) problem = state_->host_prefix->check();
    return problem;
}
bool BlockPool::validate() const {
    return check().empty();
}

}  // namespace pagedkv
