/* The C consumer: a C11 program (compiled and linked by the C compiler, no C++ anywhere in its
 * project) that makes a context, a pool and a cache through pagedkv.h, writes a few tokens,
 * reads them back and checks the pool's statistics. Exits non-zero on any failure or validation
 * message. */
#include <pagedkv/pagedkv.h>

#include <stdio.h>
#include <string.h>

#define TRY(call)                                                                           \
    do {                                                                                    \
        pagedkv_status try_status_ = (call);                                                \
        if (try_status_ != PAGEDKV_OK) {                                                    \
            fprintf(stderr, "%s failed: %s: %s\n", #call, pagedkv_status_name(try_status_), \
                    pagedkv_last_error_message());                                          \
            return 1;                                                                       \
        }                                                                                   \
    } while (0)

enum { HEADS = 2, DIM = 8, TOKENS = 5 };

static int run(pagedkv_context* ctx) {
    const char* device = NULL;
    TRY(pagedkv_context_device_name(ctx, &device));

    pagedkv_pool_config config;
    pagedkv_pool_config_init(&config);
    config.num_layers = 1;
    config.num_kv_heads = HEADS;
    config.head_dim = DIM;
    config.block_size = 4;
    config.dtype = PAGEDKV_DTYPE_F32;
    config.num_blocks = 8;
    pagedkv_pool* pool = NULL;
    TRY(pagedkv_pool_create(ctx, &config, &pool));

    pagedkv_cache* cache = NULL;
    pagedkv_status status = pagedkv_cache_create_dynamic(pool, &cache);
    if (status != PAGEDKV_OK) {
        fprintf(stderr, "pagedkv_cache_create_dynamic: %s\n", pagedkv_last_error_message());
        pagedkv_pool_destroy(pool);
        return 1;
    }

    /* One row of 5 tokens: 2 pages of 4 slots. */
    float kv[HEADS * TOKENS * DIM];
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; ++i)
        kv[i] = (float)i;
    const int64_t shape[4] = {1, HEADS, TOKENS, DIM};
    pagedkv_tensor* t = NULL;
    int ok = 0;
    if (pagedkv_tensor_from_host(ctx, kv, sizeof kv / sizeof kv[0], shape, 4, PAGEDKV_DTYPE_F32,
                                 &t) == PAGEDKV_OK) {
        pagedkv_tensor* keys = NULL;
        pagedkv_tensor* values = NULL;
        float back[HEADS * TOKENS * DIM];
        pagedkv_pool_stats stats;
        int valid = 0;
        if (pagedkv_cache_update(cache, t, t, 0, NULL, &keys, &values) == PAGEDKV_OK &&
            pagedkv_tensor_to_host(keys, back, sizeof back / sizeof back[0]) == PAGEDKV_OK &&
            pagedkv_pool_get_stats(pool, &stats) == PAGEDKV_OK &&
            pagedkv_pool_validate(pool, &valid) == PAGEDKV_OK) {
            ok = memcmp(back, kv, sizeof kv) == 0 && stats.num_blocks == 8 &&
                 stats.used_blocks == 2 && stats.free_blocks == 6 && valid;
            printf("pagedkv %s (C) on %s: %llu of %llu pages used: %s\n", pagedkv_version(), device,
                   (unsigned long long)stats.used_blocks, (unsigned long long)stats.num_blocks,
                   ok ? "ok" : "WRONG");
        } else {
            fprintf(stderr, "%s\n", pagedkv_last_error_message());
        }
        pagedkv_tensor_destroy(keys);
        pagedkv_tensor_destroy(values);
    } else {
        fprintf(stderr, "pagedkv_tensor_from_host: %s\n", pagedkv_last_error_message());
    }
    pagedkv_tensor_destroy(t);
    pagedkv_cache_destroy(cache);
    pagedkv_pool_destroy(pool);
    return ok ? 0 : 1;
}

int main(void) {
    /* The header compiled and the library linked must be the same release. */
    if (strcmp(pagedkv_version(), PAGEDKV_VERSION) != 0) {
        fprintf(stderr, "header %s, library %s\n", PAGEDKV_VERSION, pagedkv_version());
        return 1;
    }
    pagedkv_context* ctx = NULL;
    TRY(pagedkv_context_create(-1, 0, &ctx)); /* validation from PAGEDKV_VALIDATION=1 */
    int rc = run(ctx);
    const char* const* messages = NULL;
    size_t count = 0;
    if (pagedkv_context_validation_messages(ctx, &messages, &count) != PAGEDKV_OK) rc = 1;
    for (size_t i = 0; i < count; ++i)
        fprintf(stderr, "validation: %s\n", messages[i]);
    if (count) rc = 1;
    pagedkv_context_destroy(ctx);
    return rc;
}
