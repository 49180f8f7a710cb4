// A decode loop over a paged cache: two sequences, one layer, f16 pages of 16 tokens.
#include <pagedkv/pagedkv.hpp>

#include <cstdio>
#include <vector>

int main() {
    using namespace pagedkv;
    Context ctx = Context::create();  // a GPU if there is one, else lavapipe
    BlockPool pool(ctx, {.num_layers = 1,
                         .num_kv_heads = 2,
                         .head_dim = 64,
                         .dtype = DType::F16,
                         .num_blocks = 64});
    DynamicKVCache cache(pool);

    // Prefill 20 tokens for each of 2 rows: K/V are (batch, kv_heads, seq_len, head_dim).
    std::vector<float> prompt(2 * 2 * 20 * 64, 0.5f);
    Tensor k = Tensor::from_host(ctx, prompt, {2, 2, 20, 64}, DType::F16);
    auto [keys, values] = cache.update(k, k, /*layer_idx=*/0);

    // Decode 5 tokens: each update returns the whole (2, 2, length, 64) K and V.
    std::vector<float> token(2 * 2 * 1 * 64, 0.25f);
    for (int step = 0; step < 5; ++step) {
        Tensor t = Tensor::from_host(ctx, token, {2, 2, 1, 64}, DType::F16);
        std::tie(keys, values) = cache.update(t, t, 0);
    }
    std::vector<float> host = keys.to_host();  // waits for the GPU work

    PoolStats s = pool.stats();
    std::printf("%s: length %lld, %llu of %llu pages used, last value %.2f\n",
                ctx.device_name().c_str(), (long long)cache.get_seq_length(),
                (unsigned long long)s.used_blocks, (unsigned long long)s.num_blocks,
                double(host.back()));
    return cache.get_seq_length() == 25 && s.used_blocks == 4 && host.back() == 0.25f ? 0 : 1;
}
