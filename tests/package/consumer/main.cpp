// The consumer: one context, pool and cache through the public headers only, checked against
// the values written; exits non-zero on any difference or validation message.
#include <pagedkv/pagedkv.h>
#include <pagedkv/pagedkv.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

static_assert(PAGEDKV_VERSION_MAJOR == 0 && PAGEDKV_VERSION_MINOR >= 1,
              "the consumer is written against pagedkv 0.x");

int main() {
    using namespace pagedkv;
    // The header compiled and the library linked must be the same release.
    if (std::strcmp(pagedkv_version(), PAGEDKV_VERSION) != 0) {
        std::fprintf(stderr, "header %s, library %s\n", PAGEDKV_VERSION, pagedkv_version());
        return 1;
    }
    Context ctx = Context::create();  // validation from PAGEDKV_VALIDATION=1
    BlockPool pool(ctx, {.num_layers = 1,
                         .num_kv_heads = 2,
                         .head_dim = 8,
                         .block_size = 4,
                         .dtype = DType::F32,
                         .num_blocks = 8});
    DynamicKVCache cache(pool);
    std::vector<float> kv(1 * 2 * 5 * 8);
    for (size_t i = 0; i < kv.size(); ++i)
        kv[i] = float(i);
    Tensor t = Tensor::from_host(ctx, kv, {1, 2, 5, 8});
    auto [keys, values] = cache.update(t, t, 0);
    const bool ok = keys.to_host() == kv && values.to_host() == kv && cache.get_seq_length() == 5 &&
                    pool.stats().used_blocks == 2 && pool.validate();
    ctx.synchronize();
    for (const std::string& m : ctx.validation_messages())
        std::fprintf(stderr, "validation: %s\n", m.c_str());
    std::printf("pagedkv %s on %s: %s\n", PAGEDKV_VERSION, ctx.device_name().c_str(),
                ok ? "ok" : "WRONG");
    return ok && ctx.validation_messages().empty() ? 0 : 1;
}
