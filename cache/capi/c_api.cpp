// The C interface (include/pagedkv/pagedkv.h) over the C++ API: handles own C++ objects, and
// every entry point turns exceptions into a status and a per-thread message.
#include "pagedkv/pagedkv.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "pagedkv/pagedkv.hpp"

using pagedkv::Error;
using pagedkv::ErrorCode;

// The handles. Members are declared so that what a handle keeps alive outlives what uses it.
struct pagedkv_context {
    pagedkv::Context ctx;
    std::string name;
    std::vector<std::string> messages;
    std::vector<const char*> message_ptrs;
};

struct pagedkv_pool {
    std::shared_ptr<pagedkv::BlockPool> pool;
};

struct pagedkv_cache {
    std::shared_ptr<pagedkv::BlockPool> pool;  // the pool outlives the cache drawing from it
    std::unique_ptr<pagedkv::PagedKVCache> cache;
};

struct pagedkv_tensor {
    pagedkv::Tensor tensor;
};

struct pagedkv_paged_view {
    pagedkv::PagedView view;
};

struct pagedkv_manager {
    std::shared_ptr<pagedkv::BlockPool> pool;  // the pool outlives the manager drawing from it
    std::unique_ptr<pagedkv::KVManager> manager;
};

struct pagedkv_step {
    pagedkv::Step step;
};

namespace {

// The status of a C++ error code; a new ErrorCode is a compile error here (-Wswitch, -Werror)
// until the C enum mirrors it.
pagedkv_status status_of(ErrorCode code) noexcept {
    switch (code) {
        case ErrorCode::InvalidArgument:
            return PAGEDKV_ERROR_INVALID_ARGUMENT;
        case ErrorCode::OutOfBlocks:
            return PAGEDKV_ERROR_OUT_OF_BLOCKS;
        case ErrorCode::CapacityExceeded:
            return PAGEDKV_ERROR_CAPACITY_EXCEEDED;
        case ErrorCode::CorruptSnapshot:
            return PAGEDKV_ERROR_CORRUPT_SNAPSHOT;
        case ErrorCode::Vulkan:
            return PAGEDKV_ERROR_VULKAN;
        case ErrorCode::Unsupported:
            return PAGEDKV_ERROR_UNSUPPORTED;
        case ErrorCode::NotImplemented:
            return PAGEDKV_ERROR_NOT_IMPLEMENTED;
        case ErrorCode::OutOfMemory:
            return PAGEDKV_ERROR_OUT_OF_MEMORY;
    }
    return PAGEDKV_ERROR_INTERNAL;
}

// The documented "ErrorCode value + 1" numbering.
static_assert(PAGEDKV_ERROR_INVALID_ARGUMENT == int(ErrorCode::InvalidArgument) + 1);
static_assert(PAGEDKV_ERROR_OUT_OF_BLOCKS == int(ErrorCode::OutOfBlocks) + 1);
static_assert(PAGEDKV_ERROR_CAPACITY_EXCEEDED == int(ErrorCode::CapacityExceeded) + 1);
static_assert(PAGEDKV_ERROR_CORRUPT_SNAPSHOT == int(ErrorCode::CorruptSnapshot) + 1);
static_assert(PAGEDKV_ERROR_VULKAN == int(ErrorCode::Vulkan) + 1);
static_assert(PAGEDKV_ERROR_UNSUPPORTED == int(ErrorCode::Unsupported) + 1);
static_assert(PAGEDKV_ERROR_NOT_IMPLEMENTED == int(ErrorCode::NotImplemented) + 1);
static_assert(PAGEDKV_ERROR_OUT_OF_MEMORY == int(ErrorCode::OutOfMemory) + 1);

// The calling thread's last error. When even the message cannot be stored, `fallback` names
// what happened instead.
struct LastError {
    std::string message;
    const char* fallback = nullptr;
    int32_t vk_result = 0;
};
thread_local LastError last_error;

pagedkv_status fail(pagedkv_status status, const char* function, const char* what,
                    int32_t vk_result = 0) noexcept {
    last_error.vk_result = vk_result;
    try {
        last_error.message = fmt::format("{}: {}", function, what);
    } catch (...) {
        last_error.message.clear();
        last_error.fallback = "out of host memory while recording an error message";
    }
    return status;
}

// Runs one entry point's body: the only place exceptions are caught, so none reaches C.
template <class Body>
pagedkv_status guarded(const char* function, Body&& body) noexcept {
    last_error.message.clear();
    last_error.fallback = nullptr;
    last_error.vk_result = 0;
    try {
        body();
        return PAGEDKV_OK;
    } catch (const Error& e) {
        return fail(status_of(e.code()), function, e.what(), e.vk_result());
    } catch (const std::bad_alloc&) {
        return fail(PAGEDKV_ERROR_OUT_OF_MEMORY, function, "out of host memory");
    } catch (const std::exception& e) {
        return fail(PAGEDKV_ERROR_INTERNAL, function, e.what());
    } catch (...) {
        return fail(PAGEDKV_ERROR_INTERNAL, function, "unknown exception");
    }
}

// A required pointer argument; NULL is an InvalidArgument naming it.
template <class T>
T& need(T* p, const char* name) {
    if (!p) throw Error(ErrorCode::InvalidArgument, fmt::format("{} is NULL", name));
    return *p;
}

// The value of an enum from C. C may pass any value of the underlying type, but C++ may not
// load one outside the enumerators' range (UBSan rightly flags it), so the bytes are read.
template <class E>
std::underlying_type_t<E> raw(const E& e) noexcept {
    std::underlying_type_t<E> v;
    std::memcpy(&v, &e, sizeof v);
    return v;
}

pagedkv::DType dtype_of(const pagedkv_dtype& d) {
    switch (raw(d)) {
        case PAGEDKV_DTYPE_F32:
            return pagedkv::DType::F32;
        case PAGEDKV_DTYPE_F16:
            return pagedkv::DType::F16;
        case PAGEDKV_DTYPE_BF16:
            return pagedkv::DType::BF16;
        case PAGEDKV_DTYPE_INT8:
            return pagedkv::DType::Int8;
        case PAGEDKV_DTYPE_FP8E4M3:
            return pagedkv::DType::FP8E4M3;
    }
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("dtype {} is not a pagedkv_dtype (0: F32, 1: F16, 2: BF16, 3: INT8, "
                            "4: FP8E4M3)",
                            raw(d)));
}

pagedkv::PageLayout layout_of(const pagedkv_page_layout& l) {
    switch (raw(l)) {
        case PAGEDKV_PAGE_LAYOUT_HEAD_MAJOR:
            return pagedkv::PageLayout::HeadMajor;
        case PAGEDKV_PAGE_LAYOUT_TOKEN_MAJOR:
            return pagedkv::PageLayout::TokenMajor;
        case PAGEDKV_PAGE_LAYOUT_AUTO:
            return pagedkv::PageLayout::Auto;
    }
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("layout {} is not a pagedkv_page_layout (0: HEAD_MAJOR, 1: "
                            "TOKEN_MAJOR, 2: AUTO)",
                            raw(l)));
}

pagedkv_page_layout c_layout(pagedkv::PageLayout l) noexcept {
    switch (l) {
        case pagedkv::PageLayout::HeadMajor:
            return PAGEDKV_PAGE_LAYOUT_HEAD_MAJOR;
        case pagedkv::PageLayout::TokenMajor:
            return PAGEDKV_PAGE_LAYOUT_TOKEN_MAJOR;
        case pagedkv::PageLayout::Auto:
            return PAGEDKV_PAGE_LAYOUT_AUTO;
    }
    return PAGEDKV_PAGE_LAYOUT_AUTO;
}

pagedkv_dtype c_dtype(pagedkv::DType d) noexcept {
    switch (d) {
        case pagedkv::DType::F32:
            return PAGEDKV_DTYPE_F32;
        case pagedkv::DType::F16:
            return PAGEDKV_DTYPE_F16;
        case pagedkv::DType::BF16:
            return PAGEDKV_DTYPE_BF16;
        case pagedkv::DType::Int8:
            return PAGEDKV_DTYPE_INT8;
        case pagedkv::DType::FP8E4M3:
            return PAGEDKV_DTYPE_FP8E4M3;
    }
    return PAGEDKV_DTYPE_F32;
}

// The position of an update whose key is `key`. Counts are checked against the key's batch
// and seq_len before anything is copied: a huge count must not allocate before its error.
pagedkv::CachePosition position_of(const pagedkv_cache_position* p, const pagedkv::Tensor& key) {
    if (!p) return {};
    const auto& shape = key.shape();
    const bool known = key.defined() && shape.size() == 4;
    auto expect = [&](size_t count, size_t dim, const char* what, const char* of) {
        if (known && count != uint64_t(shape[dim]))
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("update: cache_position has {} {}, {} is {}", count, what, of,
                                    shape[dim]));
    };
    auto values = [&](size_t n) {
        if (n > 0 && !p->positions)
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("position: {} positions announced but positions is NULL", n));
        return std::vector<int64_t>(p->positions, p->positions + n);
    };
    switch (raw(p->kind)) {
        case PAGEDKV_POSITION_APPEND:
            return {};
        case PAGEDKV_POSITION_SCALAR:
            return pagedkv::CachePosition(p->scalar);
        case PAGEDKV_POSITION_VECTOR:
            expect(p->columns, 2, "entries", "seq_len");
            return pagedkv::CachePosition(values(p->columns));
        case PAGEDKV_POSITION_MATRIX: {
            expect(p->rows, 0, "rows", "batch");
            expect(p->columns, 2, "columns", "seq_len");
            if (p->columns != 0 && p->rows > SIZE_MAX / p->columns)
                throw Error(
                    ErrorCode::InvalidArgument,
                    fmt::format("position: {} x {} positions overflow", p->rows, p->columns));
            const std::vector<int64_t> flat = values(p->rows * p->columns);
            std::vector<std::vector<int64_t>> m(p->rows);
            for (size_t r = 0; r < p->rows; ++r)
                m[r].assign(flat.begin() + std::ptrdiff_t(r * p->columns),
                            flat.begin() + std::ptrdiff_t((r + 1) * p->columns));
            return pagedkv::CachePosition(std::move(m));
        }
    }
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("position: kind {} is not a pagedkv_position_kind", raw(p->kind)));
}

// A span over count elements that may be NULL only when count is 0.
template <class T>
std::span<const T> span_of(const T* data, size_t count, const char* name) {
    if (count > 0 && !data)
        throw Error(ErrorCode::InvalidArgument, fmt::format("{} is NULL, count {}", name, count));
    return count == 0 ? std::span<const T>() : std::span<const T>(data, count);
}

// The C description of a view; its pointers point into v.
void fill_view_info(const pagedkv::PagedView& v, pagedkv_paged_view_info& info) {
    pagedkv_paged_view_info i{};
    i.layer = v.layer;
    i.batch = v.batch;
    i.kv_heads = v.kv_heads;
    i.head_dim = v.head_dim;
    i.v_head_dim = v.v_head_dim;
    i.block_size = v.block_size;
    i.dtype = c_dtype(v.dtype);
    i.num_slabs = v.slabs.size();
    i.slabs = v.slabs.data();
    i.slab_addresses = v.slab_addresses.data();
    i.slab_table = v.slab_table;
    i.slab_shift = v.slab_shift;
    i.block_bytes = v.block_bytes;
    i.k_offset = v.k_offset;
    i.v_offset = v.v_offset;
    i.scale_bytes = v.scale_bytes;
    i.k_scales_offset = v.k_scales_offset;
    i.v_scales_offset = v.v_scales_offset;
    i.table = v.table;
    i.indptr_offset = v.indptr_offset;
    i.indices_offset = v.indices_offset;
    i.last_page_len_offset = v.last_page_len_offset;
    i.first_slot_offset = v.first_slot_offset;
    i.indptr = v.indptr;
    i.indices = v.indices;
    i.last_page_len = v.last_page_len;
    i.first_slot = v.first_slot;
    i.num_indices = v.host_indices.size();
    i.host_indptr = v.host_indptr.data();
    i.host_indices = v.host_indices.data();
    i.host_last_page_len = v.host_last_page_len.data();
    i.host_first_slot = v.host_first_slot.data();
    i.lengths = v.lengths.data();
    i.num_tokens = v.num_tokens;
    i.slot_mapping_offset = v.slot_mapping_offset;
    i.slot_mapping = v.slot_mapping;
    i.host_slot_mapping = v.host_slot_mapping.data();
    info = i;
}

template <class Cache, class... Args>
void make_cache(pagedkv_pool* pool, pagedkv_cache** out, Args... args) {
    pagedkv_pool& p = need(pool, "pool");
    need(out, "out_cache");
    auto handle = std::make_unique<pagedkv_cache>();
    handle->pool = p.pool;
    handle->cache = std::make_unique<Cache>(*p.pool, args...);
    *out = handle.release();
}

}  // namespace

extern "C" {

const char* pagedkv_status_name(pagedkv_status status) noexcept {
    switch (raw(status)) {
        case PAGEDKV_OK:
            return "PAGEDKV_OK";
        case PAGEDKV_ERROR_INVALID_ARGUMENT:
            return "PAGEDKV_ERROR_INVALID_ARGUMENT";
        case PAGEDKV_ERROR_OUT_OF_BLOCKS:
            return "PAGEDKV_ERROR_OUT_OF_BLOCKS";
        case PAGEDKV_ERROR_CAPACITY_EXCEEDED:
            return "PAGEDKV_ERROR_CAPACITY_EXCEEDED";
        case PAGEDKV_ERROR_CORRUPT_SNAPSHOT:
            return "PAGEDKV_ERROR_CORRUPT_SNAPSHOT";
        case PAGEDKV_ERROR_VULKAN:
            return "PAGEDKV_ERROR_VULKAN";
        case PAGEDKV_ERROR_UNSUPPORTED:
            return "PAGEDKV_ERROR_UNSUPPORTED";
        case PAGEDKV_ERROR_NOT_IMPLEMENTED:
            return "PAGEDKV_ERROR_NOT_IMPLEMENTED";
        case PAGEDKV_ERROR_OUT_OF_MEMORY:
            return "PAGEDKV_ERROR_OUT_OF_MEMORY";
        case PAGEDKV_ERROR_INTERNAL:
            return "PAGEDKV_ERROR_INTERNAL";
    }
    return "PAGEDKV_ERROR_UNKNOWN";
}

const char* pagedkv_last_error_message(void) noexcept {
    return last_error.fallback ? last_error.fallback : last_error.message.c_str();
}

int32_t pagedkv_last_vk_result(void) noexcept {
    return last_error.vk_result;
}

const char* pagedkv_version(void) noexcept {
    return PAGEDKV_VERSION;
}

// ---- context ----

pagedkv_status pagedkv_context_create(int32_t device_index, int enable_validation,
                                      pagedkv_context** out_context) noexcept {
    return guarded("pagedkv_context_create", [&] {
        need(out_context, "out_context");
        pagedkv::ContextOptions opts;
        opts.device_index = device_index;
        opts.enable_validation = enable_validation != 0;
        auto handle = std::unique_ptr<pagedkv_context>(
            new pagedkv_context{pagedkv::Context::create(opts), {}, {}, {}});
        handle->name = handle->ctx.device_name();
        *out_context = handle.release();
    });
}

pagedkv_status pagedkv_context_adopt(const pagedkv_external_vulkan* external,
                                     pagedkv_context** out_context) noexcept {
    return guarded("pagedkv_context_adopt", [&] {
        const pagedkv_external_vulkan& e = need(external, "external");
        need(out_context, "out_context");
        pagedkv::ExternalVulkan ext;
        ext.instance = e.instance;
        ext.physical_device = e.physical_device;
        ext.device = e.device;
        ext.queue = e.queue;
        ext.queue_family = e.queue_family;
        ext.int16_storage = e.int16_storage != 0;
        ext.get_instance_proc_addr = e.get_instance_proc_addr;
        auto handle = std::unique_ptr<pagedkv_context>(
            new pagedkv_context{pagedkv::Context::adopt(ext), {}, {}, {}});
        handle->name = handle->ctx.device_name();
        *out_context = handle.release();
    });
}

pagedkv_status pagedkv_context_begin_recording(pagedkv_context* context,
                                               VkCommandBuffer cmd) noexcept {
    return guarded("pagedkv_context_begin_recording",
                   [&] { need(context, "context").ctx.begin_recording(cmd); });
}

pagedkv_status pagedkv_context_end_recording(pagedkv_context* context, uint64_t* out_id) noexcept {
    return guarded("pagedkv_context_end_recording", [&] {
        pagedkv_context& c = need(context, "context");
        need(out_id, "out_id");
        *out_id = c.ctx.end_recording();
    });
}

pagedkv_status pagedkv_context_finish_recording(pagedkv_context* context, uint64_t id) noexcept {
    return guarded("pagedkv_context_finish_recording",
                   [&] { need(context, "context").ctx.finish_recording(id); });
}

void pagedkv_context_destroy(pagedkv_context* context) noexcept {
    delete context;
}

pagedkv_status pagedkv_context_device_name(const pagedkv_context* context,
                                           const char** out_name) noexcept {
    return guarded("pagedkv_context_device_name", [&] {
        const pagedkv_context& c = need(context, "context");
        need(out_name, "out_name");
        *out_name = c.name.c_str();
    });
}

pagedkv_status pagedkv_context_synchronize(pagedkv_context* context) noexcept {
    return guarded("pagedkv_context_synchronize",
                   [&] { need(context, "context").ctx.synchronize(); });
}

pagedkv_status pagedkv_context_validation_messages(pagedkv_context* context,
                                                   const char* const** out_messages,
                                                   size_t* out_count) noexcept {
    return guarded("pagedkv_context_validation_messages", [&] {
        pagedkv_context& c = need(context, "context");
        need(out_messages, "out_messages");
        need(out_count, "out_count");
        std::vector<std::string> messages = c.ctx.validation_messages();
        std::vector<const char*> ptrs;
        ptrs.reserve(messages.size());
        for (const std::string& m : messages)
            ptrs.push_back(m.c_str());
        // Moving a vector leaves its elements where they are, so the pointers stay valid.
        c.messages = std::move(messages);
        c.message_ptrs = std::move(ptrs);
        *out_messages = c.message_ptrs.data();
        *out_count = c.message_ptrs.size();
    });
}

// ---- pool ----

void pagedkv_pool_config_init(pagedkv_pool_config* config) noexcept {
    if (!config) return;
    const pagedkv::PoolConfig d;
    *config = pagedkv_pool_config{};
    config->num_layers = d.num_layers;
    config->num_kv_heads = d.num_kv_heads;
    config->head_dim = d.head_dim;
    config->v_head_dim = d.v_head_dim;
    config->block_size = d.block_size;
    config->dtype = c_dtype(d.dtype);
    config->num_blocks = d.num_blocks;
    config->max_slab_bytes = d.max_slab_bytes;
    config->layout = c_layout(d.layout);
    config->compute_dtype = PAGEDKV_DTYPE_DEFAULT;
    config->num_host_blocks = d.num_host_blocks;
    config->layer_windows = nullptr;
    config->num_layer_windows = 0;
}

namespace {

pagedkv::PoolConfig pool_config_of(const pagedkv_pool_config& cfg) {
    pagedkv::PoolConfig pc;
    pc.num_layers = cfg.num_layers;
    pc.num_kv_heads = cfg.num_kv_heads;
    pc.head_dim = cfg.head_dim;
    pc.v_head_dim = cfg.v_head_dim;
    pc.block_size = cfg.block_size;
    pc.dtype = dtype_of(cfg.dtype);
    pc.num_blocks = cfg.num_blocks;
    pc.max_slab_bytes = cfg.max_slab_bytes;
    pc.layout = layout_of(cfg.layout);
    if (raw(cfg.compute_dtype) != PAGEDKV_DTYPE_DEFAULT)
        pc.compute_dtype = dtype_of(cfg.compute_dtype);
    pc.num_host_blocks = cfg.num_host_blocks;
    const std::span<const uint32_t> windows =
        span_of(cfg.layer_windows, cfg.num_layer_windows, "layer_windows");
    pc.layer_windows.assign(windows.begin(), windows.end());
    return pc;
}

}  // namespace

pagedkv_status pagedkv_pool_create(pagedkv_context* context, const pagedkv_pool_config* config,
                                   pagedkv_pool** out_pool) noexcept {
    return guarded("pagedkv_pool_create", [&] {
        pagedkv_context& c = need(context, "context");
        const pagedkv_pool_config& cfg = need(config, "config");
        need(out_pool, "out_pool");
        auto handle = std::make_unique<pagedkv_pool>();
        handle->pool = std::make_shared<pagedkv::BlockPool>(c.ctx, pool_config_of(cfg));
        *out_pool = handle.release();
    });
}

pagedkv_status pagedkv_pool_create_on_devices(pagedkv_context* const* contexts, size_t num_contexts,
                                              const pagedkv_pool_config* config,
                                              pagedkv_pool** out_pool) noexcept {
    return guarded("pagedkv_pool_create_on_devices", [&] {
        need(contexts, "contexts");
        const pagedkv_pool_config& cfg = need(config, "config");
        need(out_pool, "out_pool");
        std::vector<pagedkv::Context*> list;
        for (size_t i = 0; i < num_contexts; ++i)
            list.push_back(contexts[i] ? &contexts[i]->ctx : nullptr);
        auto handle = std::make_unique<pagedkv_pool>();
        handle->pool = std::make_shared<pagedkv::BlockPool>(
            std::span<pagedkv::Context* const>(list), pool_config_of(cfg));
        *out_pool = handle.release();
    });
}

uint32_t pagedkv_pool_num_devices(const pagedkv_pool* pool) noexcept {
    return pool ? pool->pool->num_devices() : 0;
}

void pagedkv_pool_destroy(pagedkv_pool* pool) noexcept {
    delete pool;
}

pagedkv_status pagedkv_pool_get_stats(const pagedkv_pool* pool,
                                      pagedkv_pool_stats* out_stats) noexcept {
    return guarded("pagedkv_pool_get_stats", [&] {
        const pagedkv_pool& p = need(pool, "pool");
        need(out_stats, "out_stats");
        const pagedkv::PoolStats s = p.pool->stats();
        *out_stats =
            pagedkv_pool_stats{s.num_blocks,    s.used_blocks,   s.free_blocks, s.peak_used_blocks,
                               s.shared_blocks, s.pages_copied,  s.block_bytes, s.total_bytes,
                               s.num_slabs,     s.cached_blocks, s.host_blocks, s.used_host_blocks};
    });
}

pagedkv_status pagedkv_pool_layout(const pagedkv_pool* pool,
                                   pagedkv_page_layout* out_layout) noexcept {
    return guarded("pagedkv_pool_layout", [&] {
        const pagedkv_pool& p = need(pool, "pool");
        need(out_layout, "out_layout");
        *out_layout = c_layout(p.pool->config().layout);
    });
}

pagedkv_status pagedkv_pool_compute_dtype(const pagedkv_pool* pool,
                                          pagedkv_dtype* out_dtype) noexcept {
    return guarded("pagedkv_pool_compute_dtype", [&] {
        const pagedkv_pool& p = need(pool, "pool");
        need(out_dtype, "out_dtype");
        *out_dtype = c_dtype(*p.pool->config().compute_dtype);
    });
}

pagedkv_status pagedkv_pool_validate(const pagedkv_pool* pool, int* out_valid) noexcept {
    return guarded("pagedkv_pool_validate", [&] {
        const pagedkv_pool& p = need(pool, "pool");
        need(out_valid, "out_valid");
        *out_valid = p.pool->validate() ? 1 : 0;
    });
}

// ---- tensors ----

pagedkv_status pagedkv_tensor_from_host(pagedkv_context* context, const float* data, size_t count,
                                        const int64_t* shape, size_t rank, pagedkv_dtype dtype,
                                        pagedkv_tensor** out_tensor) noexcept {
    return guarded("pagedkv_tensor_from_host", [&] {
        pagedkv_context& c = need(context, "context");
        need(out_tensor, "out_tensor");
        const std::span<const float> values = span_of(data, count, "data");
        const std::span<const int64_t> dims = span_of(shape, rank, "shape");
        auto handle = std::make_unique<pagedkv_tensor>();
        handle->tensor = pagedkv::Tensor::from_host(
            c.ctx, values, std::vector<int64_t>(dims.begin(), dims.end()), dtype_of(dtype));
        *out_tensor = handle.release();
    });
}

pagedkv_status pagedkv_tensor_to_host(const pagedkv_tensor* tensor, float* out,
                                      size_t count) noexcept {
    return guarded("pagedkv_tensor_to_host", [&] {
        const pagedkv::Tensor& t = need(tensor, "tensor").tensor;
        if (count != size_t(t.numel()))
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("count is {}, the tensor holds {} elements", count, t.numel()));
        if (count > 0) need(out, "out");
        const std::vector<float> values = t.to_host();
        std::copy(values.begin(), values.end(), out);
    });
}

pagedkv_status pagedkv_tensor_shape(const pagedkv_tensor* tensor, const int64_t** out_dims,
                                    size_t* out_rank) noexcept {
    return guarded("pagedkv_tensor_shape", [&] {
        const pagedkv::Tensor& t = need(tensor, "tensor").tensor;
        need(out_dims, "out_dims");
        need(out_rank, "out_rank");
        *out_dims = t.shape().data();
        *out_rank = t.shape().size();
    });
}

pagedkv_status pagedkv_tensor_numel(const pagedkv_tensor* tensor, size_t* out_count) noexcept {
    return guarded("pagedkv_tensor_numel", [&] {
        const pagedkv::Tensor& t = need(tensor, "tensor").tensor;
        need(out_count, "out_count");
        *out_count = size_t(t.numel());
    });
}

pagedkv_status pagedkv_tensor_dtype(const pagedkv_tensor* tensor,
                                    pagedkv_dtype* out_dtype) noexcept {
    return guarded("pagedkv_tensor_dtype", [&] {
        const pagedkv::Tensor& t = need(tensor, "tensor").tensor;
        need(out_dtype, "out_dtype");
        *out_dtype = c_dtype(t.dtype());
    });
}

pagedkv_status pagedkv_tensor_vk_buffer(const pagedkv_tensor* tensor, VkBuffer* out_buffer,
                                        VkDeviceAddress* out_address) noexcept {
    return guarded("pagedkv_tensor_vk_buffer", [&] {
        const pagedkv::Tensor& t = need(tensor, "tensor").tensor;
        need(out_buffer, "out_buffer");
        need(out_address, "out_address");
        const VkBuffer b = t.vk_buffer();
        const VkDeviceAddress a = t.device_address();
        *out_buffer = b;
        *out_address = a;
    });
}

pagedkv_status pagedkv_tensor_vk_offset(const pagedkv_tensor* tensor,
                                        VkDeviceSize* out_offset) noexcept {
    return guarded("pagedkv_tensor_vk_offset", [&] {
        const pagedkv::Tensor& t = need(tensor, "tensor").tensor;
        need(out_offset, "out_offset");
        *out_offset = t.vk_offset();
    });
}

pagedkv_status pagedkv_tensor_wrap(pagedkv_context* context, VkBuffer buffer, VkDeviceSize offset,
                                   VkDeviceSize buffer_size, const int64_t* shape, size_t rank,
                                   pagedkv_dtype dtype, pagedkv_tensor** out_tensor) noexcept {
    return guarded("pagedkv_tensor_wrap", [&] {
        pagedkv_context& c = need(context, "context");
        need(out_tensor, "out_tensor");
        const std::span<const int64_t> dims = span_of(shape, rank, "shape");
        auto handle = std::make_unique<pagedkv_tensor>();
        handle->tensor = pagedkv::Tensor::wrap(c.ctx, buffer, offset,
                                               std::vector<int64_t>(dims.begin(), dims.end()),
                                               dtype_of(dtype), buffer_size);
        *out_tensor = handle.release();
    });
}

void pagedkv_tensor_destroy(pagedkv_tensor* tensor) noexcept {
    delete tensor;
}

// ---- caches ----

pagedkv_status pagedkv_cache_create_dynamic(pagedkv_pool* pool,
                                            pagedkv_cache** out_cache) noexcept {
    return guarded("pagedkv_cache_create_dynamic",
                   [&] { make_cache<pagedkv::DynamicKVCache>(pool, out_cache); });
}

pagedkv_status pagedkv_cache_create_static(pagedkv_pool* pool, uint32_t batch_size,
                                           uint32_t max_cache_len,
                                           pagedkv_cache** out_cache) noexcept {
    return guarded("pagedkv_cache_create_static", [&] {
        make_cache<pagedkv::StaticKVCache>(pool, out_cache, batch_size, max_cache_len);
    });
}

pagedkv_status pagedkv_cache_create_sliding_window(pagedkv_pool* pool, uint32_t window,
                                                   pagedkv_cache** out_cache) noexcept {
    return guarded("pagedkv_cache_create_sliding_window",
                   [&] { make_cache<pagedkv::SlidingWindowKVCache>(pool, out_cache, window); });
}

void pagedkv_cache_destroy(pagedkv_cache* cache) noexcept {
    delete cache;
}

pagedkv_status pagedkv_cache_update(pagedkv_cache* cache, const pagedkv_tensor* key,
                                    const pagedkv_tensor* value, uint32_t layer_idx,
                                    const pagedkv_cache_position* position,
                                    pagedkv_tensor** out_key, pagedkv_tensor** out_value) noexcept {
    return guarded("pagedkv_cache_update", [&] {
        pagedkv::KVCache& c = *need(cache, "cache").cache;
        const pagedkv::Tensor& k = need(key, "key").tensor;
        const pagedkv::Tensor& v = need(value, "value").tensor;
        const pagedkv::CachePosition pos = position_of(position, k);
        // Handles first: once the cache has changed, nothing may fail any more.
        auto hk = out_key ? std::make_unique<pagedkv_tensor>() : nullptr;
        auto hv = out_value ? std::make_unique<pagedkv_tensor>() : nullptr;
        auto [rk, rv] = c.update(k, v, layer_idx, pos);
        if (hk) {
            hk->tensor = std::move(rk);
            *out_key = hk.release();
        }
        if (hv) {
            hv->tensor = std::move(rv);
            *out_value = hv.release();
        }
    });
}

pagedkv_status pagedkv_cache_cached_attention(const pagedkv_cache* cache,
                                              const pagedkv_tensor* query, uint32_t layer_idx,
                                              float scale,
                                              pagedkv_tensor** out_attention) noexcept {
    return guarded("pagedkv_cache_cached_attention", [&] {
        const pagedkv::PagedKVCache& c = *need(cache, "cache").cache;
        const pagedkv_tensor& q = need(query, "query");
        need(out_attention, "out_attention");
        auto h = std::make_unique<pagedkv_tensor>();
        h->tensor = c.cached_attention(q.tensor, layer_idx, scale);
        *out_attention = h.release();
    });
}

pagedkv_status pagedkv_cache_paged_view(const pagedkv_cache* cache, uint32_t layer_idx,
                                        pagedkv_paged_view** out_view,
                                        pagedkv_paged_view_info* out_info) noexcept {
    return guarded("pagedkv_cache_paged_view", [&] {
        const pagedkv::PagedKVCache& c = *need(cache, "cache").cache;
        need(out_view, "out_view");
        pagedkv_paged_view_info& info = need(out_info, "out_info");
        auto h = std::make_unique<pagedkv_paged_view>();
        h->view = c.paged_view(layer_idx);
        fill_view_info(h->view, info);
        *out_view = h.release();
    });
}

void pagedkv_paged_view_destroy(pagedkv_paged_view* view) noexcept {
    delete view;
}

pagedkv_status pagedkv_cache_get(const pagedkv_cache* cache, uint32_t layer_idx,
                                 pagedkv_tensor** out_key, pagedkv_tensor** out_value) noexcept {
    return guarded("pagedkv_cache_get", [&] {
        const pagedkv::KVCache& c = *need(cache, "cache").cache;
        need(out_key, "out_key");
        need(out_value, "out_value");
        auto hk = std::make_unique<pagedkv_tensor>();
        auto hv = std::make_unique<pagedkv_tensor>();
        auto kv = c.get(layer_idx);
        if (!kv) {
            *out_key = nullptr;
            *out_value = nullptr;
            return;
        }
        hk->tensor = std::move(kv->first);
        hv->tensor = std::move(kv->second);
        *out_key = hk.release();
        *out_value = hv.release();
    });
}

pagedkv_status pagedkv_cache_get_seq_length(const pagedkv_cache* cache, uint32_t layer_idx,
                                            int64_t* out_length) noexcept {
    return guarded("pagedkv_cache_get_seq_length", [&] {
        const pagedkv::KVCache& c = *need(cache, "cache").cache;
        need(out_length, "out_length");
        *out_length = c.get_seq_length(layer_idx);
    });
}

pagedkv_status pagedkv_cache_batch_size(const pagedkv_cache* cache, uint32_t* out_batch) noexcept {
    return guarded("pagedkv_cache_batch_size", [&] {
        const pagedkv::KVCache& c = *need(cache, "cache").cache;
        need(out_batch, "out_batch");
        *out_batch = c.batch_size();
    });
}

pagedkv_status pagedkv_cache_seq_lengths(const pagedkv_cache* cache, uint32_t layer_idx,
                                         int64_t* out, size_t capacity) noexcept {
    return guarded("pagedkv_cache_seq_lengths", [&] {
        const pagedkv::KVCache& c = *need(cache, "cache").cache;
        const std::vector<int64_t> lengths = c.seq_lengths(layer_idx);
        if (capacity < lengths.size())
            throw Error(ErrorCode::InvalidArgument,
                        fmt::format("capacity {} is less than the batch of {} rows", capacity,
                                    lengths.size()));
        if (!lengths.empty()) need(out, "out");
        std::copy(lengths.begin(), lengths.end(), out);
    });
}

pagedkv_status pagedkv_cache_crop(pagedkv_cache* cache, int64_t max_length) noexcept {
    return guarded("pagedkv_cache_crop", [&] { need(cache, "cache").cache->crop(max_length); });
}

pagedkv_status pagedkv_cache_truncate(pagedkv_cache* cache, int64_t length) noexcept {
    return guarded("pagedkv_cache_truncate", [&] { need(cache, "cache").cache->truncate(length); });
}

pagedkv_status pagedkv_cache_reorder(pagedkv_cache* cache, const int32_t* beam_idx,
                                     size_t count) noexcept {
    return guarded("pagedkv_cache_reorder", [&] {
        pagedkv::KVCache& c = *need(cache, "cache").cache;
        c.reorder_cache(span_of(beam_idx, count, "beam_idx"));
    });
}

pagedkv_status pagedkv_cache_batch_select_indices(pagedkv_cache* cache, const int32_t* indices,
                                                  size_t count) noexcept {
    return guarded("pagedkv_cache_batch_select_indices", [&] {
        pagedkv::KVCache& c = *need(cache, "cache").cache;
        c.batch_select_indices(span_of(indices, count, "indices"));
    });
}

pagedkv_status pagedkv_cache_batch_repeat_interleave(pagedkv_cache* cache,
                                                     uint32_t repeats) noexcept {
    return guarded("pagedkv_cache_batch_repeat_interleave",
                   [&] { need(cache, "cache").cache->batch_repeat_interleave(repeats); });
}

pagedkv_status pagedkv_cache_reset(pagedkv_cache* cache) noexcept {
    return guarded("pagedkv_cache_reset", [&] { need(cache, "cache").cache->reset(); });
}

}  // extern "C"

// ---- The serving engine's API

namespace {

// ids and counts of a C call as spans (count 0 allows NULL pointers).
struct SeqCounts {
    std::span<const pagedkv::SeqId> seqs;
    std::span<const uint32_t> counts;
};
SeqCounts seq_counts(const pagedkv_seq_id* seqs, const uint32_t* new_tokens, size_t count) {
    static_assert(sizeof(pagedkv_seq_id) == sizeof(pagedkv::SeqId));
    return {span_of(seqs, count, "seqs"), span_of(new_tokens, count, "new_tokens")};
}

pagedkv::KVManager& manager_of(pagedkv_manager* m) {
    return *need(m, "manager").manager;
}
const pagedkv::KVManager& manager_of(const pagedkv_manager* m) {
    return *need(m, "manager").manager;
}

// Copies a list into out[0..capacity) and its size into *out_count.
template <class T>
void copy_out(const std::vector<T>& list, T* out, size_t capacity, size_t* out_count) {
    need(out_count, "out_count");
    if (out && capacity < list.size())
        throw Error(ErrorCode::InvalidArgument,
                    fmt::format("capacity {} is less than the {} entries", capacity, list.size()));
    if (out) std::copy(list.begin(), list.end(), out);
    *out_count = list.size();
}

}  // namespace

extern "C" {

void pagedkv_manager_options_init(pagedkv_manager_options* options) noexcept {
    if (!options) return;
    const pagedkv::ManagerOptions d;
    options->watermark = d.watermark;
    options->prefix_caching = d.prefix_caching ? 1 : 0;
}

pagedkv_status pagedkv_manager_create(pagedkv_pool* pool, const pagedkv_manager_options* options,
                                      pagedkv_manager** out_manager) noexcept {
    return guarded("pagedkv_manager_create", [&] {
        pagedkv_pool& p = need(pool, "pool");
        need(out_manager, "out_manager");
        pagedkv::ManagerOptions o;
        if (options) {
            o.watermark = options->watermark;
            o.prefix_caching = options->prefix_caching != 0;
        }
        auto h = std::make_unique<pagedkv_manager>();
        h->pool = p.pool;
        h->manager = std::make_unique<pagedkv::KVManager>(*p.pool, o);
        *out_manager = h.release();
    });
}

void pagedkv_manager_destroy(pagedkv_manager* manager) noexcept {
    delete manager;
}

pagedkv_status pagedkv_manager_add_sequence(pagedkv_manager* manager, const int32_t* prompt,
                                            size_t prompt_len, uint64_t salt,
                                            pagedkv_seq_id* out_seq) noexcept {
    return guarded("pagedkv_manager_add_sequence", [&] {
        pagedkv::KVManager& m = manager_of(manager);
        need(out_seq, "out_seq");
        *out_seq = m.add_sequence(span_of(prompt, prompt_len, "prompt"), salt);
    });
}

pagedkv_status pagedkv_manager_can_allocate(const pagedkv_manager* manager,
                                            const pagedkv_seq_id* seqs, const uint32_t* new_tokens,
                                            size_t count, int* out_ok) noexcept {
    return guarded("pagedkv_manager_can_allocate", [&] {
        const pagedkv::KVManager& m = manager_of(manager);
        need(out_ok, "out_ok");
        const SeqCounts sc = seq_counts(seqs, new_tokens, count);
        *out_ok = m.can_allocate(sc.seqs, sc.counts) ? 1 : 0;
    });
}

pagedkv_status pagedkv_manager_allocate(pagedkv_manager* manager, const pagedkv_seq_id* seqs,
                                        const uint32_t* new_tokens, size_t count,
                                        uint32_t lookahead) noexcept {
    return guarded("pagedkv_manager_allocate", [&] {
        pagedkv::KVManager& m = manager_of(manager);
        const SeqCounts sc = seq_counts(seqs, new_tokens, count);
        m.allocate(sc.seqs, sc.counts, lookahead);
    });
}

pagedkv_status pagedkv_manager_fork(pagedkv_manager* manager, pagedkv_seq_id seq,
                                    pagedkv_seq_id* out_seq) noexcept {
    return guarded("pagedkv_manager_fork", [&] {
        pagedkv::KVManager& m = manager_of(manager);
        need(out_seq, "out_seq");
        *out_seq = m.fork(seq);
    });
}

pagedkv_status pagedkv_manager_truncate(pagedkv_manager* manager, pagedkv_seq_id seq,
                                        int64_t length) noexcept {
    return guarded("pagedkv_manager_truncate", [&] { manager_of(manager).truncate(seq, length); });
}

pagedkv_status pagedkv_manager_free(pagedkv_manager* manager, pagedkv_seq_id seq) noexcept {
    return guarded("pagedkv_manager_free", [&] { manager_of(manager).free(seq); });
}

pagedkv_status pagedkv_manager_swap_out(pagedkv_manager* manager, pagedkv_seq_id seq) noexcept {
    return guarded("pagedkv_manager_swap_out", [&] { manager_of(manager).swap_out(seq); });
}

pagedkv_status pagedkv_manager_swap_in(pagedkv_manager* manager, pagedkv_seq_id seq) noexcept {
    return guarded("pagedkv_manager_swap_in", [&] { manager_of(manager).swap_in(seq); });
}

pagedkv_status pagedkv_manager_is_swapped(const pagedkv_manager* manager, pagedkv_seq_id seq,
                                          int* out_swapped) noexcept {
    return guarded("pagedkv_manager_is_swapped", [&] {
        const pagedkv::KVManager& m = manager_of(manager);
        need(out_swapped, "out_swapped");
        *out_swapped = m.is_swapped(seq) ? 1 : 0;
    });
}

pagedkv_status pagedkv_manager_length(const pagedkv_manager* manager, pagedkv_seq_id seq,
                                      int64_t* out_length) noexcept {
    return guarded("pagedkv_manager_length", [&] {
        const pagedkv::KVManager& m = manager_of(manager);
        need(out_length, "out_length");
        *out_length = m.length(seq);
    });
}

pagedkv_status pagedkv_manager_block_table(const pagedkv_manager* manager, pagedkv_seq_id seq,
                                           uint32_t* out, size_t capacity,
                                           size_t* out_count) noexcept {
    return guarded("pagedkv_manager_block_table", [&] {
        copy_out(manager_of(manager).block_table(seq), out, capacity, out_count);
    });
}

pagedkv_status pagedkv_manager_block_table_of_layer(const pagedkv_manager* manager,
                                                    pagedkv_seq_id seq, uint32_t layer,
                                                    uint32_t* out, size_t capacity,
                                                    size_t* out_count) noexcept {
    return guarded("pagedkv_manager_block_table_of_layer", [&] {
        copy_out(manager_of(manager).block_table(seq, layer), out, capacity, out_count);
    });
}

pagedkv_status pagedkv_manager_held(const pagedkv_manager* manager, pagedkv_seq_id seq,
                                    uint32_t layer, int64_t* out_held) noexcept {
    return guarded("pagedkv_manager_held", [&] {
        const pagedkv::KVManager& m = manager_of(manager);
        need(out_held, "out_held");
        *out_held = m.held(seq, layer);
    });
}

pagedkv_status pagedkv_manager_mask_range(const pagedkv_manager* manager, pagedkv_seq_id seq,
                                          uint32_t layer, int64_t* out_first,
                                          int64_t* out_count) noexcept {
    return guarded("pagedkv_manager_mask_range", [&] {
        const pagedkv::KVManager& m = manager_of(manager);
        need(out_first, "out_first");
        need(out_count, "out_count");
        const auto [first, count] = m.mask_range(seq, layer);
        *out_first = first;
        *out_count = count;
    });
}

pagedkv_status pagedkv_manager_sequences(const pagedkv_manager* manager, pagedkv_seq_id* out,
                                         size_t capacity, size_t* out_count) noexcept {
    return guarded("pagedkv_manager_sequences", [&] {
        const std::vector<pagedkv::SeqId> ids = manager_of(manager).sequences();
        const std::vector<pagedkv_seq_id> list(ids.begin(), ids.end());
        copy_out(list, out, capacity, out_count);
    });
}

pagedkv_status pagedkv_manager_gather(const pagedkv_manager* manager, pagedkv_seq_id seq,
                                      uint32_t layer, pagedkv_tensor** out_key,
                                      pagedkv_tensor** out_value) noexcept {
    return guarded("pagedkv_manager_gather", [&] {
        const pagedkv::KVManager& m = manager_of(manager);
        need(out_key, "out_key");
        need(out_value, "out_value");
        auto hk = std::make_unique<pagedkv_tensor>();
        auto hv = std::make_unique<pagedkv_tensor>();
        auto [k, v] = m.gather(seq, layer);
        hk->tensor = std::move(k);
        hv->tensor = std::move(v);
        *out_key = hk.release();
        *out_value = hv.release();
    });
}

pagedkv_status pagedkv_manager_begin_step(pagedkv_manager* manager, const pagedkv_seq_id* seqs,
                                          const uint32_t* new_tokens, size_t count,
                                          pagedkv_step** out_step) noexcept {
    return guarded("pagedkv_manager_begin_step", [&] {
        pagedkv::KVManager& m = manager_of(manager);
        need(out_step, "out_step");
        const SeqCounts sc = seq_counts(seqs, new_tokens, count);
        auto h = std::make_unique<pagedkv_step>();  // before the sequences change
        h->step = m.begin_step(sc.seqs, sc.counts);
        *out_step = h.release();
    });
}

pagedkv_status pagedkv_manager_write(pagedkv_manager* manager, const pagedkv_step* step,
                                     uint32_t layer, const pagedkv_tensor* key,
                                     const pagedkv_tensor* value) noexcept {
    return guarded("pagedkv_manager_write", [&] {
        pagedkv::KVManager& m = manager_of(manager);
        const pagedkv::Step& s = need(step, "step").step;
        const pagedkv::Tensor& k = need(key, "key").tensor;
        m.write(s, layer, k, need(value, "value").tensor);
    });
}

pagedkv_status pagedkv_manager_attention(pagedkv_manager* manager, const pagedkv_step* step,
                                         uint32_t layer, const pagedkv_tensor* query, float scale,
                                         pagedkv_tensor** out_attention) noexcept {
    return guarded("pagedkv_manager_attention", [&] {
        pagedkv::KVManager& m = manager_of(manager);
        need(out_attention, "out_attention");
        auto h = std::make_unique<pagedkv_tensor>();
        const pagedkv::Step& s = need(step, "step").step;
        h->tensor = m.attention(s, layer, need(query, "query").tensor, scale);
        *out_attention = h.release();
    });
}

pagedkv_status pagedkv_step_total_tokens(const pagedkv_step* step, uint32_t* out_total) noexcept {
    return guarded("pagedkv_step_total_tokens", [&] {
        const pagedkv_step& s = need(step, "step");
        need(out_total, "out_total");
        *out_total = s.step.total_tokens();
    });
}

pagedkv_status pagedkv_step_view(const pagedkv_step* step, uint32_t layer,
                                 pagedkv_paged_view** out_view,
                                 pagedkv_paged_view_info* out_info) noexcept {
    return guarded("pagedkv_step_view", [&] {
        const pagedkv_step& s = need(step, "step");
        need(out_view, "out_view");
        pagedkv_paged_view_info& info = need(out_info, "out_info");
        auto h = std::make_unique<pagedkv_paged_view>();
        h->view = s.step.view(layer);
        fill_view_info(h->view, info);
        *out_view = h.release();
    });
}

void pagedkv_step_destroy(pagedkv_step* step) noexcept {
    delete step;
}

pagedkv_status pagedkv_manager_begin_step_tokens(pagedkv_manager* manager,
                                                 const pagedkv_seq_id* seqs,
                                                 const int32_t* const* token_ids,
                                                 const uint32_t* new_tokens, size_t count,
                                                 pagedkv_step** out_step) noexcept {
    return guarded("pagedkv_manager_begin_step_tokens", [&] {
        pagedkv::KVManager& m = manager_of(manager);
        need(out_step, "out_step");
        const SeqCounts sc = seq_counts(seqs, new_tokens, count);
        const std::span<const int32_t* const> ids = span_of(token_ids, count, "token_ids");
        std::vector<std::span<const int32_t>> spans;
        spans.reserve(count);
        for (size_t i = 0; i < count; ++i) {
            const std::string name = fmt::format("token_ids[{}]", i);
            spans.push_back(span_of(ids[i], sc.counts[i], name.c_str()));
        }
        auto h = std::make_unique<pagedkv_step>();  // before the sequences change
        h->step = m.begin_step(sc.seqs, spans);
        *out_step = h.release();
    });
}

pagedkv_status pagedkv_manager_prefix_stats(const pagedkv_manager* manager,
                                            pagedkv_prefix_cache_stats* out_stats) noexcept {
    return guarded("pagedkv_manager_prefix_stats", [&] {
        const pagedkv::KVManager& m = manager_of(manager);
        need(out_stats, "out_stats");
        const pagedkv::PrefixCacheStats s = m.prefix_stats();
        *out_stats = pagedkv_prefix_cache_stats{s.queries,       s.hit_tokens, s.query_tokens,
                                                s.cached_pages,  s.evictions,  s.spilled_pages,
                                                s.host_hit_pages};
    });
}

pagedkv_status pagedkv_manager_reset_prefix_cache(pagedkv_manager* manager) noexcept {
    return guarded("pagedkv_manager_reset_prefix_cache",
                   [&] { manager_of(manager).reset_prefix_cache(); });
}

}  // extern "C"
