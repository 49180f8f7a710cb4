// c_api_test: every function of pagedkv.h called from a C11 program, on the validation layer.
// K/V values are a closed formula of (layer, row, head, position, dim), so C needs no reference.
#include <pagedkv/pagedkv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                              \
        }                                                                            \
    } while (0)

// A call that must succeed; later steps depend on it, so a failure ends the program.
#define OK(call)                                                                      \
    do {                                                                              \
        pagedkv_status ok_status_ = (call);                                           \
        if (ok_status_ != PAGEDKV_OK) {                                               \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call, \
                    pagedkv_status_name(ok_status_), pagedkv_last_error_message());   \
            exit(1);                                                                  \
        }                                                                             \
        CHECK(strcmp(pagedkv_last_error_message(), "") == 0);                         \
    } while (0)

// A call that must fail with `expected` and a message containing `needle`.
#define FAILS(call, expected, needle)                                                         \
    do {                                                                                      \
        pagedkv_status fails_status_ = (call);                                                \
        if (fails_status_ != (expected)) {                                                    \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__, __LINE__,  \
                    #call, pagedkv_status_name(fails_status_), pagedkv_status_name(expected), \
                    pagedkv_last_error_message());                                            \
            ++failures;                                                                       \
        } else if (!strstr(pagedkv_last_error_message(), (needle))) {                         \
            fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", __FILE__, __LINE__,       \
                    pagedkv_last_error_message(), (needle));                                  \
            ++failures;                                                                       \
        }                                                                                     \
    } while (0)

enum { LAYERS = 2, HEADS = 2, DIM = 4, BLOCK = 4, BLOCKS = 48 };
// The devices the pool under test spans (main sets 2 for its pool over two devices).
static unsigned pool_devices = 1;

// The key stored for (layer, row, head, position, dim); values are its negation. Exact in f32.
static float key_at(unsigned layer, unsigned row, unsigned head, long long pos, unsigned dim) {
    return (float)(layer * 100000u + row * 10000u + head * 1000u + (unsigned)pos * 10u + dim);
}

// (batch, HEADS, seq, DIM) keys (sign 1) or values (sign -1) for positions pos0.. of each row.
static pagedkv_tensor* make_kv(pagedkv_context* ctx, unsigned layer, unsigned batch, unsigned heads,
                               long long pos0, unsigned seq, float sign) {
    const size_t n = (size_t)batch * heads * seq * DIM;
    float* data = malloc(n * sizeof(float));
    if (!data) exit(1);
    size_t i = 0;
    for (unsigned b = 0; b < batch; ++b)
        for (unsigned h = 0; h < heads; ++h)
            for (unsigned s = 0; s < seq; ++s)
                for (unsigned d = 0; d < DIM; ++d)
                    data[i++] = sign * key_at(layer, b, h, pos0 + s, d);
    const int64_t shape[4] = {batch, heads, seq, DIM};
    pagedkv_tensor* t = NULL;
    OK(pagedkv_tensor_from_host(ctx, data, n, shape, 4, PAGEDKV_DTYPE_F32, &t));
    free(data);
    return t;
}

// Checks a returned (batch, HEADS, length, DIM) tensor: row b holds old row row_of[b], token p
// is the one written at position p + shift.
static void check_kv(const pagedkv_tensor* t, unsigned layer, unsigned batch, long long length,
                     const unsigned* row_of, long long shift, float sign) {
    const int64_t* dims = NULL;
    size_t rank = 0;
    OK(pagedkv_tensor_shape(t, &dims, &rank));
    CHECK(rank == 4);
    if (rank != 4) return;
    CHECK(dims[0] == batch && dims[1] == HEADS && dims[2] == length && dims[3] == DIM);
    size_t n = 0;
    OK(pagedkv_tensor_numel(t, &n));
    CHECK(n == (size_t)batch * HEADS * (size_t)length * DIM);
    pagedkv_dtype dtype = PAGEDKV_DTYPE_BF16;
    OK(pagedkv_tensor_dtype(t, &dtype));
    CHECK(dtype == PAGEDKV_DTYPE_F32);
    float* got = malloc(n * sizeof(float) + 1);
    if (!got) exit(1);
    OK(pagedkv_tensor_to_host(t, got, n));
    size_t i = 0, wrong = 0;
    for (unsigned b = 0; b < batch; ++b)
        for (unsigned h = 0; h < HEADS; ++h)
            for (long long p = 0; p < length; ++p)
                for (unsigned d = 0; d < DIM; ++d, ++i)
                    if (got[i] != sign * key_at(layer, row_of[b], h, p + shift, d)) ++wrong;
    if (wrong) fprintf(stderr, "check_kv: %zu of %zu values differ\n", wrong, n);
    CHECK(wrong == 0);
    free(got);
}

// get() of one layer against the formula, then the handles are released.
static void check_get(const pagedkv_cache* cache, unsigned layer, unsigned batch, long long length,
                      const unsigned* row_of, long long shift) {
    pagedkv_tensor *k = NULL, *v = NULL;
    OK(pagedkv_cache_get(cache, layer, &k, &v));
    CHECK(k != NULL && v != NULL);
    if (!k || !v) return;
    check_kv(k, layer, batch, length, row_of, shift, 1.0f);
    check_kv(v, layer, batch, length, row_of, shift, -1.0f);
    pagedkv_tensor_destroy(k);
    pagedkv_tensor_destroy(v);
}

// Appends seq tokens at pos0.. to every row of both layers.
static void append_all(pagedkv_context* ctx, pagedkv_cache* cache, unsigned batch, long long pos0,
                       unsigned seq) {
    for (unsigned layer = 0; layer < LAYERS; ++layer) {
        pagedkv_tensor* k = make_kv(ctx, layer, batch, HEADS, pos0, seq, 1.0f);
        pagedkv_tensor* v = make_kv(ctx, layer, batch, HEADS, pos0, seq, -1.0f);
        OK(pagedkv_cache_update(cache, k, v, layer, NULL, NULL, NULL));
        pagedkv_tensor_destroy(k);
        pagedkv_tensor_destroy(v);
    }
}

static long long seq_length(const pagedkv_cache* cache, unsigned layer) {
    int64_t n = -1;
    OK(pagedkv_cache_get_seq_length(cache, layer, &n));
    return (long long)n;
}

static uint64_t used_blocks(const pagedkv_pool* pool) {
    pagedkv_pool_stats s;
    OK(pagedkv_pool_get_stats(pool, &s));
    return s.used_blocks;
}

static void check_valid(const pagedkv_pool* pool) {
    int valid = 0;
    OK(pagedkv_pool_validate(pool, &valid));
    CHECK(valid == 1);
}

static void test_errors_and_names(void) {
    CHECK(strcmp(pagedkv_version(), PAGEDKV_VERSION) == 0);
    CHECK(PAGEDKV_VERSION_MAJOR == 0 && PAGEDKV_VERSION_MINOR >= 1);
    CHECK(strcmp(pagedkv_status_name(PAGEDKV_OK), "PAGEDKV_OK") == 0);
    CHECK(strcmp(pagedkv_status_name(PAGEDKV_ERROR_OUT_OF_BLOCKS), "PAGEDKV_ERROR_OUT_OF_BLOCKS") ==
          0);
    CHECK(strcmp(pagedkv_status_name(PAGEDKV_ERROR_OUT_OF_MEMORY), "PAGEDKV_ERROR_OUT_OF_MEMORY") ==
          0);
    CHECK(strcmp(pagedkv_status_name((pagedkv_status)42), "PAGEDKV_ERROR_UNKNOWN") == 0);
    FAILS(pagedkv_context_create(-1, 1, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT, "out_context");
    CHECK(pagedkv_last_vk_result() == 0);
    // Destroying nothing is allowed, like free(NULL).
    pagedkv_context_destroy(NULL);
    pagedkv_pool_destroy(NULL);
    pagedkv_cache_destroy(NULL);
    pagedkv_tensor_destroy(NULL);
}

// Dynamic cache: prefill, decode, every kind of position, the batch operations, crop,
// truncate, reset, and the error paths that must change nothing.
static void test_dynamic(pagedkv_context* ctx, pagedkv_pool* pool) {
    const unsigned identity[4] = {0, 1, 2, 3};
    pagedkv_cache* cache = NULL;
    OK(pagedkv_cache_create_dynamic(pool, &cache));
    uint32_t batch = 99;
    OK(pagedkv_cache_batch_size(cache, &batch));
    CHECK(batch == 0);
    // An empty layer sets both handles to NULL (sentinels first, to see that they are written).
    pagedkv_tensor* k = (pagedkv_tensor*)&batch;
    pagedkv_tensor* v = (pagedkv_tensor*)&batch;
    OK(pagedkv_cache_get(cache, 0, &k, &v));
    CHECK(k == NULL && v == NULL);

    // Prefill 6 tokens for 2 rows of layer 0; the returned tensors are the whole layer.
    pagedkv_tensor* pk = make_kv(ctx, 0, 2, HEADS, 0, 6, 1.0f);
    pagedkv_tensor* pv = make_kv(ctx, 0, 2, HEADS, 0, 6, -1.0f);
    pagedkv_tensor *rk = NULL, *rv = NULL;
    OK(pagedkv_cache_update(cache, pk, pv, 0, NULL, &rk, &rv));
    check_kv(rk, 0, 2, 6, identity, 0, 1.0f);
    check_kv(rv, 0, 2, 6, identity, 0, -1.0f);
    pagedkv_tensor_destroy(rk);
    pagedkv_tensor_destroy(rv);
    pagedkv_tensor_destroy(pk);
    pagedkv_tensor_destroy(pv);
    // Only the key is wanted this time.
    pagedkv_tensor* k1 = make_kv(ctx, 1, 2, HEADS, 0, 6, 1.0f);
    pagedkv_tensor* v1 = make_kv(ctx, 1, 2, HEADS, 0, 6, -1.0f);
    rk = NULL;
    OK(pagedkv_cache_update(cache, k1, v1, 1, NULL, &rk, NULL));
    check_kv(rk, 1, 2, 6, identity, 0, 1.0f);
    pagedkv_tensor_destroy(rk);
    pagedkv_tensor_destroy(k1);
    pagedkv_tensor_destroy(v1);
    append_all(ctx, cache, 2, 6, 1);  // decode one token
    CHECK(seq_length(cache, 0) == 7 && seq_length(cache, 1) == 7);
    int64_t lengths[4] = {0, 0, 0, 0};
    OK(pagedkv_cache_seq_lengths(cache, 0, lengths, 4));
    CHECK(lengths[0] == 7 && lengths[1] == 7 && lengths[2] == 0);
    FAILS(pagedkv_cache_seq_lengths(cache, 0, lengths, 1), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "capacity 1");
    OK(pagedkv_cache_batch_size(cache, &batch));
    CHECK(batch == 2);
    check_get(cache, 0, 2, 7, identity, 0);
    check_get(cache, 1, 2, 7, identity, 0);
    CHECK(used_blocks(pool) == 4);  // 7 tokens in pages of 4, for each of 2 rows

    // The error path: a key with 3 heads where the pool has 2. Nothing changes.
    pagedkv_tensor* bad_k = make_kv(ctx, 0, 2, 3, 7, 1, 1.0f);
    pagedkv_tensor* bad_v = make_kv(ctx, 0, 2, 3, 7, 1, -1.0f);
    rk = (pagedkv_tensor*)&batch;  // must stay untouched on failure
    FAILS(pagedkv_cache_update(cache, bad_k, bad_v, 0, NULL, &rk, NULL),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "key has 3 heads, pool layout has 2 kv heads");
    CHECK(rk == (pagedkv_tensor*)&batch);
    CHECK(strstr(pagedkv_last_error_message(), "pagedkv_cache_update") != NULL);
    CHECK(pagedkv_last_vk_result() == 0);
    FAILS(pagedkv_cache_update(cache, NULL, bad_v, 0, NULL, NULL, NULL),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "key is NULL");
    FAILS(pagedkv_cache_update(cache, bad_k, bad_v, 5, NULL, NULL, NULL),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "layer_idx 5");
    pagedkv_tensor_destroy(bad_k);
    pagedkv_tensor_destroy(bad_v);
    CHECK(seq_length(cache, 0) == 7);
    CHECK(used_blocks(pool) == 4);
    check_get(cache, 0, 2, 7, identity, 0);
    check_valid(pool);

    // Positions. Scalar: overwrite position 2 with keys + 0.5, then put the originals back.
    pagedkv_cache_position at2 = {PAGEDKV_POSITION_SCALAR, 2, NULL, 0, 0};
    {
        const size_t n = 2 * HEADS * 1 * DIM;
        float data[2 * HEADS * 1 * DIM];
        for (size_t i = 0; i < n; ++i)
            data[i] = 0.5f + (float)i;
        const int64_t shape[4] = {2, HEADS, 1, DIM};
        pagedkv_tensor* t = NULL;
        OK(pagedkv_tensor_from_host(ctx, data, n, shape, 4, PAGEDKV_DTYPE_F32, &t));
        OK(pagedkv_cache_update(cache, t, t, 0, &at2, &rk, NULL));
        size_t total = 0;
        OK(pagedkv_tensor_numel(rk, &total));
        float* got = malloc(total * sizeof(float));
        if (!got) exit(1);
        OK(pagedkv_tensor_to_host(rk, got, total));
        // Row 0, head 0: position 2 holds the new token, position 1 the old one.
        CHECK(got[2 * DIM] == 0.5f);
        CHECK(got[1 * DIM] == key_at(0, 0, 0, 1, 0));
        free(got);
        pagedkv_tensor_destroy(rk);
        pagedkv_tensor_destroy(t);
        pagedkv_tensor* k2 = make_kv(ctx, 0, 2, HEADS, 2, 1, 1.0f);
        pagedkv_tensor* v2 = make_kv(ctx, 0, 2, HEADS, 2, 1, -1.0f);
        OK(pagedkv_cache_update(cache, k2, v2, 0, &at2, NULL, NULL));
        pagedkv_tensor_destroy(k2);
        pagedkv_tensor_destroy(v2);
        check_get(cache, 0, 2, 7, identity, 0);
    }
    // Vector (one position per new token, every row) and matrix (per row): append 7, then 8.
    const int64_t seven[1] = {7};
    const int64_t eights[2] = {8, 8};
    pagedkv_cache_position vec = {PAGEDKV_POSITION_VECTOR, 0, seven, 0, 1};
    pagedkv_cache_position mat = {PAGEDKV_POSITION_MATRIX, 0, eights, 2, 1};
    for (unsigned layer = 0; layer < LAYERS; ++layer)
        for (int step = 0; step < 2; ++step) {
            pagedkv_tensor* kt = make_kv(ctx, layer, 2, HEADS, 7 + step, 1, 1.0f);
            pagedkv_tensor* vt = make_kv(ctx, layer, 2, HEADS, 7 + step, 1, -1.0f);
            OK(pagedkv_cache_update(cache, kt, vt, layer, step == 0 ? &vec : &mat, NULL, NULL));
            pagedkv_tensor_destroy(kt);
            pagedkv_tensor_destroy(vt);
        }
    pagedkv_cache_position bad_kind = {(pagedkv_position_kind)9, 0, NULL, 0, 0};
    pagedkv_tensor* kt = make_kv(ctx, 0, 2, HEADS, 9, 1, 1.0f);
    FAILS(pagedkv_cache_update(cache, kt, kt, 0, &bad_kind, NULL, NULL),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "kind 9");
    pagedkv_cache_position no_data = {PAGEDKV_POSITION_VECTOR, 0, NULL, 0, 1};
    FAILS(pagedkv_cache_update(cache, kt, kt, 0, &no_data, NULL, NULL),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "positions is NULL");
    // Counts that disagree with the key are refused before anything is allocated (2^40 rows of
    // 0 columns used to allocate 2^40 empty rows first, and fail for want of host memory).
    pagedkv_cache_position huge = {PAGEDKV_POSITION_MATRIX, 0, NULL, (size_t)1 << 40, 0};
    FAILS(pagedkv_cache_update(cache, kt, kt, 0, &huge, NULL, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "update: cache_position has 1099511627776 rows, batch is 2");
    pagedkv_cache_position wide = {PAGEDKV_POSITION_MATRIX, 0, eights, 2, 5};
    FAILS(pagedkv_cache_update(cache, kt, kt, 0, &wide, NULL, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "update: cache_position has 5 columns, seq_len is 1");
    pagedkv_tensor_destroy(kt);
    CHECK(seq_length(cache, 0) == 9 && seq_length(cache, 1) == 9);
    check_get(cache, 0, 2, 9, identity, 0);
    check_get(cache, 1, 2, 9, identity, 0);

    // Batch operations share pages instead of copying them.
    const int32_t swap[2] = {1, 0};
    OK(pagedkv_cache_reorder(cache, swap, 2));
    const unsigned swapped[2] = {1, 0};
    check_get(cache, 0, 2, 9, swapped, 0);
    FAILS(pagedkv_cache_reorder(cache, NULL, 2), PAGEDKV_ERROR_INVALID_ARGUMENT, "beam_idx");
    OK(pagedkv_cache_batch_repeat_interleave(cache, 2));
    const unsigned repeated[4] = {1, 1, 0, 0};
    check_get(cache, 1, 4, 9, repeated, 0);
    pagedkv_pool_stats stats;
    OK(pagedkv_pool_get_stats(pool, &stats));
    CHECK(stats.shared_blocks == 6 && stats.used_blocks == 6);
    const int32_t keep[2] = {3, 0};
    OK(pagedkv_cache_batch_select_indices(cache, keep, 2));
    const unsigned kept[2] = {0, 1};
    check_get(cache, 0, 2, 9, kept, 0);
    check_valid(pool);

    // crop keeps the last 5 tokens (renumbered from 0); truncate(-2) drops 2 from the end.
    OK(pagedkv_cache_crop(cache, 5));
    CHECK(seq_length(cache, 0) == 5);
    check_get(cache, 0, 2, 5, kept, 4);
    OK(pagedkv_cache_truncate(cache, -2));
    CHECK(seq_length(cache, 1) == 3);
    check_get(cache, 1, 2, 3, kept, 4);
    check_valid(pool);

    OK(pagedkv_cache_reset(cache));
    CHECK(seq_length(cache, 0) == 0);
    k = v = (pagedkv_tensor*)&batch;
    OK(pagedkv_cache_get(cache, 0, &k, &v));
    CHECK(k == NULL && v == NULL);
    CHECK(used_blocks(pool) == 0);
    pagedkv_cache_destroy(cache);
}

// A static cache reserves its pages at once and refuses to grow past them.
static void test_static(pagedkv_context* ctx, pagedkv_pool* pool) {
    const unsigned identity[2] = {0, 1};
    pagedkv_cache* cache = (pagedkv_cache*)pool;
    FAILS(pagedkv_cache_create_static(pool, 2, BLOCKS * BLOCK, &cache), PAGEDKV_ERROR_OUT_OF_BLOCKS,
          "need 96 pages");
    CHECK(cache == (pagedkv_cache*)pool);
    CHECK(used_blocks(pool) == 0);
    OK(pagedkv_cache_create_static(pool, 2, 8, &cache));
    CHECK(used_blocks(pool) == 4);
    uint32_t batch = 0;
    OK(pagedkv_cache_batch_size(cache, &batch));
    CHECK(batch == 2);
    append_all(ctx, cache, 2, 0, 8);
    check_get(cache, 0, 2, 8, identity, 0);
    pagedkv_tensor* k = make_kv(ctx, 0, 2, HEADS, 8, 1, 1.0f);
    FAILS(pagedkv_cache_update(cache, k, k, 0, NULL, NULL, NULL), PAGEDKV_ERROR_CAPACITY_EXCEEDED,
          "max_cache_len is 8");
    pagedkv_tensor_destroy(k);
    check_get(cache, 0, 2, 8, identity, 0);
    OK(pagedkv_cache_reset(cache));
    CHECK(used_blocks(pool) == 4);  // the reservation stays
    pagedkv_cache_destroy(cache);
    CHECK(used_blocks(pool) == 0);
}

// A sliding window keeps the most recent `window` tokens.
static void test_sliding_window(pagedkv_context* ctx, pagedkv_pool* pool) {
    const unsigned identity[2] = {0, 1};
    pagedkv_cache* cache = NULL;
    FAILS(pagedkv_cache_create_sliding_window(pool, 0, &cache), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "window");
    CHECK(cache == NULL);
    OK(pagedkv_cache_create_sliding_window(pool, 4, &cache));
    append_all(ctx, cache, 2, 0, 6);
    CHECK(seq_length(cache, 0) == 4);
    check_get(cache, 0, 2, 4, identity, 2);
    append_all(ctx, cache, 2, 6, 3);
    check_get(cache, 1, 2, 4, identity, 5);
    // Pages wholly out of the window went back: at most window / block + 1 per row.
    CHECK(used_blocks(pool) <= 2 * (4 / BLOCK + 1));
    check_valid(pool);
    pagedkv_cache_destroy(cache);
}

// Handles may go in any order: the pool lives on while a cache over it does.
static void test_destroy_order(pagedkv_context* ctx) {
    pagedkv_pool_config cfg;
    pagedkv_pool_config_init(&cfg);
    cfg.num_layers = LAYERS;
    cfg.num_kv_heads = HEADS;
    cfg.head_dim = DIM;
    cfg.num_blocks = 4;
    cfg.dtype = PAGEDKV_DTYPE_F32;
    pagedkv_pool* pool = NULL;
    OK(pagedkv_pool_create(ctx, &cfg, &pool));
    pagedkv_cache* cache = NULL;
    OK(pagedkv_cache_create_dynamic(pool, &cache));
    pagedkv_pool_destroy(pool);
    append_all(ctx, cache, 1, 0, 3);
    const unsigned identity[1] = {0};
    check_get(cache, 1, 1, 3, identity, 0);
    pagedkv_cache_destroy(cache);
}

// The embedding calls: the paged view, cached_attention, and the error paths of adopt and of
// recording into a caller's command buffer (the C++ tests run those with a real host device).
static void test_embedding(pagedkv_context* ctx, pagedkv_pool* pool) {
    pagedkv_cache* cache = NULL;
    OK(pagedkv_cache_create_dynamic(pool, &cache));
    append_all(ctx, cache, 2, 0, 6);

    pagedkv_paged_view* view = NULL;
    pagedkv_paged_view_info info;
    memset(&info, 0, sizeof info);
    FAILS(pagedkv_cache_paged_view(cache, 5, &view, &info), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "layer_idx 5");
    CHECK(view == NULL && info.batch == 0);
    OK(pagedkv_cache_paged_view(cache, 1, &view, &info));
    CHECK(info.layer == 1 && info.batch == 2 && info.kv_heads == HEADS && info.head_dim == DIM);
    CHECK(info.block_size == BLOCK && info.dtype == PAGEDKV_DTYPE_F32 && info.num_slabs >= 1);
    CHECK(info.slab_addresses[0] != 0 && info.slab_table != 0 && info.table != VK_NULL_HANDLE);
    CHECK(info.block_bytes == (uint64_t)LAYERS * 2 * HEADS * BLOCK * DIM * sizeof(float));
    CHECK(info.v_offset - info.k_offset == (uint64_t)HEADS * BLOCK * DIM * sizeof(float));
    CHECK(info.scale_bytes == 0 && info.k_scales_offset == 0 && info.v_scales_offset == 0);
    // 6 tokens a row in pages of 4: two pages, the last holding 2.
    CHECK(info.num_indices == 4 && info.host_indptr[0] == 0 && info.host_indptr[2] == 4);
    CHECK(info.lengths[0] == 6 && info.lengths[1] == 6);
    CHECK(info.host_last_page_len[0] == 2 && info.host_first_slot[1] == 0);
    CHECK(info.indices == info.indptr + info.indices_offset - info.indptr_offset);
    pagedkv_paged_view_destroy(view);
    pagedkv_paged_view_destroy(NULL);

    // A zero query scores every token alike: the output is the mean of the row's values.
    enum { QHEADS = 4 };
    float zeros[2 * QHEADS * DIM];
    memset(zeros, 0, sizeof zeros);
    const int64_t qshape[4] = {2, QHEADS, 1, DIM};
    pagedkv_tensor *q = NULL, *out = NULL;
    OK(pagedkv_tensor_from_host(ctx, zeros, 2 * QHEADS * DIM, qshape, 4, PAGEDKV_DTYPE_F32, &q));
    VkBuffer buffer = VK_NULL_HANDLE;
    VkDeviceAddress address = 0;
    OK(pagedkv_tensor_vk_buffer(q, &buffer, &address));
    CHECK(buffer != VK_NULL_HANDLE && address != 0);
    OK(pagedkv_cache_cached_attention(cache, q, 0, 0.0f, &out));
    float got[2 * QHEADS * DIM];
    OK(pagedkv_tensor_to_host(out, got, 2 * QHEADS * DIM));
    int wrong = 0;
    for (unsigned b = 0; b < 2; ++b)
        for (unsigned h = 0; h < QHEADS; ++h)
            for (unsigned d = 0; d < DIM; ++d) {
                double mean = 0;
                for (long long p = 0; p < 6; ++p)
                    mean -= key_at(0, b, h / (QHEADS / HEADS), p, d) / 6.0;
                const double g = got[(b * QHEADS + h) * DIM + d];
                if (g - mean > 1e-3 * -mean || mean - g > 1e-3 * -mean) ++wrong;
            }
    CHECK(wrong == 0);
    pagedkv_tensor_destroy(out);
    out = NULL;
    const int64_t two_tokens[4] = {1, QHEADS, 2, DIM};
    pagedkv_tensor* q2 = NULL;
    OK(pagedkv_tensor_from_host(ctx, zeros, QHEADS * 2 * DIM, two_tokens, 4, PAGEDKV_DTYPE_F32,
                                &q2));
    FAILS(pagedkv_cache_cached_attention(cache, q2, 0, 0.0f, &out), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "one query token per row");
    CHECK(out == NULL);
    pagedkv_tensor_destroy(q2);
    pagedkv_tensor_destroy(q);

    FAILS(pagedkv_context_begin_recording(ctx, VK_NULL_HANDLE), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "command buffer is null");
    uint64_t id = 77;
    FAILS(pagedkv_context_end_recording(ctx, &id), PAGEDKV_ERROR_INVALID_ARGUMENT, "not recording");
    CHECK(id == 77);
    FAILS(pagedkv_context_finish_recording(ctx, 12345), PAGEDKV_ERROR_INVALID_ARGUMENT, "12345");
    pagedkv_context* adopted = NULL;
    FAILS(pagedkv_context_adopt(NULL, &adopted), PAGEDKV_ERROR_INVALID_ARGUMENT, "external");
    pagedkv_external_vulkan none;
    memset(&none, 0, sizeof none);
    FAILS(pagedkv_context_adopt(&none, &adopted), PAGEDKV_ERROR_INVALID_ARGUMENT, "");
    CHECK(adopted == NULL);

    check_get(cache, 1, 2, 6, (const unsigned[]){0, 1}, 0);
    pagedkv_cache_destroy(cache);
}

// Packed ragged (total, HEADS, DIM) keys (sign 1) or values (sign -1): token j of sequence
// seqs[i] (at position first[i] + j) is key_at(layer, seqs[i], head, position, dim).
static pagedkv_tensor* make_ragged(pagedkv_context* ctx, unsigned layer, const pagedkv_seq_id* seqs,
                                   const int64_t* first, const uint32_t* counts, size_t n,
                                   float sign) {
    size_t total = 0;
    for (size_t i = 0; i < n; ++i)
        total += counts[i];
    float* data = malloc((total ? total : 1) * HEADS * DIM * sizeof(float));
    if (!data) exit(1);
    size_t k = 0;
    for (size_t i = 0; i < n; ++i)
        for (uint32_t j = 0; j < counts[i]; ++j)
            for (unsigned h = 0; h < HEADS; ++h)
                for (unsigned d = 0; d < DIM; ++d)
                    data[k++] = sign * key_at(layer, (unsigned)seqs[i], h, first[i] + j, d);
    const int64_t shape[3] = {(int64_t)total, HEADS, DIM};
    pagedkv_tensor* t = NULL;
    OK(pagedkv_tensor_from_host(ctx, data, k, shape, 3, PAGEDKV_DTYPE_F32, &t));
    free(data);
    return t;
}

// Runs a step of the manager: every layer written, attention over layer 0.
static void manager_step(pagedkv_context* ctx, pagedkv_manager* m, const pagedkv_seq_id* seqs,
                         const uint32_t* counts, size_t n) {
    int64_t first[8];
    for (size_t i = 0; i < n; ++i)
        OK(pagedkv_manager_length(m, seqs[i], &first[i]));
    pagedkv_step* step = NULL;
    OK(pagedkv_manager_begin_step(m, seqs, counts, n, &step));
    uint32_t total = 0;
    OK(pagedkv_step_total_tokens(step, &total));
    for (unsigned l = 0; l < LAYERS; ++l) {
        pagedkv_tensor* k = make_ragged(ctx, l, seqs, first, counts, n, 1.0f);
        pagedkv_tensor* v = make_ragged(ctx, l, seqs, first, counts, n, -1.0f);
        OK(pagedkv_manager_write(m, step, l, k, v));
        if (l == 0) {
            pagedkv_tensor* out = NULL;
            OK(pagedkv_manager_attention(m, step, l, k, 0.0f, &out));
            const int64_t* shape = NULL;
            size_t ndim = 0;
            OK(pagedkv_tensor_shape(out, &shape, &ndim));
            CHECK(ndim == 3 && shape[0] == total && shape[1] == HEADS && shape[2] == DIM);
            pagedkv_tensor_destroy(out);
        }
        pagedkv_tensor_destroy(k);
        pagedkv_tensor_destroy(v);
    }
    pagedkv_paged_view* view = NULL;
    pagedkv_paged_view_info info;
    FAILS(pagedkv_step_view(step, LAYERS, &view, &info), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "out of range");
    if (pool_devices > 1) {  // one view per device is not built
        FAILS(pagedkv_step_view(step, 1, &view, &info), PAGEDKV_ERROR_NOT_IMPLEMENTED,
              "over 2 devices is not implemented");
        pagedkv_step_destroy(step);
        return;
    }
    OK(pagedkv_step_view(step, 1, &view, &info));
    CHECK(info.batch == n && info.num_tokens == total && info.host_slot_mapping != NULL);
    for (size_t i = 0; i < n; ++i)
        CHECK(info.lengths[i] == first[i] + counts[i]);
    pagedkv_paged_view_destroy(view);
    pagedkv_step_destroy(step);
}

// Checks a sequence's gathered (HEADS, length, DIM) K and V against key_at.
static void check_sequence(const pagedkv_manager* m, pagedkv_seq_id seq, unsigned as_seq) {
    int64_t len = -1;
    OK(pagedkv_manager_length(m, seq, &len));
    for (unsigned l = 0; l < LAYERS; ++l) {
        pagedkv_tensor *k = NULL, *v = NULL;
        OK(pagedkv_manager_gather(m, seq, l, &k, &v));
        const size_t n = (size_t)HEADS * (size_t)len * DIM;
        float* kh = malloc((n ? n : 1) * sizeof(float));
        float* vh = malloc((n ? n : 1) * sizeof(float));
        if (!kh || !vh) exit(1);
        OK(pagedkv_tensor_to_host(k, kh, n));
        OK(pagedkv_tensor_to_host(v, vh, n));
        size_t i = 0;
        for (unsigned h = 0; h < HEADS; ++h)
            for (int64_t p = 0; p < len; ++p)
                for (unsigned d = 0; d < DIM; ++d, ++i) {
                    CHECK(kh[i] == key_at(l, as_seq, h, p, d));
                    CHECK(vh[i] == -key_at(l, as_seq, h, p, d));
                }
        free(kh);
        free(vh);
        pagedkv_tensor_destroy(k);
        pagedkv_tensor_destroy(v);
    }
}

static void test_manager(pagedkv_context* ctx, pagedkv_pool* pool) {
    pagedkv_manager_options o;
    pagedkv_manager_options_init(&o);
    CHECK(o.watermark == 0.01 && o.prefix_caching == 0);
    pagedkv_manager* m = NULL;
    o.watermark = 1.5;
    FAILS(pagedkv_manager_create(pool, &o, &m), PAGEDKV_ERROR_INVALID_ARGUMENT, "watermark");
    CHECK(m == NULL);
    OK(pagedkv_manager_create(pool, NULL, &m));
    pagedkv_seq_id a = 0, b = 0, c = 0;
    const int32_t prompt[3] = {5, 6, 7};
    OK(pagedkv_manager_add_sequence(m, NULL, 0, 0, &a));
    OK(pagedkv_manager_add_sequence(m, prompt, 3, 9, &b));
    CHECK(a != b);
    const pagedkv_seq_id ab[2] = {a, b};
    const uint32_t prefill[2] = {6, 3};
    int ok = 0;
    OK(pagedkv_manager_can_allocate(m, ab, prefill, 2, &ok));
    CHECK(ok == 1);
    const uint32_t too_many[2] = {BLOCKS * BLOCK, 1};
    OK(pagedkv_manager_can_allocate(m, ab, too_many, 2, &ok));
    CHECK(ok == 0);
    FAILS(pagedkv_manager_allocate(m, ab, too_many, 2, 0), PAGEDKV_ERROR_OUT_OF_BLOCKS, "needs");
    OK(pagedkv_manager_allocate(m, ab, prefill, 2, 2));
    manager_step(ctx, m, ab, prefill, 2);
    const uint32_t decode[2] = {1, 1};
    manager_step(ctx, m, ab, decode, 2);
    check_sequence(m, a, (unsigned)a);
    check_sequence(m, b, (unsigned)b);
    // Fork, rollback, free.
    OK(pagedkv_manager_fork(m, a, &c));
    int64_t len = 0;
    OK(pagedkv_manager_length(m, c, &len));
    CHECK(len == 7);
    OK(pagedkv_manager_truncate(m, c, -2));
    OK(pagedkv_manager_length(m, c, &len));
    CHECK(len == 5);
    size_t count = 0;
    OK(pagedkv_manager_block_table(m, c, NULL, 0, &count));
    CHECK(count == 2);
    uint32_t pages[1];
    FAILS(pagedkv_manager_block_table(m, c, pages, 1, &count), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "capacity 1");
    // Without layer windows every layer holds every token in the one table.
    int64_t first = -1, held = -1;
    OK(pagedkv_manager_mask_range(m, c, 1, &first, &held));
    CHECK(first == 0 && held == 5);
    OK(pagedkv_manager_held(m, c, 0, &held));
    CHECK(held == 5);
    OK(pagedkv_manager_block_table_of_layer(m, c, 1, NULL, 0, &count));
    CHECK(count == 2);
    pagedkv_seq_id ids[4];
    OK(pagedkv_manager_sequences(m, ids, 4, &count));
    CHECK(count == 3 && ids[0] == a && ids[1] == b && ids[2] == c);
    FAILS(pagedkv_manager_free(m, 12345), PAGEDKV_ERROR_INVALID_ARGUMENT, "unknown sequence 12345");
    FAILS(pagedkv_manager_length(m, 12345, &len), PAGEDKV_ERROR_INVALID_ARGUMENT, "unknown");
    FAILS(pagedkv_manager_write(m, NULL, 0, NULL, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "step is NULL");
    OK(pagedkv_manager_free(m, a));
    check_sequence(m, c, (unsigned)a);  // its pages were shared with a
    check_valid(pool);
    // The host tier: swapped out and back, the K/V is the same.
    int swapped = -1;
    OK(pagedkv_manager_swap_out(m, c));
    OK(pagedkv_manager_is_swapped(m, c, &swapped));
    CHECK(swapped == 1);
    OK(pagedkv_manager_length(m, c, &len));
    CHECK(len == 5);
    pagedkv_pool_stats st;
    OK(pagedkv_pool_get_stats(pool, &st));
    CHECK(st.host_blocks == BLOCKS && st.used_host_blocks == 2);
    FAILS(pagedkv_manager_swap_out(m, c), PAGEDKV_ERROR_INVALID_ARGUMENT, "already swapped out");
    FAILS(pagedkv_manager_block_table(m, c, NULL, 0, &count), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "swapped out");
    FAILS(pagedkv_manager_is_swapped(m, c, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT, "out_swapped");
    check_valid(pool);
    OK(pagedkv_manager_swap_in(m, c));
    OK(pagedkv_manager_is_swapped(m, c, &swapped));
    CHECK(swapped == 0);
    FAILS(pagedkv_manager_swap_in(m, c), PAGEDKV_ERROR_INVALID_ARGUMENT, "not swapped out");
    check_sequence(m, c, (unsigned)a);
    check_valid(pool);
    pagedkv_manager_destroy(m);
    pagedkv_manager_destroy(NULL);
    pagedkv_step_destroy(NULL);
    CHECK(used_blocks(pool) == 0);
}

// Hybrid models: WINDOW_0 tokens of sliding window on layer 0, layer 1 full attention.
enum { WINDOW_0 = 5 };
static const uint32_t hybrid_windows[LAYERS] = {WINDOW_0, 0};

// Checks what layer 0 (sliding) and layer 1 (full) of a sequence of length len hold: held,
// mask_range and the gathered K/V of positions [first, len).
static void check_hybrid_sequence(const pagedkv_manager* m, pagedkv_seq_id seq, int64_t len) {
    int64_t n = -1;
    OK(pagedkv_manager_length(m, seq, &n));
    CHECK(n == len);
    for (unsigned l = 0; l < LAYERS; ++l) {
        const int64_t w = hybrid_windows[l];
        const int64_t want_first = w > 0 && len > w ? len - w : 0;
        int64_t first = -1, count = -1, held = -1;
        OK(pagedkv_manager_mask_range(m, seq, l, &first, &count));
        OK(pagedkv_manager_held(m, seq, l, &held));
        CHECK(first == want_first && count == len - want_first && held == count);
        pagedkv_tensor *k = NULL, *v = NULL;
        OK(pagedkv_manager_gather(m, seq, l, &k, &v));
        const int64_t* dims = NULL;
        size_t rank = 0;
        OK(pagedkv_tensor_shape(k, &dims, &rank));
        CHECK(rank == 3 && dims[0] == HEADS && dims[1] == held && dims[2] == DIM);
        const size_t total = (size_t)HEADS * (size_t)held * DIM;
        float* kh = malloc((total ? total : 1) * sizeof(float));
        float* vh = malloc((total ? total : 1) * sizeof(float));
        if (!kh || !vh) exit(1);
        OK(pagedkv_tensor_to_host(k, kh, total));
        OK(pagedkv_tensor_to_host(v, vh, total));
        size_t i = 0, wrong = 0;
        for (unsigned h = 0; h < HEADS; ++h)
            for (int64_t p = 0; p < held; ++p)
                for (unsigned d = 0; d < DIM; ++d, ++i)
                    if (kh[i] != key_at(l, (unsigned)seq, h, first + p, d) ||
                        vh[i] != -key_at(l, (unsigned)seq, h, first + p, d))
                        ++wrong;
        CHECK(wrong == 0);
        free(kh);
        free(vh);
        pagedkv_tensor_destroy(k);
        pagedkv_tensor_destroy(v);
    }
}

// A manager over a hybrid pool (layer_windows hybrid_windows): steps, what each layer holds,
// each layer's block table, and the errors (bad layer, unknown sequence, NULL out-params, a
// rollback past the window, what is not implemented) changing nothing.
static void test_hybrid(pagedkv_context* ctx, pagedkv_pool* pool) {
    pagedkv_pool_stats st;
    OK(pagedkv_pool_get_stats(pool, &st));
    // A page holds one group's layer: one layer of K and V.
    CHECK(st.block_bytes == (uint64_t)2 * HEADS * BLOCK * DIM * sizeof(float));
    pagedkv_manager* m = NULL;
    pagedkv_manager_options o;
    pagedkv_manager_options_init(&o);
    o.prefix_caching = 1;
    FAILS(pagedkv_manager_create(pool, &o, &m), PAGEDKV_ERROR_NOT_IMPLEMENTED, "layer_windows");
    CHECK(m == NULL);
    OK(pagedkv_manager_create(pool, NULL, &m));
    pagedkv_seq_id a = 0, b = 0;
    OK(pagedkv_manager_add_sequence(m, NULL, 0, 0, &a));
    OK(pagedkv_manager_add_sequence(m, NULL, 0, 0, &b));
    const pagedkv_seq_id ab[2] = {a, b};
    const uint32_t prefill[2] = {9, 3}, decode[2] = {1, 1};
    manager_step(ctx, m, ab, prefill, 2);
    check_hybrid_sequence(m, a, 9);
    check_hybrid_sequence(m, b, 3);
    for (int i = 0; i < 4; ++i)
        manager_step(ctx, m, ab, decode, 2);
    check_hybrid_sequence(m, a, 13);
    check_hybrid_sequence(m, b, 7);

    // Each layer's table: pagedkv_manager_block_table is layer 0's; the full layer's holds every
    // page, the sliding layer's starts at the page of its first held token (position 8: page 2).
    size_t full = 0, sliding = 0, plain = 0;
    OK(pagedkv_manager_block_table_of_layer(m, a, 1, NULL, 0, &full));
    CHECK(full == (13 + BLOCK - 1) / BLOCK);
    uint32_t pages_full[8], pages_plain[8], pages_sliding[8];
    OK(pagedkv_manager_block_table_of_layer(m, a, 1, pages_full, 8, &full));
    OK(pagedkv_manager_block_table_of_layer(m, a, 0, pages_sliding, 8, &sliding));
    OK(pagedkv_manager_block_table(m, a, pages_plain, 8, &plain));
    CHECK(plain == sliding && memcmp(pages_sliding, pages_plain, plain * sizeof(uint32_t)) == 0);
    // Pages 2 and 3 hold positions 8..12; the last step's release of page 1 may be pending.
    CHECK(sliding >= 2 && sliding <= 3);
    for (size_t i = 0; i < sliding; ++i)
        for (size_t j = 0; j < full; ++j)
            CHECK(pages_sliding[i] != pages_full[j]);  // the groups never share a page

    // Errors: nothing written, nothing changed.
    pagedkv_cache* kept = NULL;
    const uint64_t used = used_blocks(pool);
    int64_t first = -7, count = -7, held = -7;
    size_t n = 99;
    uint32_t short_table[1] = {77};
    FAILS(pagedkv_manager_held(m, a, LAYERS, &held), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "layer 2 out of range");
    FAILS(pagedkv_manager_mask_range(m, a, LAYERS, &first, &count), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "layer 2 out of range");
    FAILS(pagedkv_manager_block_table_of_layer(m, a, LAYERS, NULL, 0, &n),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "layer 2 out of range");
    FAILS(pagedkv_manager_held(m, 12345, 0, &held), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "unknown sequence 12345");
    FAILS(pagedkv_manager_mask_range(m, 12345, 0, &first, &count), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "unknown sequence 12345");
    FAILS(pagedkv_manager_block_table_of_layer(m, 12345, 0, NULL, 0, &n),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "unknown sequence 12345");
    FAILS(pagedkv_manager_block_table_of_layer(m, a, 1, short_table, 1, &n),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "capacity 1");
    FAILS(pagedkv_manager_block_table_of_layer(m, a, 1, NULL, 0, NULL),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "out_count");
    FAILS(pagedkv_manager_held(m, a, 0, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT, "out_held");
    FAILS(pagedkv_manager_mask_range(m, a, 0, NULL, &count), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "out_first");
    FAILS(pagedkv_manager_mask_range(m, a, 0, &first, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "out_count");
    FAILS(pagedkv_manager_held(NULL, a, 0, &held), PAGEDKV_ERROR_INVALID_ARGUMENT, "manager");
    FAILS(pagedkv_manager_mask_range(NULL, a, 0, &first, &count), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "manager");
    CHECK(first == -7 && count == -7 && held == -7 && n == 99 && short_table[0] == 77);
    // Layer 0 holds positions 8..12: keeping 5 tokens would need position 0.
    FAILS(pagedkv_manager_truncate(m, a, 5), PAGEDKV_ERROR_INVALID_ARGUMENT, "left the window");
    FAILS(pagedkv_manager_swap_out(m, a), PAGEDKV_ERROR_NOT_IMPLEMENTED, "layer_windows");
    FAILS(pagedkv_cache_create_static(pool, 1, 8, &kept), PAGEDKV_ERROR_NOT_IMPLEMENTED,
          "layer_windows");
    CHECK(kept == NULL);
    CHECK(used_blocks(pool) == used);
    check_hybrid_sequence(m, a, 13);
    check_hybrid_sequence(m, b, 7);
    check_valid(pool);

    // Rolling back within the window works, and the window follows.
    OK(pagedkv_manager_truncate(m, a, 11));
    check_hybrid_sequence(m, a, 11);
    pagedkv_seq_id c = 0;
    OK(pagedkv_manager_fork(m, a, &c));
    OK(pagedkv_manager_free(m, a));
    const uint32_t one = 1;
    manager_step(ctx, m, &c, &one, 1);  // written as sequence c from position 11
    OK(pagedkv_manager_mask_range(m, c, 0, &first, &count));
    CHECK(first == 12 - WINDOW_0 && count == WINDOW_0);
    OK(pagedkv_manager_held(m, c, 1, &held));
    CHECK(held == 12);
    check_valid(pool);
    pagedkv_manager_destroy(m);
    CHECK(used_blocks(pool) == 0);
}

static pagedkv_pool_stats pool_stats(const pagedkv_pool* pool) {
    pagedkv_pool_stats s;
    OK(pagedkv_pool_get_stats(pool, &s));
    return s;
}

// Prefix caching through C: a prompt's pages registered by a step given its token ids stay
// cached (evictable) after the sequence ends, and the same prompt and salt hits them and gathers
// the same K/V; another salt does not. Needs a pool no other manager has cached pages in.
static void test_prefix_caching(pagedkv_context* ctx, pagedkv_pool* pool) {
    pagedkv_manager_options o;
    pagedkv_manager_options_init(&o);
    o.prefix_caching = 1;
    pagedkv_manager* m = NULL;
    OK(pagedkv_manager_create(pool, &o, &m));
    enum { PROMPT = 2 * BLOCK + 1 };  // two full pages and one token
    int32_t prompt[PROMPT];
    for (int i = 0; i < PROMPT; ++i)
        prompt[i] = 100 + 7 * i;
    pagedkv_seq_id a = 0;
    OK(pagedkv_manager_add_sequence(m, prompt, PROMPT, 3, &a));
    int64_t len = -1;
    OK(pagedkv_manager_length(m, a, &len));
    CHECK(len == 0);  // nothing cached yet

    const uint32_t counts[1] = {PROMPT};
    const int32_t* ids[1] = {prompt};
    const int32_t* no_ids[2] = {NULL, prompt};
    const pagedkv_seq_id two[2] = {a, a};
    pagedkv_step* step = NULL;
    FAILS(pagedkv_manager_begin_step_tokens(m, &a, NULL, counts, 1, &step),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "token_ids is NULL");
    FAILS(pagedkv_manager_begin_step_tokens(m, two, no_ids, counts, 1, &step),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "token_ids[0] is NULL");
    CHECK(step == NULL);
    OK(pagedkv_manager_length(m, a, &len));
    CHECK(len == 0);  // the refusals changed nothing
    OK(pagedkv_manager_begin_step_tokens(m, &a, ids, counts, 1, &step));
    const int64_t first[1] = {0};
    for (unsigned l = 0; l < LAYERS; ++l) {
        pagedkv_tensor* k = make_ragged(ctx, l, &a, first, counts, 1, 1.0f);
        pagedkv_tensor* v = make_ragged(ctx, l, &a, first, counts, 1, -1.0f);
        OK(pagedkv_manager_write(m, step, l, k, v));
        pagedkv_tensor_destroy(k);
        pagedkv_tensor_destroy(v);
    }
    pagedkv_step_destroy(step);
    OK(pagedkv_manager_free(m, a));

    pagedkv_pool_stats s = pool_stats(pool);
    CHECK(s.cached_blocks == 2 && s.used_blocks == 0);
    CHECK(s.used_blocks + s.free_blocks + s.cached_blocks == s.num_blocks);
    pagedkv_prefix_cache_stats ps;
    OK(pagedkv_manager_prefix_stats(m, &ps));
    CHECK(ps.queries == 1 && ps.hit_tokens == 0 && ps.query_tokens == PROMPT);
    CHECK(ps.cached_pages == 2 && ps.evictions == 0);
    CHECK(ps.spilled_pages == 0 && ps.host_hit_pages == 0);  // no host tier

    pagedkv_seq_id b = 0, c = 0;
    OK(pagedkv_manager_add_sequence(m, prompt, PROMPT, 3, &b));
    OK(pagedkv_manager_length(m, b, &len));
    CHECK(len == 2 * BLOCK);  // both full pages hit; the last token is left to compute
    check_sequence(m, b, (unsigned)a);
    s = pool_stats(pool);
    CHECK(s.cached_blocks == 0 && s.used_blocks == 2);
    OK(pagedkv_manager_add_sequence(m, prompt, PROMPT, 4, &c));
    OK(pagedkv_manager_length(m, c, &len));
    CHECK(len == 0);  // another salt never hits
    OK(pagedkv_manager_prefix_stats(m, &ps));
    CHECK(ps.queries == 3 && ps.hit_tokens == 2 * BLOCK && ps.query_tokens == 3 * PROMPT);
    CHECK(ps.cached_pages == 2);
    FAILS(pagedkv_manager_prefix_stats(m, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT, "out_stats");
    FAILS(pagedkv_manager_prefix_stats(NULL, &ps), PAGEDKV_ERROR_INVALID_ARGUMENT, "manager");
    FAILS(pagedkv_manager_reset_prefix_cache(NULL), PAGEDKV_ERROR_INVALID_ARGUMENT, "manager");

    OK(pagedkv_manager_free(m, b));
    OK(pagedkv_manager_free(m, c));
    CHECK(pool_stats(pool).cached_blocks == 2);
    OK(pagedkv_manager_reset_prefix_cache(m));
    OK(pagedkv_manager_prefix_stats(m, &ps));
    CHECK(ps.queries == 0 && ps.cached_pages == 0);
    s = pool_stats(pool);
    CHECK(s.cached_blocks == 0 && s.free_blocks == s.num_blocks);
    check_valid(pool);
    pagedkv_manager_destroy(m);
}

// Wrapped tensors: a view of a VkBuffer the caller holds (here a library tensor's own buffer,
// which has every usage wrap needs), read in place as K/V and by to_host, with its errors.
static void test_wrap(pagedkv_context* ctx, pagedkv_pool* pool) {
    // Row 0's K of 3 tokens, then its V, at byte 16 of one f16 buffer.
    enum { N = HEADS * 3 * DIM };
    float data[4 + 2 * N];
    for (unsigned i = 0; i < 4; ++i)
        data[i] = -1.0f;
    for (unsigned h = 0; h < HEADS; ++h)
        for (unsigned s = 0; s < 3; ++s)
            for (unsigned d = 0; d < DIM; ++d) {
                data[4 + (h * 3 + s) * DIM + d] = key_at(0, 0, h, s, d) / 1024.0f;
                data[4 + N + (h * 3 + s) * DIM + d] = -key_at(0, 0, h, s, d) / 1024.0f;
            }
    const int64_t flat[1] = {4 + 2 * N};
    pagedkv_tensor* holder = NULL;
    OK(pagedkv_tensor_from_host(ctx, data, 4 + 2 * N, flat, 1, PAGEDKV_DTYPE_F32, &holder));
    VkBuffer buffer = VK_NULL_HANDLE;
    VkDeviceAddress address = 0;
    OK(pagedkv_tensor_vk_buffer(holder, &buffer, &address));
    const int64_t shape[4] = {1, HEADS, 3, DIM};
    pagedkv_tensor *k = NULL, *v = NULL;
    FAILS(pagedkv_tensor_wrap(ctx, VK_NULL_HANDLE, 16, VK_WHOLE_SIZE, shape, 4, PAGEDKV_DTYPE_F32,
                              &k),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "VkBuffer is null");
    FAILS(pagedkv_tensor_wrap(ctx, buffer, 18, VK_WHOLE_SIZE, shape, 4, PAGEDKV_DTYPE_F32, &k),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "offset 18 is not a multiple of 4");
    FAILS(pagedkv_tensor_wrap(ctx, buffer, 16, 64, shape, 4, PAGEDKV_DTYPE_F32, &k),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "needs bytes [16, 112), the buffer has 64");
    FAILS(pagedkv_tensor_wrap(ctx, buffer, 16, VK_WHOLE_SIZE, shape, 4, (pagedkv_dtype)9, &k),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "dtype 9");
    CHECK(k == NULL);
    OK(pagedkv_tensor_wrap(ctx, buffer, 16, VK_WHOLE_SIZE, shape, 4, PAGEDKV_DTYPE_F32, &k));
    OK(pagedkv_tensor_wrap(ctx, buffer, 16 + N * 4, VK_WHOLE_SIZE, shape, 4, PAGEDKV_DTYPE_F32,
                           &v));
    VkBuffer wrapped = VK_NULL_HANDLE;
    VkDeviceAddress wrapped_address = 0;
    VkDeviceSize offset = 0;
    OK(pagedkv_tensor_vk_buffer(k, &wrapped, &wrapped_address));
    OK(pagedkv_tensor_vk_offset(k, &offset));
    CHECK(wrapped == buffer && offset == 16 && wrapped_address == address + 16);
    float back[N];
    OK(pagedkv_tensor_to_host(v, back, N));
    CHECK(memcmp(back, data + 4 + N, sizeof back) == 0);

    pagedkv_cache* cache = NULL;
    OK(pagedkv_cache_create_dynamic(pool, &cache));
    pagedkv_tensor *keys = NULL, *values = NULL;
    OK(pagedkv_cache_update(cache, k, v, 0, NULL, &keys, &values));
    float got[N];
    OK(pagedkv_tensor_to_host(keys, got, N));
    CHECK(memcmp(got, data + 4, sizeof got) == 0);
    OK(pagedkv_tensor_to_host(values, got, N));
    CHECK(memcmp(got, data + 4 + N, sizeof got) == 0);
    pagedkv_tensor_destroy(keys);
    pagedkv_tensor_destroy(values);
    pagedkv_tensor_destroy(k);
    pagedkv_tensor_destroy(v);
    pagedkv_cache_destroy(cache);
    pagedkv_tensor_destroy(holder);  // the buffer's owner goes last
}

// A quantized pool through the C API: int8 and fp8 pages, compute_dtype chosen or defaulted,
// values read back within the quantization error of each row (one scale per row of DIM).
static void test_quantized(pagedkv_context* ctx) {
    const pagedkv_dtype kinds[2] = {PAGEDKV_DTYPE_INT8, PAGEDKV_DTYPE_FP8E4M3};
    for (int q = 0; q < 2; ++q) {
        pagedkv_pool_config cfg;
        pagedkv_pool_config_init(&cfg);
        CHECK(cfg.compute_dtype == PAGEDKV_DTYPE_DEFAULT);
        cfg.num_layers = LAYERS;
        cfg.num_kv_heads = HEADS;
        cfg.head_dim = DIM;
        cfg.block_size = BLOCK;
        cfg.num_blocks = 8;
        cfg.dtype = kinds[q];
        pagedkv_pool* pool = NULL;
        OK(pagedkv_pool_create(ctx, &cfg, &pool));
        pagedkv_dtype compute = PAGEDKV_DTYPE_DEFAULT;
        OK(pagedkv_pool_compute_dtype(pool, &compute));
        CHECK(compute == PAGEDKV_DTYPE_F16);
        pagedkv_pool_stats stats;
        OK(pagedkv_pool_get_stats(pool, &stats));
        CHECK(stats.block_bytes == (uint64_t)LAYERS * 2 * HEADS * BLOCK * (DIM + 4));
        pagedkv_pool_destroy(pool);

        cfg.compute_dtype = PAGEDKV_DTYPE_INT8;
        FAILS(pagedkv_pool_create(ctx, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT,
              "compute_dtype int8");
        cfg.compute_dtype = PAGEDKV_DTYPE_F32;
        OK(pagedkv_pool_create(ctx, &cfg, &pool));
        OK(pagedkv_pool_compute_dtype(pool, &compute));
        CHECK(compute == PAGEDKV_DTYPE_F32);
        pagedkv_cache* cache = NULL;
        OK(pagedkv_cache_create_dynamic(pool, &cache));
        append_all(ctx, cache, 1, 0, 5);
        pagedkv_tensor *k = NULL, *v = NULL;
        OK(pagedkv_cache_get(cache, 1, &k, &v));
        pagedkv_dtype got_type = PAGEDKV_DTYPE_DEFAULT;
        OK(pagedkv_tensor_dtype(k, &got_type));
        CHECK(got_type == PAGEDKV_DTYPE_F32);
        float got[HEADS * 5 * DIM];
        OK(pagedkv_tensor_to_host(k, got, HEADS * 5 * DIM));
        size_t i = 0, wrong = 0;
        for (unsigned h = 0; h < HEADS; ++h)
            for (unsigned p = 0; p < 5; ++p) {
                // Error bound: half a code step of the row's largest value (int8: amax / 254;
                // fp8: 1/16 of each value's magnitude, 3 mantissa bits).
                const float amax = key_at(1, 0, h, p, DIM - 1);
                for (unsigned d = 0; d < DIM; ++d, ++i) {
                    const float want = key_at(1, 0, h, p, d);
                    const float err = got[i] > want ? got[i] - want : want - got[i];
                    if (err > (q == 0 ? amax / 250.0f : want / 15.0f)) ++wrong;
                }
            }
        CHECK(wrong == 0);
        pagedkv_tensor_destroy(k);
        pagedkv_tensor_destroy(v);
        // The paged view says where the scales are: after each page's codes.
        pagedkv_paged_view* view = NULL;
        pagedkv_paged_view_info info;
        memset(&info, 0, sizeof info);
        OK(pagedkv_cache_paged_view(cache, 1, &view, &info));
        CHECK(info.dtype == kinds[q] && info.scale_bytes == 4);
        CHECK(info.k_scales_offset == info.k_offset + (uint64_t)HEADS * BLOCK * DIM);
        CHECK(info.v_scales_offset == info.v_offset + (uint64_t)HEADS * BLOCK * DIM);
        pagedkv_paged_view_destroy(view);
        pagedkv_cache_destroy(cache);
        check_valid(pool);
        pagedkv_pool_destroy(pool);
    }
}

int main(void) {
    test_errors_and_names();

    pagedkv_context* ctx = NULL;
    OK(pagedkv_context_create(-1, 1, &ctx));
    const char* name = NULL;
    OK(pagedkv_context_device_name(ctx, &name));
    CHECK(name != NULL && name[0] != '\0');
    printf("device: %s, pagedkv %s\n", name, pagedkv_version());

    pagedkv_pool_config cfg;
    memset(&cfg, 0xff, sizeof cfg);
    pagedkv_pool_config_init(&cfg);
    CHECK(cfg.block_size == 16 && cfg.dtype == PAGEDKV_DTYPE_F16 && cfg.num_blocks == 0 &&
          cfg.v_head_dim == 0 && cfg.max_slab_bytes == 0 &&
          cfg.layout == PAGEDKV_PAGE_LAYOUT_AUTO && cfg.num_host_blocks == 0 &&
          cfg.layer_windows == NULL && cfg.num_layer_windows == 0);
    pagedkv_pool* pool = (pagedkv_pool*)ctx;
    FAILS(pagedkv_pool_create(ctx, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT, "num_layers");
    CHECK(pool == (pagedkv_pool*)ctx);
    cfg.num_layers = LAYERS;
    cfg.num_kv_heads = HEADS;
    cfg.head_dim = DIM;
    cfg.block_size = BLOCK;
    cfg.num_blocks = BLOCKS;
    cfg.num_host_blocks = BLOCKS;
    cfg.dtype = (pagedkv_dtype)7;
    FAILS(pagedkv_pool_create(ctx, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT, "dtype 7");
    cfg.dtype = PAGEDKV_DTYPE_F32;
    cfg.layout = (pagedkv_page_layout)258;
    FAILS(pagedkv_pool_create(ctx, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT, "layout 258");
    CHECK(pool == (pagedkv_pool*)ctx);
    cfg.layout = PAGEDKV_PAGE_LAYOUT_AUTO;
    // Layer windows: one per layer, and given when counted.
    const uint32_t three_windows[3] = {WINDOW_0, 0, 0};
    cfg.layer_windows = three_windows;
    cfg.num_layer_windows = 3;
    FAILS(pagedkv_pool_create(ctx, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "layer_windows has 3 entries, the pool has 2 layers");
    cfg.layer_windows = NULL;
    cfg.num_layer_windows = LAYERS;
    FAILS(pagedkv_pool_create(ctx, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "layer_windows is NULL");
    CHECK(pool == (pagedkv_pool*)ctx);
    cfg.num_layer_windows = 0;
    // A hybrid pool.
    cfg.layer_windows = hybrid_windows;
    cfg.num_layer_windows = LAYERS;
    OK(pagedkv_pool_create(ctx, &cfg, &pool));
    test_hybrid(ctx, pool);
    check_valid(pool);
    pagedkv_pool_destroy(pool);
    cfg.layer_windows = NULL;
    cfg.num_layer_windows = 0;
    OK(pagedkv_pool_create(ctx, &cfg, &pool));
    // AUTO is resolved when the pool is made.
    pagedkv_page_layout layout = PAGEDKV_PAGE_LAYOUT_AUTO;
    FAILS(pagedkv_pool_layout(pool, NULL), PAGEDKV_ERROR_INVALID_ARGUMENT, "out_layout");
    OK(pagedkv_pool_layout(pool, &layout));
    CHECK(layout == PAGEDKV_PAGE_LAYOUT_HEAD_MAJOR || layout == PAGEDKV_PAGE_LAYOUT_TOKEN_MAJOR);
    printf("page layout: %s\n",
           layout == PAGEDKV_PAGE_LAYOUT_TOKEN_MAJOR ? "token-major" : "head-major");
    pagedkv_pool_stats stats;
    OK(pagedkv_pool_get_stats(pool, &stats));
    CHECK(stats.num_blocks == BLOCKS && stats.free_blocks == BLOCKS && stats.used_blocks == 0);
    CHECK(stats.block_bytes == (uint64_t)LAYERS * 2 * HEADS * BLOCK * DIM * sizeof(float));

    // Tensors: shape checks and the to_host count.
    const float four[4] = {1, 2, 3, 4};
    const int64_t wrong_shape[2] = {3, 2};
    pagedkv_tensor* t = NULL;
    FAILS(pagedkv_tensor_from_host(ctx, four, 4, wrong_shape, 2, PAGEDKV_DTYPE_F16, &t),
          PAGEDKV_ERROR_INVALID_ARGUMENT, "holds 6 elements, data has 4");
    CHECK(t == NULL);
    const int64_t good_shape[2] = {2, 2};
    OK(pagedkv_tensor_from_host(ctx, four, 4, good_shape, 2, PAGEDKV_DTYPE_BF16, &t));
    pagedkv_dtype dtype = PAGEDKV_DTYPE_F32;
    OK(pagedkv_tensor_dtype(t, &dtype));
    CHECK(dtype == PAGEDKV_DTYPE_BF16);
    float back[4] = {0, 0, 0, 0};
    FAILS(pagedkv_tensor_to_host(t, back, 3), PAGEDKV_ERROR_INVALID_ARGUMENT, "count is 3");
    OK(pagedkv_tensor_to_host(t, back, 4));
    CHECK(memcmp(back, four, sizeof four) == 0);
    pagedkv_tensor_destroy(t);

    test_wrap(ctx, pool);
    test_dynamic(ctx, pool);
    test_static(ctx, pool);
    test_sliding_window(ctx, pool);
    test_destroy_order(ctx);
    test_quantized(ctx);
    test_embedding(ctx, pool);
    test_manager(ctx, pool);
    CHECK(used_blocks(pool) == 0);
    check_valid(pool);
    pagedkv_pool_destroy(pool);

    // The other layout, asked for by name: the same results.
    cfg.layout = layout == PAGEDKV_PAGE_LAYOUT_TOKEN_MAJOR ? PAGEDKV_PAGE_LAYOUT_HEAD_MAJOR
                                                           : PAGEDKV_PAGE_LAYOUT_TOKEN_MAJOR;
    OK(pagedkv_pool_create(ctx, &cfg, &pool));
    pagedkv_page_layout other = PAGEDKV_PAGE_LAYOUT_AUTO;
    OK(pagedkv_pool_layout(pool, &other));
    CHECK(other == cfg.layout);
    test_dynamic(ctx, pool);
    test_static(ctx, pool);
    test_sliding_window(ctx, pool);
    test_embedding(ctx, pool);
    test_prefix_caching(ctx, pool);
    CHECK(used_blocks(pool) == 0);
    check_valid(pool);
    pagedkv_pool_destroy(pool);

    // A pool over two devices (a second logical device on the same physical one): the
    // manager's calls take every head on the first context.
    pagedkv_context* second = NULL;
    OK(pagedkv_context_create(-1, 1, &second));
    pagedkv_context* both[2] = {ctx, second};
    pagedkv_context* same[2] = {ctx, ctx};
    pagedkv_context* with_null[2] = {ctx, NULL};
    cfg.layout = PAGEDKV_PAGE_LAYOUT_AUTO;
    FAILS(pagedkv_pool_create_on_devices(NULL, 2, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "contexts");
    FAILS(pagedkv_pool_create_on_devices(same, 2, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "the same Context");
    FAILS(pagedkv_pool_create_on_devices(with_null, 2, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "null Context");
    FAILS(pagedkv_pool_create_on_devices(both, 0, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "no devices");
    OK(pagedkv_pool_create_on_devices(both, 2, &cfg, &pool));
    CHECK(pagedkv_pool_num_devices(pool) == 2);
    pool_devices = 2;
    test_dynamic(ctx, pool);
    test_manager(ctx, pool);
    CHECK(used_blocks(pool) == 0);
    check_valid(pool);
    pagedkv_pool_destroy(pool);
    // A hybrid pool over two devices.
    cfg.layer_windows = three_windows;
    cfg.num_layer_windows = 3;
    FAILS(pagedkv_pool_create_on_devices(both, 2, &cfg, &pool), PAGEDKV_ERROR_INVALID_ARGUMENT,
          "layer_windows has 3 entries");
    cfg.layer_windows = hybrid_windows;
    cfg.num_layer_windows = LAYERS;
    OK(pagedkv_pool_create_on_devices(both, 2, &cfg, &pool));
    CHECK(pagedkv_pool_num_devices(pool) == 2);
    test_hybrid(ctx, pool);
    pool_devices = 1;
    check_valid(pool);
    pagedkv_pool_destroy(pool);
    cfg.layer_windows = NULL;
    cfg.num_layer_windows = 0;
    OK(pagedkv_context_synchronize(second));
    pagedkv_context_destroy(second);

    OK(pagedkv_context_synchronize(ctx));
    const char* const* messages = NULL;
    size_t count = 99;
    OK(pagedkv_context_validation_messages(ctx, &messages, &count));
    for (size_t i = 0; i < count; ++i)
        fprintf(stderr, "validation: %s\n", messages[i]);
    CHECK(count == 0);
    pagedkv_context_destroy(ctx);

    if (failures) fprintf(stderr, "%d checks failed\n", failures);
    return failures == 0 ? 0 : 1;
}
