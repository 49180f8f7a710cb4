#include "pagedkv/block_pool.hpp"

#include <fmt/format.h>

#include "cache/pool_state.hpp"
#include "pagedkv/error.hpp"
#include "shaders/batch.hpp"
#include "shaders/row_copy.hpp"

namespace pagedkv {

namespace detail {

PoolState::PoolState(std::shared_ptr<Device> dev, const PoolConfig& cfg, const PageLayout& l)
    : device(std::move(dev)), config(cfg), layout(l), allocator(cfg.num_blocks) {
    pages = PageStorage::create(*device, layout, cfg.num_blocks, cfg.max_slab_bytes);
}

}  // namespace detail

namespace {

PoolConfig checked(PoolConfig c, const detail::Device& dev) {
    auto bad = [](const std::string& m) { return Error(ErrorCode::InvalidArgument, m); };
    if (c.v_head_dim == 0) c.v_head_dim = c.head_dim;
    if (c.num_layers == 0) throw bad("BlockPool: num_layers must be at least 1");
    if (c.num_kv_heads == 0) throw bad("BlockPool: num_kv_heads must be at least 1");
    if (c.head_dim == 0) throw bad("BlockPool: head_dim must be at least 1");
    if (c.block_size == 0) throw bad("BlockPool: block_size must be at least 1");
    if (c.num_blocks == 0) throw bad("BlockPool: num_blocks must be at least 1");
    // Page slots are encoded as block * block_size + slot in 32 bits, with ~0u reserved.
    if (c.num_blocks * c.block_size >= 0xFFFFFFFFull)
        throw bad(fmt::format("BlockPool: num_blocks {} x block_size {} exceeds 2^32 slots",
                              c.num_blocks, c.block_size));
    const bool odd_rows =
        c.dtype != DType::F32 && ((c.head_dim % 2) != 0 || (c.v_head_dim % 2) != 0);
    if (odd_rows && !dev.has_16bit_storage())
        throw Error(ErrorCode::Unsupported,
                    fmt::format("BlockPool: {}-element rows of {} need storageBuffer16BitAccess "
                                "and shaderInt16, which this device lacks or did not enable",
                                c.head_dim, to_string(c.dtype)));
    return c;
}

}  // namespace

BlockPool::BlockPool(Context& ctx, PoolConfig config) {
    // One lock from the check to the end: another thread's begin_recording() in between would
    // capture the slab table upload and the byte-path timing, which must be submitted here.
    std::lock_guard lock(ctx.device().mutex());
    if (ctx.device().batches().recording_external())
        throw Error(ErrorCode::InvalidArgument,
                    "BlockPool: cannot be made while recording into the caller's command "
                    "buffer (it measures the device with its own submits); make pools "
                    "before Context::begin_recording()");
    PoolConfig c = checked(config, ctx.device());
    detail::PageLayout layout{c.num_layers, c.num_kv_heads, c.head_dim,
                              c.v_head_dim, c.block_size,   c.dtype};
    state_ = std::make_unique<detail::PoolState>(ctx.device_ptr(), c, layout);
    detail::resolve_byte_paths(ctx.device());
}

BlockPool::~BlockPool() {
    if (state_) state_->device->synchronize_quietly();
}

const PoolConfig& BlockPool::config() const noexcept {
    return state_->config;
}

PoolStats BlockPool::stats() const {
    std::lock_guard lock(state_->device->mutex());
    const AllocatorCounters& c = state_->allocator.counters();
    PoolStats s;
    s.num_blocks = c.num_blocks;
    s.used_blocks = c.used_blocks;
    s.free_blocks = c.free_blocks;
    s.peak_used_blocks = c.peak_used_blocks;
    s.shared_blocks = c.shared_blocks;
    s.pages_copied = state_->pages_copied;
    s.block_bytes = state_->layout.block_bytes();
    s.total_bytes = state_->pages->bytes();
    s.num_slabs = state_->pages->slabs().size();
    return s;
}

std::string BlockPool::check() const {
    std::lock_guard lock(state_->device->mutex());
    return state_->allocator.check();
}
bool BlockPool::validate() const {
    return check().empty();
}

}  // namespace pagedkv
