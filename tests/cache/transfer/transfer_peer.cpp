// The other process of the two-process transfer tests (test_transfer.cpp spawns it): it
// prefills a pool with the known K/V of transfer_data.hpp and sends the sequence to the test's
// listener, on lavapipe under the validation layer like the test itself.
//   transfer_peer send|truncate <port> <dtype index> <head|token> <tokens> <seed>
// send: export_sequence over UCX (returns once the test imported it).
// truncate: the same message's first half, then the connection closes.
// Exits 0 on success, 1 with the reason on stderr.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cache/transfer/ucx_connection.hpp"
#include "pagedkv/pagedkv.hpp"
#include "pagedkv/transfer.hpp"
#include "transfer_data.hpp"

using namespace pagedkv;

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr, "usage: transfer_peer send|truncate port dtype layout tokens seed\n");
        return 2;
    }
    const std::string mode = argv[1];
    const auto port = uint16_t(std::atoi(argv[2]));
    const auto dtype = DType(std::atoi(argv[3]));
    const PageLayout layout =
        std::string(argv[4]) == "token" ? PageLayout::TokenMajor : PageLayout::HeadMajor;
    const auto n = uint32_t(std::atoi(argv[5]));
    const auto seed = uint32_t(std::atoi(argv[6]));
    try {
        ContextOptions o;
        const char* nv = std::getenv("PAGEDKV_TEST_NO_VALIDATION");
        o.enable_validation = !(nv && std::string(nv) == "1");
        Context ctx = Context::create(o);
        bool ok = true;
        {
            BlockPool pool(ctx, transfer_test::config(dtype, layout));
            KVManager m(pool, {.prefix_caching = true});
            const SeqId id = transfer_test::prefill(ctx, m, n, seed);
            TransferOptions t;
            t.net_devices = "lo";
            t.timeout = std::chrono::seconds(20);
            Connection c = Connection::connect("127.0.0.1", port, t);
            if (mode == "send") {
                m.export_sequence(id, c);
            } else if (mode == "truncate") {
                const std::vector<std::byte> bytes = m.export_sequence(id);
                detail::TransferAccess::of(c, "truncate")
                    .send(bytes.data(), bytes.size() / 2, "truncate");
            } else {
                std::fprintf(stderr, "transfer_peer: unknown mode %s\n", mode.c_str());
                return 2;
            }
            if (!pool.validate()) {
                std::fprintf(stderr, "transfer_peer: pool invalid: %s\n", pool.check().c_str());
                ok = false;
            }
        }
        ctx.synchronize();
        for (const auto& msg : ctx.validation_messages()) {
            std::fprintf(stderr, "transfer_peer: validation: %s\n", msg.c_str());
            ok = false;
        }
        return ok ? 0 : 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "transfer_peer: %s\n", e.what());
        return 1;
    }
}
