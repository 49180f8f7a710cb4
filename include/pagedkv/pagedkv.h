// pagedkv.h: the C interface to pagedkv, for runtimes and languages that cannot call C++.
// Opaque handles, status codes, and a per-thread message saying what the last failed call did.
#ifndef PAGEDKV_PAGEDKV_H
#define PAGEDKV_PAGEDKV_H

#include <stddef.h>
#include <stdint.h>
#include <vulkan/vulkan_core.h>

#include "pagedkv/export.h"
#include "pagedkv/version.hpp"

#ifdef __cplusplus
// Tells C++ callers what the implementation guarantees: no exception leaves these functions.
#define PAGEDKV_NOEXCEPT noexcept
extern "C" {
#else
#define PAGEDKV_NOEXCEPT
#endif

// ---------------------------------------------------------------------------------------------
// Errors
//
// Every call that can fail returns a pagedkv_status. On anything but PAGEDKV_OK the call
// changed nothing (the all-or-nothing rule of the C++ API) and wrote none of its out-params,
// and pagedkv_last_error_message() says what was wrong, with the values involved. The message
// belongs to the calling thread and lasts until that thread's next pagedkv_* call returning a
// status (a successful call leaves it empty). No C++ exception crosses this interface.

typedef enum pagedkv_status {
    PAGEDKV_OK = 0,
    // One per pagedkv::ErrorCode, in its order (pagedkv::ErrorCode value + 1).
    PAGEDKV_ERROR_INVALID_ARGUMENT = 1,   // also: a NULL handle or pointer that is required
    PAGEDKV_ERROR_OUT_OF_BLOCKS = 2,      // recoverable: free pages (reset, destroy) and retry
    PAGEDKV_ERROR_CAPACITY_EXCEEDED = 3,  // a static cache's batch_size or max_cache_len
    PAGEDKV_ERROR_CORRUPT_SNAPSHOT = 4,
    PAGEDKV_ERROR_VULKAN = 5,  // pagedkv_last_vk_result() holds the VkResult
    PAGEDKV_ERROR_UNSUPPORTED = 6,
    PAGEDKV_ERROR_NOT_IMPLEMENTED = 7,
    PAGEDKV_ERROR_OUT_OF_MEMORY = 8,  // device or host memory too small for the request
    PAGEDKV_ERROR_OUT_OF_HOST_MEMORY = PAGEDKV_ERROR_OUT_OF_MEMORY,  // its 0.1 name
    // Only in C: what C++ reports with other exceptions.
    PAGEDKV_ERROR_INTERNAL = 9  // an unexpected exception inside the library: a bug to report
} pagedkv_status;

// The enumerator's name ("PAGEDKV_ERROR_OUT_OF_BLOCKS"); never NULL.
PAGEDKV_API const char* pagedkv_status_name(pagedkv_status status) PAGEDKV_NOEXCEPT;
// What the calling thread's last failed call got wrong ("" after a success); never NULL.
PAGEDKV_API const char* pagedkv_last_error_message(void) PAGEDKV_NOEXCEPT;
// The VkResult behind the calling thread's last PAGEDKV_ERROR_VULKAN, else 0.
PAGEDKV_API int32_t pagedkv_last_vk_result(void) PAGEDKV_NOEXCEPT;
// PAGEDKV_VERSION of the library linked (the macro is the version of the header compiled).
PAGEDKV_API const char* pagedkv_version(void) PAGEDKV_NOEXCEPT;

// ---------------------------------------------------------------------------------------------
// Handles. Each *_create / *_from_host / update / get hands out a new handle the caller owns and
// releases with the matching *_destroy (which accepts NULL). Handles may be destroyed in any
// order: a pool lives until its handle and every cache made over it are destroyed, and tensors
// keep their device memory alive after the context is gone. A handle may be used by one
// thread at a time.

typedef struct pagedkv_context pagedkv_context;
typedef struct pagedkv_pool pagedkv_pool;
typedef struct pagedkv_cache pagedkv_cache;
typedef struct pagedkv_tensor pagedkv_tensor;

typedef enum pagedkv_dtype {
    PAGEDKV_DTYPE_F32 = 0,
    PAGEDKV_DTYPE_F16 = 1,
    PAGEDKV_DTYPE_BF16 = 2,
    // Pool dtypes only (quantized pages: one f32 scale per token per kv head).
    PAGEDKV_DTYPE_INT8 = 3,
    PAGEDKV_DTYPE_FP8E4M3 = 4,
    // Only for pagedkv_pool_config::compute_dtype: the pool's dtype, or F16 for a quantized pool.
    PAGEDKV_DTYPE_DEFAULT = -1
} pagedkv_dtype;

// How a page orders its rows (the C++ PageLayout): HEAD_MAJOR [kv_heads][block_size][head_dim],
// TOKEN_MAJOR [block_size][kv_heads][head_dim] (vLLM / FlashInfer "NHD"), or AUTO: picked per
// device by measurement when the pool is made (pagedkv_pool_layout says which).
typedef enum pagedkv_page_layout {
    PAGEDKV_PAGE_LAYOUT_HEAD_MAJOR = 0,
    PAGEDKV_PAGE_LAYOUT_TOKEN_MAJOR = 1,
    PAGEDKV_PAGE_LAYOUT_AUTO = 2
} pagedkv_page_layout;

// ---------------------------------------------------------------------------------------------
// Context: the Vulkan device.

// device_index: index into vkEnumeratePhysicalDevices, or -1 to pick a discrete GPU, then an
// integrated one, then a CPU implementation. enable_validation: nonzero turns on the Khronos
// validation layer and collects its messages (also on with env PAGEDKV_VALIDATION=1).
PAGEDKV_API pagedkv_status pagedkv_context_create(int32_t device_index, int enable_validation,
                                                  pagedkv_context** out_context) PAGEDKV_NOEXCEPT;
PAGEDKV_API void pagedkv_context_destroy(pagedkv_context* context) PAGEDKV_NOEXCEPT;
// The device's name, owned by the context.
PAGEDKV_API pagedkv_status pagedkv_context_device_name(const pagedkv_context* context,
                                                       const char** out_name) PAGEDKV_NOEXCEPT;
// Submits and waits for all work recorded so far.
PAGEDKV_API pagedkv_status pagedkv_context_synchronize(pagedkv_context* context) PAGEDKV_NOEXCEPT;
// A host runtime's Vulkan objects, used without being owned (the C++ ExternalVulkan, whose
// comment lists what the device must have enabled). int16_storage: nonzero when the device was
// created with storageBuffer16BitAccess and shaderInt16. get_instance_proc_addr: NULL or the
// vkGetInstanceProcAddr of the loader pagedkv is linked with.
typedef struct pagedkv_external_vulkan {
    VkInstance instance;
    VkPhysicalDevice physical_device;
    VkDevice device;
    VkQueue queue;
    uint32_t queue_family;
    int int16_storage;
    PFN_vkGetInstanceProcAddr get_instance_proc_addr;
} pagedkv_external_vulkan;
PAGEDKV_API pagedkv_status pagedkv_context_adopt(const pagedkv_external_vulkan* external,
                                                 pagedkv_context** out_context) PAGEDKV_NOEXCEPT;

// Recording into the caller's command buffer (the C++ Context::begin_recording, whose comment
// gives the barrier contract): between begin and end, the library's commands go into cmd and
// nothing is submitted. After cmd has finished executing, finish_recording(id) releases what
// its commands used and makes the tensors they wrote readable.
PAGEDKV_API pagedkv_status pagedkv_context_begin_recording(pagedkv_context* context,
                                                           VkCommandBuffer cmd) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_context_end_recording(pagedkv_context* context,
                                                         uint64_t* out_id) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_context_finish_recording(pagedkv_context* context,
                                                            uint64_t id) PAGEDKV_NOEXCEPT;

// The validation layer's messages so far, oldest first. The array and strings belong to the
// context and stay valid until the next call of this function on it, or its destruction.
PAGEDKV_API pagedkv_status pagedkv_context_validation_messages(pagedkv_context* context,
                                                               const char* const** out_messages,
                                                               size_t* out_count) PAGEDKV_NOEXCEPT;

// ---------------------------------------------------------------------------------------------
// Pool: device memory for num_blocks pages of every layer's K and V.

typedef struct pagedkv_pool_config {
    uint32_t num_layers;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t v_head_dim;  // 0: same as head_dim
    uint32_t block_size;  // tokens per page
    pagedkv_dtype dtype;
    uint64_t num_blocks;
    uint64_t max_slab_bytes;  // largest VkBuffer of pages; 0: the device's limit
    // layout and compute_dtype come last, so the fields before them keep their offsets from 0.1.
    pagedkv_page_layout layout;
    // What get / update / gathers return and attention computes in (F32, F16 or BF16), or
    // PAGEDKV_DTYPE_DEFAULT (C++ PoolConfig::compute_dtype unset). Fill the struct with
    // pagedkv_pool_config_init: a zeroed one asks for F32 here.
    pagedkv_dtype compute_dtype;
    // Last, so the fields before it keep their offsets: pages of the host tier (host-visible
    // memory that pagedkv_manager_swap_out moves sequences to); 0: no host tier.
    uint64_t num_host_blocks;
    // Last, so the fields before them keep their offsets: hybrid models (the C++
    // PoolConfig::layer_windows). NULL and 0: every layer full attention; else num_layers
    // entries, 0 for a full-attention layer, w > 0 for a sliding window of w tokens, whose
    // pages that left the window go back to the pool. Copied when the pool is made.
    const uint32_t* layer_windows;
    uint32_t num_layer_windows;
} pagedkv_pool_config;

// Fills the C++ PoolConfig defaults (block_size 16, F16, layout AUTO, compute_dtype DEFAULT,
// everything else 0 or NULL); set num_layers, num_kv_heads, head_dim and num_blocks afterwards.
PAGEDKV_API void pagedkv_pool_config_init(pagedkv_pool_config* config) PAGEDKV_NOEXCEPT;

typedef struct pagedkv_pool_stats {
    uint64_t num_blocks;
    uint64_t used_blocks;
    uint64_t free_blocks;
    uint64_t peak_used_blocks;
    uint64_t shared_blocks;  // pages referenced by more than one row
    uint64_t pages_copied;   // copy-on-write page copies so far
    uint64_t block_bytes;    // bytes of one block (all layers, K and V)
    uint64_t total_bytes;
    uint64_t num_slabs;
    // Last, so the fields before it keep their offsets from 0.1. Prefix caching: cached pages
    // no row holds (evictable); free_blocks counts only the never-cached free ones, and
    // used + free + cached = num_blocks.
    uint64_t cached_blocks;
    // Last again: the host tier's blocks and those swapped-out sequences hold (0 without one).
    uint64_t host_blocks;
    uint64_t used_host_blocks;
} pagedkv_pool_stats;

PAGEDKV_API pagedkv_status pagedkv_pool_create(pagedkv_context* context,
                                               const pagedkv_pool_config* config,
                                               pagedkv_pool** out_pool) PAGEDKV_NOEXCEPT;
// A pool over several devices (BlockPool(std::span<Context* const>, PoolConfig)): kv heads split
// evenly over num_contexts contexts, one allocator and block table for all; the manager's
// write / gather / attention calls take every head on the first context.
PAGEDKV_API pagedkv_status pagedkv_pool_create_on_devices(pagedkv_context* const* contexts,
                                                          size_t num_contexts,
                                                          const pagedkv_pool_config* config,
                                                          pagedkv_pool** out_pool) PAGEDKV_NOEXCEPT;
// The devices the pool spans (1 for pagedkv_pool_create; 0 for a null pool).
PAGEDKV_API uint32_t pagedkv_pool_num_devices(const pagedkv_pool* pool) PAGEDKV_NOEXCEPT;
PAGEDKV_API void pagedkv_pool_destroy(pagedkv_pool* pool) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_pool_get_stats(const pagedkv_pool* pool,
                                                  pagedkv_pool_stats* out_stats) PAGEDKV_NOEXCEPT;
// The pool's page layout, resolved: HEAD_MAJOR or TOKEN_MAJOR (never AUTO).
PAGEDKV_API pagedkv_status pagedkv_pool_layout(const pagedkv_pool* pool,
                                               pagedkv_page_layout* out_layout) PAGEDKV_NOEXCEPT;
// The pool's compute dtype, resolved: F32, F16 or BF16 (never DEFAULT).
PAGEDKV_API pagedkv_status pagedkv_pool_compute_dtype(const pagedkv_pool* pool,
                                                      pagedkv_dtype* out_dtype) PAGEDKV_NOEXCEPT;
// *out_valid = 1 when every invariant of the pool holds (free + used = total, reference counts
// match the caches' block tables), else 0.
PAGEDKV_API pagedkv_status pagedkv_pool_validate(const pagedkv_pool* pool,
                                                 int* out_valid) PAGEDKV_NOEXCEPT;

// ---------------------------------------------------------------------------------------------
// Tensors: contiguous row-major device tensors. K/V are (batch, kv_heads, seq_len, head_dim).

// count must equal the product of the rank dimensions in shape.
PAGEDKV_API pagedkv_status pagedkv_tensor_from_host(pagedkv_context* context, const float* data,
                                                    size_t count, const int64_t* shape, size_t rank,
                                                    pagedkv_dtype dtype,
                                                    pagedkv_tensor** out_tensor) PAGEDKV_NOEXCEPT;
// Converts to f32 into out[0..count); count must equal the tensor's element count. Waits for
// the work that writes the tensor.
PAGEDKV_API pagedkv_status pagedkv_tensor_to_host(const pagedkv_tensor* tensor, float* out,
                                                  size_t count) PAGEDKV_NOEXCEPT;
// The dimensions, owned by the tensor.
PAGEDKV_API pagedkv_status pagedkv_tensor_shape(const pagedkv_tensor* tensor,
                                                const int64_t** out_dims,
                                                size_t* out_rank) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_tensor_numel(const pagedkv_tensor* tensor,
                                                size_t* out_count) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_tensor_dtype(const pagedkv_tensor* tensor,
                                                pagedkv_dtype* out_dtype) PAGEDKV_NOEXCEPT;
// The tensor's device buffer and the address of its first byte, for the caller's own shaders.
// Its bytes start at offset 0 of the buffer (at pagedkv_tensor_vk_offset for a wrapped one).
PAGEDKV_API pagedkv_status pagedkv_tensor_vk_buffer(const pagedkv_tensor* tensor,
                                                    VkBuffer* out_buffer,
                                                    VkDeviceAddress* out_address) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_tensor_vk_offset(const pagedkv_tensor* tensor,
                                                    VkDeviceSize* out_offset) PAGEDKV_NOEXCEPT;
// A view of the caller's own buffer (Tensor::wrap in tensor.hpp says what it must be): bytes
// [offset, offset + count * dtype size) of `buffer`, read in place wherever a tensor is taken,
// never copied, written or freed by the library. buffer_size: the size the buffer was created
// with, or VK_WHOLE_SIZE when unknown (then checked against its memory requirements only).
// offset must be a multiple of 4.
PAGEDKV_API pagedkv_status pagedkv_tensor_wrap(pagedkv_context* context, VkBuffer buffer,
                                               VkDeviceSize offset, VkDeviceSize buffer_size,
                                               const int64_t* shape, size_t rank,
                                               pagedkv_dtype dtype,
                                               pagedkv_tensor** out_tensor) PAGEDKV_NOEXCEPT;
PAGEDKV_API void pagedkv_tensor_destroy(pagedkv_tensor* tensor) PAGEDKV_NOEXCEPT;

// ---------------------------------------------------------------------------------------------
// Caches over a pool (see the C++ DynamicKVCache, StaticKVCache, SlidingWindowKVCache).

PAGEDKV_API pagedkv_status pagedkv_cache_create_dynamic(pagedkv_pool* pool,
                                                        pagedkv_cache** out_cache) PAGEDKV_NOEXCEPT;
// Reserves every page at once: PAGEDKV_ERROR_OUT_OF_BLOCKS when the pool cannot.
PAGEDKV_API pagedkv_status pagedkv_cache_create_static(pagedkv_pool* pool, uint32_t batch_size,
                                                       uint32_t max_cache_len,
                                                       pagedkv_cache** out_cache) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_cache_create_sliding_window(
    pagedkv_pool* pool, uint32_t window, pagedkv_cache** out_cache) PAGEDKV_NOEXCEPT;
// Returns the cache's pages to the pool.
PAGEDKV_API void pagedkv_cache_destroy(pagedkv_cache* cache) PAGEDKV_NOEXCEPT;

// Where update writes the new tokens (the C++ CachePosition).
typedef enum pagedkv_position_kind {
    PAGEDKV_POSITION_APPEND = 0,  // after each row's last token
    PAGEDKV_POSITION_SCALAR = 1,  // scalar: the first new token's position, the rest follow
    PAGEDKV_POSITION_VECTOR = 2,  // positions[0..columns): one per new token, every row
    PAGEDKV_POSITION_MATRIX = 3   // positions[0..rows*columns): row-major, batch x seq_len
} pagedkv_position_kind;

typedef struct pagedkv_cache_position {
    pagedkv_position_kind kind;
    int64_t scalar;
    const int64_t* positions;
    size_t rows;
    size_t columns;
} pagedkv_cache_position;

// Writes key/value of one layer at position (NULL: append) and, for each out-param that is
// not NULL, hands out the layer's whole K or V, (batch, kv_heads, seq_length, head_dim).
PAGEDKV_API pagedkv_status pagedkv_cache_update(pagedkv_cache* cache, const pagedkv_tensor* key,
                                                const pagedkv_tensor* value, uint32_t layer_idx,
                                                const pagedkv_cache_position* position,
                                                pagedkv_tensor** out_key,
                                                pagedkv_tensor** out_value) PAGEDKV_NOEXCEPT;
// The layer's K and V; both set to NULL (and PAGEDKV_OK) when the layer holds no token.
PAGEDKV_API pagedkv_status pagedkv_cache_get(const pagedkv_cache* cache, uint32_t layer_idx,
                                             pagedkv_tensor** out_key,
                                             pagedkv_tensor** out_value) PAGEDKV_NOEXCEPT;
// Tokens in the layer's longest row.
PAGEDKV_API pagedkv_status pagedkv_cache_get_seq_length(const pagedkv_cache* cache,
                                                        uint32_t layer_idx,
                                                        int64_t* out_length) PAGEDKV_NOEXCEPT;
// Rows in the batch (0 before the first update).
PAGEDKV_API pagedkv_status pagedkv_cache_batch_size(const pagedkv_cache* cache,
                                                    uint32_t* out_batch) PAGEDKV_NOEXCEPT;
// Per-row lengths into out[0..batch); capacity must be at least the batch size.
PAGEDKV_API pagedkv_status pagedkv_cache_seq_lengths(const pagedkv_cache* cache, uint32_t layer_idx,
                                                     int64_t* out,
                                                     size_t capacity) PAGEDKV_NOEXCEPT;
// Keeps only the most recent max_length tokens of each row; positions renumber from 0.
PAGEDKV_API pagedkv_status pagedkv_cache_crop(pagedkv_cache* cache,
                                              int64_t max_length) PAGEDKV_NOEXCEPT;
// Keeps the first length tokens; a negative length removes -length tokens from the end.
PAGEDKV_API pagedkv_status pagedkv_cache_truncate(pagedkv_cache* cache,
                                                  int64_t length) PAGEDKV_NOEXCEPT;
// Row i becomes old row beam_idx[i] (count = batch size). Shares pages, copies nothing.
PAGEDKV_API pagedkv_status pagedkv_cache_reorder(pagedkv_cache* cache, const int32_t* beam_idx,
                                                 size_t count) PAGEDKV_NOEXCEPT;
// Keeps rows indices[0..count), in that order.
PAGEDKV_API pagedkv_status pagedkv_cache_batch_select_indices(pagedkv_cache* cache,
                                                              const int32_t* indices,
                                                              size_t count) PAGEDKV_NOEXCEPT;
// B -> B * repeats; row r * repeats + j is old row r.
PAGEDKV_API pagedkv_status pagedkv_cache_batch_repeat_interleave(pagedkv_cache* cache,
                                                                 uint32_t repeats) PAGEDKV_NOEXCEPT;
// Empties the cache and returns its pages to the pool (a static cache keeps its reservation).
PAGEDKV_API pagedkv_status pagedkv_cache_reset(pagedkv_cache* cache) PAGEDKV_NOEXCEPT;

// Decode attention read straight from the pages (the C++ PagedKVCache::cached_attention):
// query (batch, q_heads, 1, head_dim) in the pool's dtype; hands out (batch, q_heads, 1,
// v_head_dim). scale <= 0: 1 / sqrt(head_dim).
PAGEDKV_API pagedkv_status pagedkv_cache_cached_attention(
    const pagedkv_cache* cache, const pagedkv_tensor* query, uint32_t layer_idx, float scale,
    pagedkv_tensor** out_attention) PAGEDKV_NOEXCEPT;

// One layer's pages and CSR block table for the caller's own kernels (the C++ PagedView, whose
// comment says how to find token t of row r). Every pointer belongs to the view handle and
// lives until pagedkv_paged_view_destroy; keep the handle until the GPU work reading through
// it has finished. The view is a snapshot: take a new one after the cache changes.
typedef struct pagedkv_paged_view pagedkv_paged_view;
typedef struct pagedkv_paged_view_info {
    uint32_t layer, batch, kv_heads, head_dim, v_head_dim, block_size;
    pagedkv_dtype dtype;
    size_t num_slabs;
    const VkBuffer* slabs;
    const VkDeviceAddress* slab_addresses;
    VkDeviceAddress slab_table;  // a device array of the slab addresses
    uint32_t slab_shift;
    uint64_t block_bytes, k_offset, v_offset;
    VkBuffer table;  // indptr, indices, last_page_len, first_slot (uint32) at these offsets
    uint64_t indptr_offset, indices_offset, last_page_len_offset, first_slot_offset;
    VkDeviceAddress indptr, indices, last_page_len, first_slot;
    size_t num_indices;
    const uint32_t* host_indptr;         // batch + 1
    const uint32_t* host_indices;        // num_indices
    const uint32_t* host_last_page_len;  // batch
    const uint32_t* host_first_slot;     // batch
    const int64_t* lengths;              // batch
    // A step's view (pagedkv_step_view): the page slot of each new token (uint32, in `table`
    // at slot_mapping_offset); 0 / NULL for a cache's view.
    uint32_t num_tokens;
    uint64_t slot_mapping_offset;
    VkDeviceAddress slot_mapping;
    const uint32_t* host_slot_mapping;  // num_tokens
    // Quantized pages (dtype INT8 / FP8E4M3: 1-byte codes): one f32 scale per (token, head)
    // row, scale_bytes 4 (0 otherwise); this layer's K scales start k_scales_offset bytes from a
    // block's start (V: v_scales_offset), in the pages' row order (the C++ PagedView says more).
    uint32_t scale_bytes;
    uint64_t k_scales_offset, v_scales_offset;
} pagedkv_paged_view_info;
PAGEDKV_API pagedkv_status pagedkv_cache_paged_view(
    const pagedkv_cache* cache, uint32_t layer_idx, pagedkv_paged_view** out_view,
    pagedkv_paged_view_info* out_info) PAGEDKV_NOEXCEPT;
PAGEDKV_API void pagedkv_paged_view_destroy(pagedkv_paged_view* view) PAGEDKV_NOEXCEPT;

// ---------------------------------------------------------------------------------------------
// The serving engine's API (the C++ KVManager and Step): sequences by id over a pool, and
// steps that write a ragged batch of new tokens, (total_tokens, kv_heads, head_dim), and run
// causal attention over it. A manager keeps its pool alive; a step keeps its table alive.

typedef struct pagedkv_manager pagedkv_manager;
typedef struct pagedkv_step pagedkv_step;
typedef uint64_t pagedkv_seq_id;  // never reused within a manager

typedef struct pagedkv_manager_options {
    double watermark;  // share of the pool can_allocate keeps free for running sequences
    // Nonzero: prefix caching (the C++ ManagerOptions::prefix_caching). Full pages of the steps
    // begun with pagedkv_manager_begin_step_tokens are indexed by their token ids;
    // pagedkv_manager_add_sequence(prompt) then starts holding the cached pages of the
    // prompt's longest cached prefix, and ended sequences' pages stay cached (evictable).
    int prefix_caching;
} pagedkv_manager_options;

// The C++ PrefixCacheStats: this manager's lookups and the pool's prefix index.
typedef struct pagedkv_prefix_cache_stats {
    uint64_t queries;         // add_sequence calls with a prompt
    uint64_t hit_tokens;      // prompt tokens found cached (need no prefill)
    uint64_t query_tokens;    // prompt tokens looked up
    uint64_t cached_pages;    // pages in the pool's index (held by sequences or evictable)
    uint64_t evictions;       // cached pages the pool evicted to make room, so far
    uint64_t spilled_pages;   // evicted cached pages copied to the host tier
    uint64_t host_hit_pages;  // pages the lookups brought back from the host tier
} pagedkv_prefix_cache_stats;
// The defaults: watermark 0.01, no prefix caching.
PAGEDKV_API void pagedkv_manager_options_init(pagedkv_manager_options* options) PAGEDKV_NOEXCEPT;
// options NULL: the defaults.
PAGEDKV_API pagedkv_status pagedkv_manager_create(pagedkv_pool* pool,
                                                  const pagedkv_manager_options* options,
                                                  pagedkv_manager** out_manager) PAGEDKV_NOEXCEPT;
// Returns every sequence's pages to the pool.
PAGEDKV_API void pagedkv_manager_destroy(pagedkv_manager* manager) PAGEDKV_NOEXCEPT;
// A new sequence; prompt may be NULL (prompt_len 0). With prefix caching, the sequence starts
// holding the cached pages of the prompt's longest cached prefix (pagedkv_manager_length says
// how many tokens need no prefill); a different salt (tenant, LoRA adapter) never shares pages.
PAGEDKV_API pagedkv_status pagedkv_manager_add_sequence(pagedkv_manager* manager,
                                                        const int32_t* prompt, size_t prompt_len,
                                                        uint64_t salt,
                                                        pagedkv_seq_id* out_seq) PAGEDKV_NOEXCEPT;
// *out_ok = 1 when allocate(seqs, new_tokens) would succeed and keep the watermark free.
PAGEDKV_API pagedkv_status pagedkv_manager_can_allocate(const pagedkv_manager* manager,
                                                        const pagedkv_seq_id* seqs,
                                                        const uint32_t* new_tokens, size_t count,
                                                        int* out_ok) PAGEDKV_NOEXCEPT;
// Reserves pages for new_tokens[i] (+ lookahead) more tokens of each seqs[i], all or nothing.
PAGEDKV_API pagedkv_status pagedkv_manager_allocate(pagedkv_manager* manager,
                                                    const pagedkv_seq_id* seqs,
                                                    const uint32_t* new_tokens, size_t count,
                                                    uint32_t lookahead) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_manager_fork(pagedkv_manager* manager, pagedkv_seq_id seq,
                                                pagedkv_seq_id* out_seq) PAGEDKV_NOEXCEPT;
// Keeps the first length tokens; negative: drops -length tokens from the end.
PAGEDKV_API pagedkv_status pagedkv_manager_truncate(pagedkv_manager* manager, pagedkv_seq_id seq,
                                                    int64_t length) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_manager_free(pagedkv_manager* manager,
                                                pagedkv_seq_id seq) PAGEDKV_NOEXCEPT;
// The host tier (KVManager::swap_out / swap_in / is_swapped): moves a sequence's pages to the
// pool's host tier and frees its device pages, or brings them back; all or nothing
// (PAGEDKV_ERROR_OUT_OF_BLOCKS when the host tier or the pool is full). A swapped-out sequence
// answers length and free; the calls that need its pages fail until it is swapped in.
PAGEDKV_API pagedkv_status pagedkv_manager_swap_out(pagedkv_manager* manager,
                                                    pagedkv_seq_id seq) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_manager_swap_in(pagedkv_manager* manager,
                                                   pagedkv_seq_id seq) PAGEDKV_NOEXCEPT;
// *out_swapped: 1 when the sequence is swapped out, else 0.
PAGEDKV_API pagedkv_status pagedkv_manager_is_swapped(const pagedkv_manager* manager,
                                                      pagedkv_seq_id seq,
                                                      int* out_swapped) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_manager_length(const pagedkv_manager* manager,
                                                  pagedkv_seq_id seq,
                                                  int64_t* out_length) PAGEDKV_NOEXCEPT;
// The sequence's pages into out[0..capacity); *out_count is their number (call with capacity 0
// to learn it; PAGEDKV_ERROR_INVALID_ARGUMENT when capacity is short and out is not NULL). With
// layer windows: layer 0's (pagedkv_manager_block_table_of_layer).
PAGEDKV_API pagedkv_status pagedkv_manager_block_table(const pagedkv_manager* manager,
                                                       pagedkv_seq_id seq, uint32_t* out,
                                                       size_t capacity,
                                                       size_t* out_count) PAGEDKV_NOEXCEPT;
// Hybrid models (pagedkv_pool_config::layer_windows): the pages of the layer's group, from the
// page holding its first held token on, in the same way (pagedkv_manager_block_table is layer
// 0's).
PAGEDKV_API pagedkv_status pagedkv_manager_block_table_of_layer(const pagedkv_manager* manager,
                                                                pagedkv_seq_id seq, uint32_t layer,
                                                                uint32_t* out, size_t capacity,
                                                                size_t* out_count) PAGEDKV_NOEXCEPT;
// Tokens the layer still holds: the length for a full-attention layer, at most the window for
// a sliding one (its older tokens' pages went back to the pool).
PAGEDKV_API pagedkv_status pagedkv_manager_held(const pagedkv_manager* manager, pagedkv_seq_id seq,
                                                uint32_t layer, int64_t* out_held) PAGEDKV_NOEXCEPT;
// The layer's first position held and tokens held, for attention masks: gather(seq, layer)
// returns positions [*out_first, *out_first + *out_count).
PAGEDKV_API pagedkv_status pagedkv_manager_mask_range(const pagedkv_manager* manager,
                                                      pagedkv_seq_id seq, uint32_t layer,
                                                      int64_t* out_first,
                                                      int64_t* out_count) PAGEDKV_NOEXCEPT;
// Live sequences, ascending, in the same way.
PAGEDKV_API pagedkv_status pagedkv_manager_sequences(const pagedkv_manager* manager,
                                                     pagedkv_seq_id* out, size_t capacity,
                                                     size_t* out_count) PAGEDKV_NOEXCEPT;
// The sequence's K and V of one layer, (kv_heads, length, head_dim) (length: the tokens the
// layer holds, pagedkv_manager_held).
PAGEDKV_API pagedkv_status pagedkv_manager_gather(const pagedkv_manager* manager,
                                                  pagedkv_seq_id seq, uint32_t layer,
                                                  pagedkv_tensor** out_key,
                                                  pagedkv_tensor** out_value) PAGEDKV_NOEXCEPT;
// Allocates and builds the step's slot mapping and block tables once for all layers (no
// submit). From here on the sequences' lengths include the new tokens.
PAGEDKV_API pagedkv_status pagedkv_manager_begin_step(pagedkv_manager* manager,
                                                      const pagedkv_seq_id* seqs,
                                                      const uint32_t* new_tokens, size_t count,
                                                      pagedkv_step** out_step) PAGEDKV_NOEXCEPT;
// The same, given the ids of each sequence's new tokens: token_ids[i] holds new_tokens[i] ids
// (NULL when new_tokens[i] is 0). With prefix caching, the pages they fill are registered in
// the pool's prefix index when the step ends (pagedkv_step_destroy) with every layer's K/V
// written (pagedkv_manager_write, or the step's view taken for the runtime's own kernels).
PAGEDKV_API pagedkv_status pagedkv_manager_begin_step_tokens(
    pagedkv_manager* manager, const pagedkv_seq_id* seqs, const int32_t* const* token_ids,
    const uint32_t* new_tokens, size_t count, pagedkv_step** out_step) PAGEDKV_NOEXCEPT;
// Packed ragged K and V of one layer, (total_tokens, kv_heads, head_dim).
PAGEDKV_API pagedkv_status pagedkv_manager_write(pagedkv_manager* manager, const pagedkv_step* step,
                                                 uint32_t layer, const pagedkv_tensor* key,
                                                 const pagedkv_tensor* value) PAGEDKV_NOEXCEPT;
// Causal attention over the step: query (total_tokens, q_heads, head_dim); hands out
// (total_tokens, q_heads, v_head_dim). scale <= 0: 1 / sqrt(head_dim).
PAGEDKV_API pagedkv_status pagedkv_manager_attention(
    pagedkv_manager* manager, const pagedkv_step* step, uint32_t layer, const pagedkv_tensor* query,
    float scale, pagedkv_tensor** out_attention) PAGEDKV_NOEXCEPT;
PAGEDKV_API pagedkv_status pagedkv_step_total_tokens(const pagedkv_step* step,
                                                     uint32_t* out_total) PAGEDKV_NOEXCEPT;
// The step's view of one layer for the caller's kernels (slot mapping included).
PAGEDKV_API pagedkv_status pagedkv_step_view(const pagedkv_step* step, uint32_t layer,
                                             pagedkv_paged_view** out_view,
                                             pagedkv_paged_view_info* out_info) PAGEDKV_NOEXCEPT;
// Ends the step (the C++ end_step): reserved lookahead pages stay with their sequences.
PAGEDKV_API void pagedkv_step_destroy(pagedkv_step* step) PAGEDKV_NOEXCEPT;
// Prefix caching: this manager's lookups and the pool's index (all zero without it).
PAGEDKV_API pagedkv_status pagedkv_manager_prefix_stats(
    const pagedkv_manager* manager, pagedkv_prefix_cache_stats* out_stats) PAGEDKV_NOEXCEPT;
// Empties the pool's prefix index: evictable pages become free, pages held by sequences stay
// theirs, and this manager's counters restart.
PAGEDKV_API pagedkv_status pagedkv_manager_reset_prefix_cache(pagedkv_manager* manager)
    PAGEDKV_NOEXCEPT;

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // PAGEDKV_PAGEDKV_H
