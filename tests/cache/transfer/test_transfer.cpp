// Sequence transfer (issue 17): export_sequence / import_sequence in memory, every way a
// message can be damaged, and over UCX between two processes on the loopback interface.
#include <catch2/catch.hpp>

#include <spawn.h>
#include <sys/wait.h>

#include <cstring>
#include <thread>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pagedkv/transfer.hpp"
#include "test_support.hpp"
#include "transfer_data.hpp"

extern char** environ;

using namespace pagedkv;
using namespace pagedkv::test;
namespace tt = pagedkv::transfer_test;

namespace {

// Everything observable about a manager's pool: counters, sequences, lengths, tables, K/V.
struct PoolView {
    BlockCounts counts;
    uint64_t copied = 0;
    std::vector<SeqId> seqs;
    std::vector<int64_t> lengths;
    std::vector<std::vector<uint32_t>> tables;
    std::vector<std::vector<float>> kv;
    PrefixCacheStats prefix;

    static PoolView of(const KVManager& m) {
        PoolView p;
        const PoolStats s = m.pool().stats();
        p.counts = s;
        p.copied = s.pages_copied;
        p.seqs = m.sequences();
        for (SeqId id : p.seqs) {
            p.lengths.push_back(m.length(id));
            p.tables.push_back(m.block_table(id));
            for (uint32_t l = 0; l < tt::kLayers; ++l) {
                auto [k, v] = m.gather(id, l);
                p.kv.push_back(k.to_host());
                p.kv.push_back(v.to_host());
            }
        }
        p.prefix = m.prefix_stats();
        return p;
    }
    bool operator==(const PoolView& o) const {
        if (!(counts == o.counts) || copied != o.copied || seqs != o.seqs || lengths != o.lengths ||
            tables != o.tables || !(prefix == o.prefix) || kv.size() != o.kv.size())
            return false;
        for (size_t i = 0; i < kv.size(); ++i)
            if (!bit_equal(kv[i], o.kv[i])) return false;
        return true;
    }
};

TransferOptions loopback() {
    TransferOptions t;
    t.net_devices = "lo";
    t.timeout = std::chrono::seconds(20);
    return t;
}

std::span<const std::byte> bytes_of(const std::vector<std::byte>& v) {
    return v;
}

// The message's checksums recomputed (header bytes 0..88; meta and pages from byte 96), so a
// field can be changed into a well-formed but unacceptable value.
void rehash(std::vector<std::byte>& m) {
    uint64_t h = XXH3_64bits(m.data() + 96, m.size() - 96);
    std::memcpy(m.data() + 80, &h, 8);
    h = XXH3_64bits(m.data(), 88);
    std::memcpy(m.data() + 88, &h, 8);
}

// Runs the peer program (posix_spawn: no fork after Vulkan is up); returns its pid.
pid_t spawn_peer(const std::string& mode, uint16_t port, DType dtype, const char* layout,
                 uint32_t n, uint32_t seed) {
    std::vector<std::string> args = {PAGEDKV_TRANSFER_PEER,      mode,   std::to_string(port),
                                     std::to_string(int(dtype)), layout, std::to_string(n),
                                     std::to_string(seed)};
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    REQUIRE(posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) == 0);
    return pid;
}

int wait_peer(pid_t pid) {
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE(
    "import_sequence of export_sequence holds the same K/V bit for bit, every dtype and "
    "either page layout",
    "[gpu][transfer]") {
    const std::pair<PageLayout, PageLayout> layouts[] = {
        {PageLayout::HeadMajor, PageLayout::HeadMajor},
        {PageLayout::TokenMajor, PageLayout::TokenMajor},
        {PageLayout::HeadMajor, PageLayout::TokenMajor},
        {PageLayout::TokenMajor, PageLayout::HeadMajor}};
    for (DType dtype : kPoolDTypes)
        for (const auto& [from, to] : layouts)
            DYNAMIC_SECTION(to_string(dtype)
                            << (from == PageLayout::HeadMajor ? ", head-major" : ", token-major")
                            << (to == PageLayout::HeadMajor ? " to head-major"
                                                            : " to token-major")) {
                ValidatedContext vc;
                BlockPool a(vc.ctx, tt::config(dtype, from)), b(vc.ctx, tt::config(dtype, to));
                KVManager ma(a), mb(b);
                const SeqId other = tt::prefill(vc.ctx, mb, 5, 99);  // already there: untouched
                for (uint32_t n : {11u, 8u, 1u, 0u}) {
                    INFO(n << " tokens");
                    const SeqId s = tt::prefill(vc.ctx, ma, n, n + 1);
                    const PoolView before = PoolView::of(ma);
                    const SeqId got = mb.import_sequence(bytes_of(ma.export_sequence(s)));
                    REQUIRE(tt::check(mb, got, n, n + 1).empty());
                    REQUIRE(mb.block_table(got).size() == (n + tt::kBlock - 1) / tt::kBlock);
                    REQUIRE(PoolView::of(ma) == before);  // exporting changes nothing
                }
                REQUIRE(tt::check(mb, other, 5, 99).empty());
                REQUIRE(a.validate());
                REQUIRE(b.validate());
                // The imported sequence grows like any other.
                const SeqId s = mb.import_sequence(bytes_of(ma.export_sequence(ma.sequences()[0])));
                const SeqId one[] = {s};
                const uint32_t three[] = {3};
                mb.allocate(one, three);
                REQUIRE(b.validate());
            }
}

TEST_CASE(
    "import_sequence refuses every damaged, truncated or foreign message and leaves the "
    "pool as it was",
    "[gpu][transfer][errors]") {
    ValidatedContext vc;
    const DType dtype = DType::Int8;
    BlockPool a(vc.ctx, tt::config(dtype, PageLayout::TokenMajor));
    BlockPool b(vc.ctx, tt::config(dtype, PageLayout::HeadMajor, 8));
    KVManager ma(a, {.prefix_caching = true}), mb(b, {.prefix_caching = true});
    const SeqId s = tt::prefill(vc.ctx, ma, 10, 3);  // 3 pages, with token ids
    tt::prefill(vc.ctx, mb, 9, 4);                   // 3 of b's 8 pages
    const std::vector<std::byte> good = ma.export_sequence(s);
    REQUIRE(good.size() == 96 + 16 * 2 + 4 * 10 + 3 * a.stats().block_bytes);
    const PoolView before = PoolView::of(mb);
    auto refused = [&](const std::vector<std::byte>& m, ErrorCode code, const std::string& text) {
        require_error([&] { mb.import_sequence(bytes_of(m)); }, code, text);
        REQUIRE(b.validate());
        REQUIRE(PoolView::of(mb) == before);
    };

    SECTION("every header byte changed") {
        for (size_t i = 0; i < 96; ++i) {
            INFO("byte " << i);
            std::vector<std::byte> m = good;
            m[i] ^= std::byte{0x5a};
            refused(m, ErrorCode::CorruptSnapshot,
                    i < 8 ? "magic" : "the header's checksum does not match");
        }
    }
    SECTION("a byte of the lengths, the token ids or the pages changed") {
        for (size_t i : {size_t(96), size_t(96 + 20), size_t(96 + 32 + 5), size_t(96 + 72),
                         good.size() / 2, good.size() - 1}) {
            INFO("byte " << i);
            std::vector<std::byte> m = good;
            m[i] ^= std::byte{1};
            refused(m, ErrorCode::CorruptSnapshot, "checksum of its lengths, tokens and pages");
        }
    }
    SECTION("truncated anywhere, or with bytes past its end") {
        for (size_t n = 0; n < good.size(); n += (n < 200 ? 1 : 97)) {
            INFO(n << " bytes");
            refused(std::vector<std::byte>(good.begin(), good.begin() + ptrdiff_t(n)),
                    ErrorCode::CorruptSnapshot, "truncated");
        }
        std::vector<std::byte> longer = good;
        longer.push_back(std::byte{0});
        refused(longer, ErrorCode::CorruptSnapshot, "1 bytes past its end");
    }
    SECTION("well-formed fields with unacceptable values") {
        auto with = [&](size_t at, auto value) {
            std::vector<std::byte> m = good;
            std::memcpy(m.data() + at, &value, sizeof value);
            rehash(m);
            return m;
        };
        refused(with(8, uint32_t(2)), ErrorCode::InvalidArgument, "a version 2 sequence message");
        refused(with(12, uint32_t(97)), ErrorCode::CorruptSnapshot, "header size 97");
        refused(with(36, uint8_t(9)), ErrorCode::CorruptSnapshot, "dtype 9");
        refused(with(37, uint8_t(7)), ErrorCode::CorruptSnapshot, "page layout 7");
        refused(with(38, uint8_t(2)), ErrorCode::CorruptSnapshot, "unknown flags");
        refused(with(40, uint64_t(5)), ErrorCode::CorruptSnapshot, "block_bytes 5");
        refused(with(48, uint64_t(2)), ErrorCode::CorruptSnapshot, "2 pages for 10 tokens");
        refused(with(56, int64_t(-1)), ErrorCode::CorruptSnapshot, "length -1");
        refused(with(56, int64_t(13)), ErrorCode::CorruptSnapshot, "3 pages for 13 tokens");
        refused(with(72, uint64_t(8)), ErrorCode::CorruptSnapshot, "meta_bytes 8");
        refused(with(96, int64_t(9)), ErrorCode::InvalidArgument, "layer 0 holds 9 tokens");
        refused(with(96 + 24, int64_t(1)), ErrorCode::InvalidArgument, "from slot 1");
        // Tokens dropped but the salt kept.
        std::vector<std::byte> m(good.begin(), good.begin() + 96 + 32);
        m.insert(m.end(), good.begin() + 96 + 32 + 40, good.end());
        uint8_t no_tokens = 0;
        std::memcpy(m.data() + 38, &no_tokens, 1);
        const uint64_t meta = 32, salt = 1;
        std::memcpy(m.data() + 72, &meta, 8);
        std::memcpy(m.data() + 64, &salt, 8);
        rehash(m);
        refused(m, ErrorCode::CorruptSnapshot, "a salt without token ids");
    }
    SECTION("another pool shape") {
        for (auto change : {0, 1, 2, 3, 4}) {
            PoolConfig c = tt::config(dtype, PageLayout::HeadMajor);
            if (change == 0) c.num_layers = 3;
            if (change == 1) c.num_kv_heads = 1;
            if (change == 2) c.head_dim = 16;
            if (change == 3) c.block_size = 8;
            if (change == 4) c.dtype = DType::FP8E4M3;
            BlockPool p(vc.ctx, c);
            KVManager m(p);
            const SeqId id = m.add_sequence();
            refused(m.export_sequence(id), ErrorCode::InvalidArgument,
                    "the sequence comes from a pool of");
        }
    }
    SECTION("too few free pages: OutOfBlocks, nothing evicted") {
        // b has 5 free pages: a 6-page sequence does not fit, a 30-page one is more than b has.
        const SeqId big = tt::prefill(vc.ctx, ma, 24, 5);
        refused(ma.export_sequence(big), ErrorCode::OutOfBlocks, "needs 6 pages, the pool has 5");
        const SeqId huge = tt::prefill(vc.ctx, ma, 33, 6);
        refused(ma.export_sequence(huge), ErrorCode::OutOfBlocks, "the pool has 8 in all");
    }
    SECTION("the good message, after all that, imports") {
        const SeqId got = mb.import_sequence(bytes_of(good));
        REQUIRE(tt::check(mb, got, 10, 3).empty());
        REQUIRE(b.validate());
    }
}

TEST_CASE("with prefix caching an imported sequence's full pages serve later prompts",
          "[gpu][transfer]") {
    ValidatedContext vc;
    BlockPool a(vc.ctx, tt::config(DType::F16, PageLayout::HeadMajor));
    BlockPool b(vc.ctx, tt::config(DType::F16, PageLayout::HeadMajor));
    KVManager ma(a, {.prefix_caching = true}), mb(b, {.prefix_caching = true});
    const SeqId s = tt::prefill(vc.ctx, ma, 10, 7);
    const SeqId got = mb.import_sequence(bytes_of(ma.export_sequence(s)));
    REQUIRE(mb.prefix_stats().cached_pages == 2);  // the two full pages of 4 tokens
    std::vector<int32_t> prompt = tt::token_ids(7, 10);
    prompt.push_back(12345);
    const SeqId hit = mb.add_sequence(prompt);
    REQUIRE(mb.length(hit) == 8);
    const std::vector<uint32_t> pages = mb.block_table(got);
    REQUIRE(mb.block_table(hit) == std::vector<uint32_t>(pages.begin(), pages.begin() + 2));
    // Without prefix caching on the sending side no token ids travel: nothing registers.
    KVManager plain(a);
    const SeqId p = tt::prefill(vc.ctx, plain, 10, 8);
    mb.import_sequence(bytes_of(plain.export_sequence(p)));
    REQUIRE(mb.prefix_stats().cached_pages == 2);
    REQUIRE(b.validate());
}

TEST_CASE("a sequence moves between two processes over UCX on loopback, K/V bit for bit",
          "[gpu][transfer][ucx]") {
    for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::Int8, DType::FP8E4M3})
        DYNAMIC_SECTION(to_string(dtype)) {
            ValidatedContext vc;
            BlockPool pool(vc.ctx, tt::config(dtype, test_layout()));
            KVManager m(pool, {.prefix_caching = true});
            const SeqId other = tt::prefill(vc.ctx, m, 6, 50);
            Listener listener(0, "127.0.0.1", loopback());
            REQUIRE(listener.port() != 0);
            const uint32_t seed = 21 + uint32_t(dtype);
            // The peer writes token-major pages; this pool has the test's layout.
            const pid_t peer = spawn_peer("send", listener.port(), dtype, "token", 23, seed);
            Connection c = listener.accept();
            const SeqId got = m.import_sequence(c);
            REQUIRE(wait_peer(peer) == 0);
            INFO(tt::check(m, got, 23, seed));
            REQUIRE(tt::check(m, got, 23, seed).empty());
            REQUIRE(tt::check(m, other, 6, 50).empty());
            REQUIRE(m.prefix_stats().cached_pages == 5 + 1);  // its 5 full pages, and other's
            REQUIRE(pool.validate());
        }
}

TEST_CASE("a transfer cut off midway leaves the importing pool as it was", "[gpu][transfer][ucx]") {
    ValidatedContext vc;
    BlockPool pool(vc.ctx, tt::config(DType::F16, test_layout()));
    KVManager m(pool, {.prefix_caching = true});
    tt::prefill(vc.ctx, m, 6, 50);
    const PoolView before = PoolView::of(m);
    Listener listener(0, "127.0.0.1", loopback());
    const pid_t peer = spawn_peer("truncate", listener.port(), DType::F16, "head", 23, 9);
    Connection c = listener.accept();
    require_error([&] { m.import_sequence(c); }, ErrorCode::CorruptSnapshot,
                  "the connection closed after");
    REQUIRE(wait_peer(peer) == 0);
    REQUIRE_FALSE(c.open());
    require_error([&] { m.import_sequence(c); }, ErrorCode::InvalidArgument, "open a new one");
    REQUIRE(pool.validate());
    REQUIRE(PoolView::of(m) == before);
    // A new connection works.
    const pid_t again = spawn_peer("send", listener.port(), DType::F16, "head", 23, 9);
    Connection c2 = listener.accept();
    const SeqId got = m.import_sequence(c2);
    REQUIRE(wait_peer(again) == 0);
    REQUIRE(tt::check(m, got, 23, 9).empty());
}

TEST_CASE("a sequence the importer refuses reaches the sender as the importer's error",
          "[gpu][transfer][ucx]") {
    // Two threads with a context each, as two instances in one process would be.
    ValidatedContext sender_ctx, receiver_ctx;
    BlockPool from(sender_ctx.ctx, tt::config(DType::F16, PageLayout::HeadMajor));
    BlockPool to(receiver_ctx.ctx, tt::config(DType::F16, PageLayout::HeadMajor, 8));
    BlockPool other_shape(sender_ctx.ctx, tt::config(DType::BF16, PageLayout::HeadMajor));
    KVManager ms(from), mr(to), mo(other_shape);
    const SeqId held = tt::prefill(receiver_ctx.ctx, mr, 20, 9);  // 5 of `to`'s 8 pages
    const SeqId big = tt::prefill(sender_ctx.ctx, ms, 20, 1);     // 5 pages: 3 are free
    const SeqId small = tt::prefill(sender_ctx.ctx, ms, 7, 2);    // 2 pages
    const SeqId foreign = tt::prefill(sender_ctx.ctx, mo, 3, 3);
    const PoolView before = PoolView::of(mr);
    Listener listener(0, "127.0.0.1", loopback());
    std::vector<std::string> receiver_errors;
    SeqId imported = 0;
    std::thread receiver([&] {
        try {
            Connection c = listener.accept();
            try {
                mr.import_sequence(c);
            } catch (const Error& e) {
                receiver_errors.push_back(e.what());
            }
            const PoolView after = PoolView::of(mr);
            if (!(after == before)) receiver_errors.push_back("the pool changed");
            imported = mr.import_sequence(c);  // the connection still works
            Connection c2 = listener.accept();
            try {
                mr.import_sequence(c2);
            } catch (const Error& e) {
                receiver_errors.push_back(e.what());
            }
            if (c2.open()) receiver_errors.push_back("still open after a refused header");
        } catch (const std::exception& e) {
            receiver_errors.push_back(std::string("unexpected: ") + e.what());
        }
    });
    struct Join {  // also when a check below fails
        std::thread& t;
        ~Join() {
            if (t.joinable()) t.join();
        }
    } join{receiver};
    Connection c = Connection::connect("127.0.0.1", listener.port(), loopback());
    require_error([&] { ms.export_sequence(big, c); }, ErrorCode::OutOfBlocks,
                  "the peer refused the sequence: import_sequence: the sequence needs 5 pages");
    ms.export_sequence(small, c);
    Connection c2 = Connection::connect("127.0.0.1", listener.port(), loopback());
    require_error([&] { mo.export_sequence(foreign, c2); }, ErrorCode::InvalidArgument,
                  "the sequence comes from a pool of");
    receiver.join();
    INFO(receiver_errors.back());
    REQUIRE(receiver_errors.size() == 2);
    REQUIRE_THAT(receiver_errors[0], Catch::Contains("needs 5 pages, the pool has 3 free"));
    REQUIRE(tt::check(mr, imported, 7, 2).empty());
    REQUIRE(tt::check(mr, held, 20, 9).empty());
    REQUIRE(mr.sequences() == std::vector<SeqId>{held, imported});
    REQUIRE(to.validate());
    REQUIRE(ms.sequences().size() == 2);  // exporting keeps the sequences
}
