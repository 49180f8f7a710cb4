// Leaks a cache on purpose. In the LeakSanitizer build ctest passes only when LeakSanitizer
// reports the leak with pagedkv's own frames: keeping the drivers mapped and the suppressions
// of lsan.supp must hide nothing of the library's.
#include <pagedkv/pagedkv.hpp>

int main() {
    pagedkv::Context ctx = pagedkv::Context::create();
    pagedkv::PoolConfig c;
    c.num_layers = 1;
    c.num_kv_heads = 1;
    c.head_dim = 8;
    c.block_size = 4;
    c.num_blocks = 4;
    pagedkv::BlockPool pool(ctx, c);
    auto* leaked = new pagedkv::DynamicKVCache(pool);  // never deleted
    return leaked->batch_size() == 0 ? 0 : 1;
}
