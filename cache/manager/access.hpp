// Access: the library's way into the public classes' internals. The public headers keep their
// state private and name this struct a friend instead of offering detail:: accessors; only code
// inside the library (and the tests, through pagedkv_internal) includes this header.
#pragma once

#include <memory>
#include <vector>

#include "pagedkv/block_pool.hpp"
#include "pagedkv/context.hpp"
#include "pagedkv/kv_manager.hpp"
#include "pagedkv/paged_kv_cache.hpp"
#include "pagedkv/tensor.hpp"

namespace pagedkv::detail {

struct Access {
    static PoolState& pool(const BlockPool& p) noexcept { return *p.state_; }
    static const std::shared_ptr<PoolState>& shared_pool(const BlockPool& p) noexcept {
        return p.state_;
    }
    static CacheState& cache(const PagedKVCache& c) noexcept { return *c.state_; }
    static ManagerState& manager(const KVManager& m) noexcept { return *m.state_; }
    // The step's state, or null for an empty (moved-from) step.
    static StepState* step(const Step& s) noexcept { return s.state_.get(); }

    static Device& device(const Context& c) noexcept { return *c.device_; }
    static const std::shared_ptr<Device>& device_ptr(const Context& c) noexcept {
        return c.device_;
    }
    static Device& device(const Tensor& t) noexcept { return *t.device_; }
    static const std::shared_ptr<Device>& device_ptr(const Tensor& t) noexcept { return t.device_; }
    static Buffer& buffer(const Tensor& t) noexcept { return *t.buffer_; }
    // An uninitialised tensor on a device (Tensor::empty without a Context at hand).
    static Tensor empty_tensor(const std::shared_ptr<Device>& device, std::vector<int64_t> shape,
                               DType dtype) {
        return Tensor::empty_on(device, std::move(shape), dtype);
    }
};

}  // namespace pagedkv::detail
