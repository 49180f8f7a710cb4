// Two threads, as a prefill instance and a decode instance would be two processes: the sender
// exports a prefilled sequence over a Connection, the receiver imports it into its own pool and
// frees it again; export_sequence returns once the receiver confirmed the import, so a round
// is the whole move. A memcpy of the same bytes between two host buffers is timed in the same
// round, right before, so that load drifting over the run hits both.
#include "transfer.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "cache/manager/access.hpp"
#include "cache/manager/pool_state.hpp"
#include "pagedkv/pagedkv.hpp"
#include "pagedkv/transfer.hpp"

namespace pagedkv::bench {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

TransferFigures measure_transfer(int rounds) {
    // A long prompt's K/V: 4096 tokens of 4 layers x 8 kv heads x 128 f16 (64 MiB of pages).
    PoolConfig c;
    c.num_layers = 4;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.block_size = 16;
    c.dtype = DType::F16;
    c.num_blocks = 300;
    const uint32_t tokens = 4096;
    TransferFigures f;

    Context sender_ctx = Context::create(), receiver_ctx = Context::create();
    BlockPool from(sender_ctx, c), to(receiver_ctx, c);
    KVManager ms(from), mr(to);
    const SeqId seq = ms.add_sequence();
    {
        const SeqId one[] = {seq};
        const uint32_t n[] = {tokens};
        Step st = ms.begin_step(one, n);
        std::vector<float> k(size_t(tokens) * c.num_kv_heads * c.head_dim);
        for (size_t i = 0; i < k.size(); ++i)
            k[i] = float(i % 251) / 16.0f;
        const std::vector<int64_t> shape = {tokens, c.num_kv_heads, c.head_dim};
        for (uint32_t l = 0; l < c.num_layers; ++l)
            ms.write(st, l, Tensor::from_host(sender_ctx, k, shape, DType::F16),
                     Tensor::from_host(sender_ctx, k, shape, DType::F16));
    }
    sender_ctx.synchronize();
    const auto& ps = detail::Access::pool(from);
    f.bytes = uint64_t(tokens / c.block_size) * ps.format.block_bytes();
    f.direct = ps.shards[0].pages->slabs().front()->mapped() != nullptr;
    f.shape = fmt::format("{} tokens, {} layers x {} x {} f16, {} MiB of pages", tokens,
                          c.num_layers, c.num_kv_heads, c.head_dim, f.bytes >> 20);

    TransferOptions t;
    t.net_devices = "lo";
    Listener listener(0, "127.0.0.1", t);
    std::string receiver_error;
    std::thread receiver([&] {
        try {
            Connection in = listener.accept();
            for (int r = 0; r < rounds + 1; ++r)
                mr.free(mr.import_sequence(in));
        } catch (const std::exception& e) {
            receiver_error = e.what();
        }
    });
    std::vector<uint8_t> src(f.bytes, 1), dst(f.bytes, 0);
    {
        Connection out = Connection::connect("127.0.0.1", listener.port(), t);
        ms.export_sequence(seq, out);  // warm-up: connection, registration, first pages
        for (int r = 0; r < rounds; ++r) {
            src[size_t(r)] = uint8_t(r);
            auto t0 = Clock::now();
            std::memcpy(dst.data(), src.data(), src.size());
            const double copy = seconds_since(t0);
            t0 = Clock::now();
            ms.export_sequence(seq, out);
            const double move = seconds_since(t0);
            f.memcpy_gbps.push_back(double(f.bytes) / copy / 1e9);
            f.ucx_gbps.push_back(double(f.bytes) / move / 1e9);
            f.ratio.push_back(copy / move);
            f.memcpy_ms.push_back(copy * 1e3);
            f.ucx_ms.push_back(move * 1e3);
        }
    }
    receiver.join();
    if (!receiver_error.empty()) throw std::runtime_error("receiver: " + receiver_error);
    if (dst[0] == 7 && dst.back() == 7) f.bytes += 0;  // keeps the copies observable

    for (int r = 0; r < rounds; ++r) {
        auto t0 = Clock::now();
        const std::vector<std::byte> message = ms.export_sequence(seq);
        f.export_gbps.push_back(double(f.bytes) / seconds_since(t0) / 1e9);
        t0 = Clock::now();
        const SeqId id = mr.import_sequence(message);
        f.import_gbps.push_back(double(f.bytes) / seconds_since(t0) / 1e9);
        mr.free(id);
    }
    return f;
}

}  // namespace pagedkv::bench
