#include "pagedkv/block_pool.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "cache/manager/access.hpp"
#include "cache/manager/pool_state.hpp"
#include "pagedkv/error.hpp"
#include "shaders/kernels/row_copy.hpp"
#include "shaders/store/host_page_store.hpp"
#include "shaders/store/page_store.hpp"
#include "shaders/vulkan/batch.hpp"

namespace pagedkv {

namespace detail {

PoolState::PoolState(std::shared_ptr<Device> dev, const PoolConfig& cfg)
    : device(std::move(dev)),
      config(cfg),
      format(pool_shape(cfg).format()),
      allocator(cfg.num_blocks) {
    pages = DevicePageStore::create(*device, format, cfg.num_blocks, cfg.max_slab_bytes);
    if (cfg.num_host_blocks) {
        host_allocator = std::make_unique<BlockAllocator>(cfg.num_host_blocks);
        host_pages =
            HostPageStore::create(*device, format, cfg.num_host_blocks, cfg.max_slab_bytes);
    }
}

}  // namespace detail

namespace {

PoolConfig checked(PoolConfig c, const detail::Device& dev) {
    if (c.v_head_dim == 0) c.v_head_dim = c.head_dim;
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
    const uint64_t total = layout.block_bytes() * c.num_blocks;  // no overflow: checked above
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
    // One lock from the check to the end: another thread's begin_recording() in between would
    // capture the slab table upload and the byte-path timing, which must be submitted here.
    std::lock_guard lock(detail::Access::device(ctx).mutex());
    if (detail::Access::device(ctx).batches().recording_external())
        throw Error(ErrorCode::InvalidArgument,
                    "BlockPool: cannot be made while recording into the caller's command "
                    "buffer (it measures the device with its own submits); make pools "
                    "before Context::begin_recording()");
    PoolConfig c = checked(config, detail::Access::device(ctx));
    detail::resolve_byte_paths(detail::Access::device(ctx));
    // Measured after the byte paths: it times the scatter path the pool will use.
    if (c.layout == PageLayout::Auto)
        c.layout = detail::resolve_page_layout(detail::Access::device(ctx));
    state_ = std::make_shared<detail::PoolState>(detail::Access::device_ptr(ctx), c);
    state_->pool = this;
}

BlockPool::~BlockPool() {
    if (!state_) return;
    state_->device->synchronize_quietly();
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
    s.total_bytes = state_->pages->bytes();
    s.num_slabs = state_->pages->slabs().size();
    if (state_->host_allocator) {
        s.host_blocks = state_->host_allocator->num_blocks();
        s.used_host_blocks = state_->host_allocator->counters().used_blocks;
        s.host_bytes = state_->host_pages->bytes();
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
    return problem;
}
bool BlockPool::validate() const {
    return check().empty();
}

}  // namespace pagedkv
