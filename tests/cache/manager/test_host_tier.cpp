// The host tier on a real device against the CPU reference: swap_out / swap_in keep every
// sequence's K/V bit for bit in every pool dtype; pages shared by forks or prefix caching move
// once and are shared again when swapped back in (and copied when a sharer that stayed on the
// device writes them); every error path throws and changes nothing; tier copies merge runs of
// consecutive blocks; random traces of steps, forks, truncates, frees and swaps.
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "cache/manager/access.hpp"
#include "cache/manager/manager_state.hpp"
#include "reference_sequences.hpp"
#include "shaders/kernels/tier_copy.hpp"
#include "shaders/store/host_page_store.hpp"
#include "shaders/store/page_store.hpp"
#include "shaders/vulkan/device.hpp"
#include "test_support.hpp"

using namespace pagedkv;
using namespace pagedkv::test;

namespace {

PoolConfig host_config(DType dtype, uint64_t device_blocks, uint64_t host_blocks) {
    PoolConfig c = small_config(dtype, 2, 2, 8, 4, device_blocks);
    c.num_host_blocks = host_blocks;
    return c;
}

// A manager, its reference, and random K/V for every step.
struct Swapped {
    Swapped(Context& ctx, const PoolConfig& cfg, bool prefix = false)
        : pool(ctx, cfg),
          c(pool.config()),
          mgr(pool, {0.0, prefix}),
          ref(c.num_layers, c.num_kv_heads, c.head_dim, c.head_dim),
          ctx_(&ctx) {}

    TestPool pool;
    PoolConfig c;
    KVManager mgr;
    ReferenceSequences ref;
    std::mt19937 rng{5};
    std::map<SeqId, std::vector<int32_t>> toks;  // with prefix caching: each sequence's ids
    Context* ctx_;

    SeqId add() {
        const SeqId id = mgr.add_sequence();
        ref.add(id);
        return id;
    }
    SeqId fork(SeqId from) {
        const SeqId id = mgr.fork(from);
        ref.fork(from, id);
        if (toks.count(from)) toks[id] = toks[from];
        return id;
    }
    void free(SeqId id) {
        mgr.free(id);
        ref.free(id);
        toks.erase(id);
    }
    void truncate(SeqId id, int64_t n) {
        mgr.truncate(id, n);
        ref.truncate(id, n);
        if (toks.count(id)) toks[id].resize(size_t(mgr.length(id)));
    }
    // One step of random K/V; with ids given (prefix caching), they are the new tokens' ids.
    void step(const std::vector<SeqId>& seqs, const std::vector<uint32_t>& counts,
              const std::vector<std::vector<int32_t>>* ids = nullptr) {
        Step st;
        if (ids) {
            std::vector<std::span<const int32_t>> spans(ids->begin(), ids->end());
            st = mgr.begin_step(seqs, spans);
            for (size_t i = 0; i < seqs.size(); ++i)
                toks[seqs[i]].insert(toks[seqs[i]].end(), (*ids)[i].begin(), (*ids)[i].end());
        } else {
            st = mgr.begin_step(seqs, counts);
        }
        const std::vector<uint64_t> rid(seqs.begin(), seqs.end());
        ref.begin_step(rid, counts);
        const uint32_t T = st.total_tokens(), H = c.num_kv_heads, D = c.head_dim;
        for (uint32_t l = 0; l < c.num_layers; ++l) {
            const auto k = random_values(size_t(T) * H * D, rng, input_dtype(c));
            const auto v = random_values(size_t(T) * H * D, rng, input_dtype(c));
            mgr.write(st, l, Tensor::from_host(*ctx_, k, {T, H, D}, input_dtype(c)),
                      Tensor::from_host(*ctx_, v, {T, H, D}, input_dtype(c)));
            ref.write(rid, counts, l, stored_values(c, k, D), stored_values(c, v, D));
        }
        mgr.end_step(std::move(st));
    }
    void swap_out(SeqId id) { mgr.swap_out(id); }
    void swap_in(SeqId id) { mgr.swap_in(id); }

    // The pool holds (host tier included), every sequence's length equals the reference's and
    // every resident one's K/V is the reference's, bit for bit.
    void check() {
        REQUIRE(pool.check() == "");
        const std::vector<SeqId> live = mgr.sequences();
        const std::vector<uint64_t> ids = ref.ids();
        REQUIRE(live == std::vector<SeqId>(ids.begin(), ids.end()));
        for (SeqId id : live) {
            REQUIRE(mgr.length(id) == ref.length(id));
            if (mgr.is_swapped(id)) continue;
            for (uint32_t l = 0; l < c.num_layers; ++l) {
                auto [k, v] = mgr.gather(id, l);
                const auto gk = k.to_host(), gv = v.to_host();
                const auto wk = ref.keys(id, l), wv = ref.values(id, l);
                INFO("sequence " << id << " layer " << l << " K: " << first_difference(gk, wk)
                                 << ", V: " << first_difference(gv, wv));
                REQUIRE(bit_equal(gk, wk));
                REQUIRE(bit_equal(gv, wv));
            }
        }
    }

    // Everything an error must leave as it was: lengths, swapped flags, block tables, pool
    // counters and the K/V (checked by check()).
    struct Picture {
        std::map<SeqId, std::pair<int64_t, bool>> seqs;
        std::map<SeqId, std::vector<uint32_t>> tables;
        PoolStats stats;
        std::vector<uint8_t> host;  // the host tier's bytes
    };
    Picture picture() {
        Picture p;
        for (SeqId id : mgr.sequences()) {
            p.seqs[id] = {mgr.length(id), mgr.is_swapped(id)};
            if (!mgr.is_swapped(id)) p.tables[id] = mgr.block_table(id);
        }
        p.stats = pool.stats();
        detail::PoolState& ps = detail::Access::pool(pool);
        for (const detail::Shard& sh : ps.shards) {
            sh.device->synchronize();
            if (!sh.host_pages) continue;
            const auto& hp = static_cast<const detail::HostPageStore&>(*sh.host_pages);
            const uint64_t bb = sh.format.block_bytes();
            for (uint32_t b = 0; b < hp.num_blocks(); ++b) {
                const auto* bytes = static_cast<const uint8_t*>(hp.block_bytes(b));
                p.host.insert(p.host.end(), bytes, bytes + bb);
            }
        }
        return p;
    }
    void require_unchanged(const Picture& before) {
        const Picture now = picture();
        REQUIRE(now.seqs == before.seqs);
        REQUIRE(now.tables == before.tables);
        REQUIRE(now.stats.used_blocks == before.stats.used_blocks);
        REQUIRE(now.stats.free_blocks == before.stats.free_blocks);
        REQUIRE(now.stats.used_host_blocks == before.stats.used_host_blocks);
        REQUIRE(now.stats.pages_swapped_out == before.stats.pages_swapped_out);
        REQUIRE(now.stats.pages_swapped_in == before.stats.pages_swapped_in);
        REQUIRE(now.host == before.host);
        check();
    }
};

std::vector<uint32_t> shared_pages(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b,
                                   size_t n) {
    std::vector<uint32_t> out;
    for (size_t i = 0; i < std::min({a.size(), b.size(), n}); ++i)
        if (a[i] == b[i]) out.push_back(a[i]);
    return out;
}

}  // namespace

TEST_CASE("host tier: swap_out frees the device pages and swap_in brings the K/V back",
          "[gpu][host]") {
    ValidatedContext vc;
    for (DType dtype : kPoolDTypes) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 32, 24));
        REQUIRE(s.pool.stats().host_blocks == 24);
        REQUIRE(s.pool.stats().host_bytes == 24 * s.pool.stats().block_bytes);
        const SeqId a = s.add(), b = s.add();
        s.step({a, b}, {10, 6});
        s.mgr.allocate(std::vector<SeqId>{a}, std::vector<uint32_t>{0}, 8);  // a reservation
        s.check();
        const uint64_t used = s.pool.stats().used_blocks;
        REQUIRE(used == 3 + 2 + 2);
        s.swap_out(a);
        REQUIRE(s.mgr.is_swapped(a));
        REQUIRE_FALSE(s.mgr.is_swapped(b));
        REQUIRE(s.mgr.contains(a));
        REQUIRE(s.mgr.length(a) == 10);
        // Its three pages of tokens moved; the reservation was dropped.
        REQUIRE(s.pool.stats().used_blocks == 2);
        REQUIRE(s.pool.stats().used_host_blocks == 3);
        REQUIRE(s.pool.stats().pages_swapped_out == 3);
        REQUIRE(s.mgr.pages_held() == 2);
        s.check();
        // Other sequences keep stepping while a is out, and may take its old pages.
        s.step({b}, {9});
        s.check();
        s.swap_in(a);
        REQUIRE_FALSE(s.mgr.is_swapped(a));
        REQUIRE(s.pool.stats().used_host_blocks == 0);
        REQUIRE(s.pool.stats().pages_swapped_in == 3);
        s.check();
        // And it grows on from where it was.
        s.step({a, b}, {3, 1});
        s.check();
        // A swapped sequence freed gives its host pages back.
        s.swap_out(b);
        REQUIRE(s.pool.stats().used_host_blocks == 4);
        s.free(b);
        REQUIRE(s.pool.stats().used_host_blocks == 0);
        // An empty sequence swaps out and in with nothing to move.
        const SeqId e = s.add();
        s.swap_out(e);
        REQUIRE(s.mgr.is_swapped(e));
        s.swap_in(e);
        s.step({e}, {5});
        s.check();
    }
}

TEST_CASE("host tier: a page shared by forks moves once and is shared again", "[gpu][host]") {
    ValidatedContext vc;
    for (DType dtype : kPoolDTypes) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 32, 24));
        const SeqId a = s.add();
        s.step({a}, {10});  // pages 0, 1 full, page 2 holds 2 tokens
        const SeqId b = s.fork(a);
        s.step({b}, {4});  // b copies page 2 (copy-on-write) and adds one
        s.check();
        const auto ta = s.mgr.block_table(a), tb = s.mgr.block_table(b);
        REQUIRE(shared_pages(ta, tb, 3).size() == 2);

        s.swap_out(a);  // 3 pages copied; b keeps the two shared device pages
        REQUIRE(s.pool.stats().pages_swapped_out == 3);
        REQUIRE(s.mgr.block_table(b) == tb);
        s.swap_out(b);  // the two shared pages are on the host already: 2 more copies
        REQUIRE(s.pool.stats().pages_swapped_out == 5);
        REQUIRE(s.pool.stats().used_host_blocks == 5);
        REQUIRE(s.pool.stats().used_blocks == 0);
        s.check();

        s.swap_in(b);  // 4 pages
        REQUIRE(s.pool.stats().pages_swapped_in == 4);
        s.swap_in(a);  // the two shared pages are on the device already: 1 more copy
        REQUIRE(s.pool.stats().pages_swapped_in == 5);
        REQUIRE(s.pool.stats().used_blocks == 5);
        REQUIRE(s.pool.stats().shared_blocks == 2);
        REQUIRE(shared_pages(s.mgr.block_table(a), s.mgr.block_table(b), 3).size() == 2);
        s.check();
        // Shared again means copy-on-write again: writing a's shared page copies it.
        s.truncate(a, 5);
        s.step({a}, {2});
        s.check();
    }
}

TEST_CASE("host tier: a sharer that stays on the device and writes the page gets it copied",
          "[gpu][host]") {
    ValidatedContext vc;
    for (DType dtype : kPoolDTypes) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 32, 24));
        const SeqId a = s.add();
        s.step({a}, {6});  // page 1 holds 2 tokens
        const SeqId b = s.fork(a);
        s.swap_out(a);  // both pages copied; b alone holds them on the device now
        REQUIRE(s.pool.stats().pages_swapped_out == 2);
        REQUIRE(s.pool.stats().shared_blocks == 0);
        // b writes its last page in place (no copy-on-write: nobody else holds it), and
        // truncates into its first page and rewrites it: the host copies are a's, not b's.
        s.step({b}, {1});
        s.truncate(b, 3);
        s.step({b}, {2});
        s.check();
        s.swap_out(b);
        REQUIRE(s.pool.stats().pages_swapped_out == 4);  // nothing reused: both written
        s.swap_in(a);
        s.swap_in(b);
        REQUIRE(s.pool.stats().shared_blocks == 0);
        s.check();

        // Both swapped back in share; then the one that writes its partial page in place must
        // not leave the other's next swap-in reading it.
        const SeqId c = s.fork(a);
        s.swap_out(a);
        s.swap_out(c);  // shared: host pages once
        REQUIRE(s.pool.stats().pages_swapped_out == 6);
        s.swap_in(a);
        s.step({a}, {1});  // a's last page, refcount 1 on the device: written in place
        s.swap_in(c);      // its last page must come from the host again, its first is shared
        REQUIRE(shared_pages(s.mgr.block_table(a), s.mgr.block_table(c), 2).size() == 1);
        s.check();
    }
}

TEST_CASE("host tier: pages shared through prefix caching move once", "[gpu][host][prefix]") {
    ValidatedContext vc;
    for (DType dtype : kPoolDTypes) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 32, 24), true);
        std::vector<int32_t> prompt(13);
        for (size_t i = 0; i < prompt.size(); ++i)
            prompt[i] = int32_t(i * 5 + 1);
        const SeqId a = s.mgr.add_sequence(prompt);
        s.ref.add(a);
        const std::vector<std::vector<int32_t>> ids{prompt};
        s.step({a}, {13}, &ids);
        // b starts from a's three cached full pages.
        const SeqId b = s.mgr.add_sequence(prompt);
        REQUIRE(s.mgr.length(b) == 12);
        s.ref.fork(a, b);
        s.ref.truncate(b, 12);
        s.toks[b].assign(prompt.begin(), prompt.begin() + 12);
        const std::vector<std::vector<int32_t>> one{{prompt[12]}};
        s.step({b}, {1}, &one);
        s.check();
        s.swap_out(a);
        s.swap_out(b);
        REQUIRE(s.pool.stats().used_host_blocks == 5);  // 3 shared + a's last + b's last
        REQUIRE(s.pool.stats().pages_swapped_out == 5);
        s.check();
        s.swap_in(a);
        s.swap_in(b);
        REQUIRE(s.pool.stats().pages_swapped_in == 5);
        REQUIRE(shared_pages(s.mgr.block_table(a), s.mgr.block_table(b), 3).size() == 3);
        s.check();
        // They keep stepping (and registering pages) after coming back.
        const std::vector<std::vector<int32_t>> more{{7, 8, 9}, {4, 4}};
        s.step({a, b}, {3, 2}, &more);
        s.check();
        // A third prompt still hits the pages the index knows.
        const SeqId c = s.mgr.add_sequence(prompt);
        REQUIRE(s.mgr.length(c) == 12);
        s.ref.fork(a, c);
        s.ref.truncate(c, 12);
        s.check();
    }
}

TEST_CASE("host tier: errors throw and change nothing", "[gpu][host][errors]") {
    ValidatedContext vc;
    // A host tier past 32-bit block ids.
    require_error(
        [&] { BlockPool p(vc.ctx, host_config(DType::F16, 16, uint64_t(UINT32_MAX) + 1)); },
        ErrorCode::InvalidArgument, "num_host_blocks 4294967296 is too large");
    {
        // No host tier.
        Swapped s(vc.ctx, host_config(DType::F16, 16, 0));
        const SeqId a = s.add();
        s.step({a}, {5});
        const auto before = s.picture();
        REQUIRE(s.pool.stats().host_blocks == 0);
        require_error([&] { s.mgr.swap_out(a); }, ErrorCode::InvalidArgument, "no host tier");
        require_error([&] { s.mgr.swap_in(a); }, ErrorCode::InvalidArgument, "no host tier");
        REQUIRE_FALSE(s.mgr.is_swapped(a));
        s.require_unchanged(before);
    }
    for (DType dtype : kPoolDTypes) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 12, 5));
        const SeqId a = s.add(), b = s.add(), c = s.add();
        s.step({a, b, c}, {10, 9, 7});  // 3 + 3 + 2 pages
        s.swap_out(c);                  // 2 host pages used, 3 free
        s.check();
        auto before = s.picture();
        require_error([&] { s.mgr.swap_out(99); }, ErrorCode::InvalidArgument,
                      "swap_out: unknown sequence 99");
        require_error([&] { s.mgr.swap_in(99); }, ErrorCode::InvalidArgument,
                      "swap_in: unknown sequence 99");
        require_error([&] { s.mgr.is_swapped(99); }, ErrorCode::InvalidArgument,
                      "unknown sequence 99");
        require_error([&] { s.mgr.swap_out(c); }, ErrorCode::InvalidArgument,
                      "sequence 3 is already swapped out");
        require_error([&] { s.mgr.swap_in(a); }, ErrorCode::InvalidArgument,
                      "sequence 1 is not swapped out");
        s.require_unchanged(before);

        // The host tier is full: a needs 3, the tier has 3 free; then b needs 3 with 0 free.
        s.swap_out(a);
        before = s.picture();
        require_error([&] { s.mgr.swap_out(b); }, ErrorCode::OutOfBlocks,
                      "swap_out: sequence 2 needs 3 host pages (0 of its 3 pages are already "
                      "there), the host tier has 0 free");
        s.require_unchanged(before);

        // The device is full: b steps into every free page, then a cannot come back.
        s.step({b}, {uint32_t(4 * s.pool.stats().free_blocks + 3)});
        REQUIRE(s.pool.stats().free_blocks == 0);
        before = s.picture();
        require_error([&] { s.mgr.swap_in(a); }, ErrorCode::OutOfBlocks,
                      "swap_in: sequence 1 needs 3 device pages (0 of its 3 pages are already "
                      "there), the pool has 0 free");
        s.require_unchanged(before);

        // A swapped sequence refuses what needs its pages.
        const std::vector<SeqId> va{a};
        const std::vector<uint32_t> one{1};
        for (auto f : std::vector<std::function<void()>>{
                 [&] { s.mgr.begin_step(va, one); },
                 [&] { s.mgr.allocate(va, one); },
                 [&] { (void)s.mgr.pages_needed(va, one); },
                 [&] { (void)s.mgr.can_allocate(va, one); },
                 [&] { s.mgr.fork(a); },
                 [&] { s.mgr.truncate(a, 2); },
                 [&] { s.mgr.gather(a, 0); },
                 [&] { s.mgr.block_table(a); },
             })
            require_error(f, ErrorCode::InvalidArgument,
                          "sequence 1 is swapped out to the host tier (swap_in it first)");
        s.require_unchanged(before);

        // A sequence in a step that has not ended.
        s.free(b);
        s.swap_in(a);
        s.check();
        {
            Step st = s.mgr.begin_step(va, std::vector<uint32_t>{0});
            before = s.picture();
            require_error([&] { s.mgr.swap_out(a); }, ErrorCode::InvalidArgument,
                          "sequence 1 is in a step that has not ended");
            s.require_unchanged(before);
            s.mgr.end_step(std::move(st));
        }
        s.swap_out(a);  // ended: it may go
        s.swap_in(a);
        s.check();

        // Snapshots refuse a pool whose host tier holds pages.
        s.swap_out(a);
        TempFile f("host-tier.snap");
        const KVManager* managers[] = {&s.mgr};
        require_error([&] { save_snapshot(f.path, s.pool, {}, managers); },
                      ErrorCode::InvalidArgument, "snapshots do not record");
        s.swap_in(a);
        require_error([&] { save_snapshot(f.path, s.pool, {}, managers); },
                      ErrorCode::InvalidArgument, "holds 2 pages");  // c's
        s.free(c);
        save_snapshot(f.path, s.pool, {}, managers);
    }
}

TEST_CASE("host tier: tier copies merge runs of consecutive blocks into one region",
          "[gpu][host]") {
    ValidatedContext vc;
    detail::Device& dev = detail::Access::device(vc.ctx);
    const PageFormat f{1, 2, 8, 8, 4, DType::F32};
    // Small slabs (4 blocks each) so runs must also stop at slab ends.
    auto device = detail::DevicePageStore::create(dev, f, 16, 4 * f.block_bytes());
    auto host = detail::HostPageStore::create(dev, f, 16, 4 * f.block_bytes());
    const uint64_t bb = f.block_bytes();
    std::vector<uint8_t> bytes(16 * bb);
    for (size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = uint8_t(i * 7 + i / bb);
    for (uint32_t s = 0; s < 4; ++s)
        device->slabs()[s]->write(bytes.data() + s * 4 * bb, 4 * bb);
    // (0,5) (1,6) (2,7): one run, but host block 8 starts a new slab after 7 -> (3,8) apart;
    // (9,0) alone; (12,12) (13,13) one run.
    const std::vector<std::pair<uint32_t, uint32_t>> moves{{13, 13}, {0, 5}, {1, 6},  {2, 7},
                                                           {3, 8},   {9, 0}, {12, 12}};
    REQUIRE(detail::record_tier_copies(dev, *device, *host, moves) == 4);
    dev.synchronize();
    for (auto [d, h] : moves)
        REQUIRE(std::equal(bytes.begin() + d * bb, bytes.begin() + (d + 1) * bb,
                           static_cast<const uint8_t*>(host->block_bytes(h))));
    // Back the other way, into other device blocks.
    const std::vector<std::pair<uint32_t, uint32_t>> back{{5, 10}, {6, 11}, {0, 14}};
    REQUIRE(detail::record_tier_copies(dev, *host, *device, back) == 2);
    dev.synchronize();  // the slabs are tracked as one store, not one by one
    std::vector<uint8_t> got(bb);
    for (auto [h, d] : back) {
        device->slab_of(d).read(got.data(), bb, device->offset_of(d));
        REQUIRE(
            std::equal(got.begin(), got.end(), static_cast<const uint8_t*>(host->block_bytes(h))));
    }
    require_error(
        [&] {
            detail::record_tier_copies(dev, *device, *host,
                                       std::vector<std::pair<uint32_t, uint32_t>>{{16, 0}});
        },
        ErrorCode::InvalidArgument, "out of range");
}

TEST_CASE("host tier: random swaps, steps, forks, truncates and frees match the reference",
          "[gpu][host][random]") {
    ValidatedContext vc;
    for (DType dtype : kPoolDTypes) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 24, 16));
        std::mt19937 rng(uint32_t(int(dtype)) * 31 + 3);
        int32_t next_token = 1;
        for (int op = 0; op < 250; ++op) {
            const std::vector<SeqId> live = s.mgr.sequences();
            std::vector<SeqId> in, out;
            for (SeqId id : live)
                (s.mgr.is_swapped(id) ? out : in).push_back(id);
            const auto pick = [&](const std::vector<SeqId>& v) {
                return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
            };
            const int r = std::uniform_int_distribution<int>(0, 9)(rng);
            INFO("op " << op << " kind " << r);
            try {
                if (live.size() < 2 || r == 0) {
                    if (s.mgr.options().prefix_caching) {
                        // A prompt that often repeats an earlier one's start.
                        std::vector<int32_t> p(
                            size_t(std::uniform_int_distribution<int>(1, 11)(rng)));
                        for (size_t i = 0; i < p.size(); ++i)
                            p[i] = int32_t(i % 3 == 0 ? i : (i * 3) % 7);
                        const SeqId id = s.mgr.add_sequence(p);
                        s.ref.add(id);
                        const int64_t hit = s.mgr.length(id);
                        // The reference of a hit: what some live sequence with these tokens holds.
                        if (hit > 0) {
                            bool found = false;
                            for (auto& [other, t] : s.toks)
                                if (other != id && t.size() >= size_t(hit) &&
                                    std::equal(p.begin(), p.begin() + hit, t.begin()) &&
                                    s.ref.contains(other)) {
                                    s.ref.fork(other, id);
                                    s.ref.truncate(id, hit);
                                    found = true;
                                    break;
                                }
                            if (!found) {  // its pages' writer is gone: compare no K/V of it
                                s.mgr.free(id);
                                s.ref.free(id);
                                continue;
                            }
                        }
                        s.toks[id].assign(p.begin(), p.begin() + hit);
                        const std::vector<std::vector<int32_t>> rest{
                            std::vector<int32_t>(p.begin() + hit, p.end())};
                        s.step({id}, {uint32_t(rest[0].size())}, &rest);
                    } else {
                        s.step({s.add()},
                               {uint32_t(std::uniform_int_distribution<int>(1, 9)(rng))});
                    }
                } else if (r <= 2 && !in.empty()) {
                    std::vector<SeqId> seqs;
                    std::vector<uint32_t> counts;
                    std::vector<std::vector<int32_t>> ids;
                    for (SeqId id : in)
                        if (rng() % 2) {
                            seqs.push_back(id);
                            counts.push_back(uint32_t(rng() % 6));
                            ids.emplace_back();
                            for (uint32_t i = 0; i < counts.back(); ++i)
                                ids.back().push_back(next_token++ % 5);
                        }
                    s.step(seqs, counts, s.mgr.options().prefix_caching ? &ids : nullptr);
                } else if (r == 3 && !in.empty()) {
                    s.fork(pick(in));
                } else if (r == 4 && !in.empty()) {
                    const SeqId id = pick(in);
                    s.truncate(id, -int64_t(rng() % 6));
                } else if (r == 5) {
                    s.free(pick(live));
                } else if (r <= 7 && !in.empty()) {
                    s.swap_out(pick(in));
                } else if (!out.empty()) {
                    s.swap_in(pick(out));
                }
            } catch (const Error& e) {
                // Running out of pages on either tier is an ordinary outcome; nothing changed.
                INFO(e.what());
                REQUIRE(e.code() == ErrorCode::OutOfBlocks);
            }
            s.check();
        }
        // Everything comes back or goes.
        for (SeqId id : s.mgr.sequences())
            if (s.mgr.is_swapped(id)) {
                try {
                    s.swap_in(id);
                } catch (const Error&) {
                    s.free(id);
                }
            }
        s.check();
    }
}

// ---- Prefix pages spilled to the host tier on eviction, and found there again.

namespace {

// The prompt whose pages spill: 13 tokens, 3 full pages (block_size 4).
std::vector<int32_t> spill_prompt() {
    std::vector<int32_t> p(13);
    for (size_t i = 0; i < p.size(); ++i)
        p[i] = int32_t(i * 7 + 3);
    return p;
}

// Computes the prompt in sequence a, keeps its reference K/V under ref id `keep` (the first
// `kept` tokens), frees a (its 3 full pages stay cached, evictable), then fills the 8-page pool
// with a sequence of 32 tokens stepped without ids (never cached) and frees it: a's pages are
// evicted, leaves first. Returns the spilled pages counted.
uint64_t spill_a(Swapped& s, uint64_t keep, int64_t kept) {
    const std::vector<int32_t> prompt = spill_prompt();
    const SeqId a = s.mgr.add_sequence(prompt);
    s.ref.add(a);
    const std::vector<std::vector<int32_t>> ids{prompt};
    s.step({a}, {13}, &ids);
    s.check();
    s.ref.fork(a, keep);
    s.ref.truncate(keep, kept);
    s.mgr.free(a);
    s.ref.free(a);
    s.toks.erase(a);
    REQUIRE(s.mgr.prefix_stats().cached_pages == 3);
    REQUIRE(s.mgr.prefix_stats().spilled_pages == 0);
    REQUIRE(s.pool.check() == "");
    const SeqId b = s.mgr.add_sequence();
    s.ref.add(b);
    s.step({b}, {32});  // 8 pages: the 5 free ones, then a's 3 evicted
    REQUIRE(s.pool.check() == "");
    REQUIRE(s.mgr.prefix_stats().evictions == 3);
    REQUIRE(s.mgr.prefix_stats().cached_pages == 0);
    // b's K/V are its own (the spill copied a's bytes before b wrote the pages).
    s.ref.fork(b, keep + 1);  // check() compares b while keep is set aside
    s.ref.free(keep + 1);
    s.free(b);
    REQUIRE(s.pool.check() == "");
    return s.mgr.prefix_stats().spilled_pages;
}

// Admits the prompt again as c: the hit pages come from the host tier; c's reference is the
// kept K/V truncated to c's length.
SeqId hit_again(Swapped& s, uint64_t keep) {
    const std::vector<int32_t> prompt = spill_prompt();
    const SeqId c = s.mgr.add_sequence(prompt);
    s.ref.fork(keep, c);
    s.ref.free(keep);
    s.ref.truncate(c, s.mgr.length(c));
    s.toks[c].assign(prompt.begin(), prompt.begin() + s.mgr.length(c));
    return c;
}

}  // namespace

TEST_CASE("host tier: evicted prefix pages spill to the host and are hit again",
          "[gpu][host][prefix]") {
    ValidatedContext vc;
    for (DType dtype : {DType::F16, DType::Int8, DType::FP8E4M3}) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 8, 8), true);
        const uint64_t keep = 1'000'000;
        REQUIRE(spill_a(s, keep, 12) == 3);
        REQUIRE(s.pool.stats().used_host_blocks == 3);  // spilled pages hold host blocks
        REQUIRE(s.mgr.prefix_stats().host_hit_pages == 0);
        const SeqId c = hit_again(s, keep);
        REQUIRE(s.mgr.length(c) == 12);
        const PrefixCacheStats st = s.mgr.prefix_stats();
        REQUIRE(st.host_hit_pages == 3);
        REQUIRE(st.hit_tokens == 12);
        REQUIRE(st.cached_pages == 3);  // indexed on the device again
        s.check();                      // c's K/V are a's, bit for bit
        // c computes its last token and goes on; a fourth prompt hits the device pages now.
        const std::vector<std::vector<int32_t>> last{{spill_prompt()[12]}};
        s.step({c}, {1}, &last);
        s.check();
        const SeqId d = s.mgr.add_sequence(spill_prompt());
        REQUIRE(s.mgr.length(d) == 12);
        REQUIRE(s.mgr.prefix_stats().host_hit_pages == 3);  // from the device this time
        REQUIRE(shared_pages(s.mgr.block_table(c), s.mgr.block_table(d), 3).size() == 3);
        s.ref.fork(c, d);
        s.ref.truncate(d, 12);
        s.check();

        // Snapshots refuse spilled pages; reset_prefix_cache drops them.
        s.free(c);
        s.free(d);
        REQUIRE(s.pool.stats().used_host_blocks == 3);
        TempFile f("host-spill.snap");
        const KVManager* managers[] = {&s.mgr};
        require_error([&] { save_snapshot(f.path, s.pool, {}, managers); },
                      ErrorCode::InvalidArgument, "3 prefix-cached pages spilled");
        s.mgr.reset_prefix_cache();
        REQUIRE(s.pool.stats().used_host_blocks == 0);
        REQUIRE(s.mgr.prefix_stats() == PrefixCacheStats{});
        REQUIRE(s.pool.check() == "");
        save_snapshot(f.path, s.pool, {}, managers);
    }
}

TEST_CASE("host tier: a full host tier drops the least recently spilled page",
          "[gpu][host][prefix]") {
    ValidatedContext vc;
    for (DType dtype : {DType::F16, DType::Int8}) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 8, 2), true);
        const uint64_t keep = 1'000'000;
        // a's pages spill leaves first: page 2, page 1, then page 0 drops page 2.
        REQUIRE(spill_a(s, keep, 8) == 3);
        REQUIRE(s.pool.stats().used_host_blocks == 2);
        // The lookup finds pages 0 and 1 and misses page 2 cleanly.
        const SeqId c = hit_again(s, keep);
        REQUIRE(s.mgr.length(c) == 8);
        REQUIRE(s.mgr.prefix_stats().host_hit_pages == 2);
        REQUIRE(s.mgr.prefix_stats().hit_tokens == 8);
        s.check();
        // c computes the rest of the prompt, its pages are indexed again.
        const std::vector<int32_t> prompt = spill_prompt();
        const std::vector<std::vector<int32_t>> rest{{prompt.begin() + 8, prompt.end()}};
        s.step({c}, {5}, &rest);
        s.check();
        REQUIRE(s.mgr.prefix_stats().cached_pages == 3);
    }
}

TEST_CASE("host tier: swap_out takes the host blocks of spilled pages back",
          "[gpu][host][prefix]") {
    ValidatedContext vc;
    for (DType dtype : {DType::F16, DType::Int8}) {
        INFO(to_string(dtype));
        Swapped s(vc.ctx, host_config(dtype, 8, 4), true);
        const uint64_t keep = 1'000'000;
        REQUIRE(spill_a(s, keep, 4) == 3);
        REQUIRE(s.pool.stats().used_host_blocks == 3);  // 1 host block free
        // b needs 3 host blocks: the two least recently spilled pages (2 and 1) give theirs.
        const SeqId b = s.add();
        s.step({b}, {12});
        s.swap_out(b);
        REQUIRE(s.mgr.is_swapped(b));
        REQUIRE(s.pool.stats().used_host_blocks == 4);
        REQUIRE(s.pool.check() == "");
        // Page 0 is still on the host: the prompt hits it.
        const SeqId c = hit_again(s, keep);
        REQUIRE(s.mgr.length(c) == 4);
        REQUIRE(s.mgr.prefix_stats().host_hit_pages == 1);
        s.check();
        // b beside page 0 fills the host tier; a swap_out that would fail even with page 0's
        // block throws OutOfBlocks and drops nothing.
        s.free(c);
        const SeqId g = s.add();
        s.step({g}, {8});
        REQUIRE(s.pool.stats().used_host_blocks == 4);
        require_error([&] { s.swap_out(g); }, ErrorCode::OutOfBlocks, "host tier");
        REQUIRE(s.pool.stats().used_host_blocks == 4);
        REQUIRE(s.pool.check() == "");
        // One page: page 0's host block goes to it.
        s.truncate(g, 4);
        s.swap_out(g);
        REQUIRE(s.pool.stats().used_host_blocks == 4);
        REQUIRE(s.pool.check() == "");
        s.swap_in(g);
        s.swap_in(b);
        s.check();
    }
}
