// libFuzzer harness: the input is a snapshot file, decoded and checked as pagedkv-dump does, then
// restored on lavapipe, saved back, and the restored caches used, with pool.validate() after each.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cache/snapshot/detailed_stats.hpp"
#include "cache/snapshot/snapshot_check.hpp"
#include "cache/snapshot/snapshot_codec.hpp"
#include "pagedkv/pagedkv.hpp"

using namespace pagedkv;

namespace {

// A restored pool is sized by the file; larger ones are legitimate but would only spend the
// fuzzer's memory and time on lavapipe allocating slabs.
constexpr uint64_t kMaxPoolBytes = 16u << 20;
// How many of the input's last bytes choose the operations run on the restored caches. With
// page contents those are page bytes, which the decoder does not interpret, so the fuzzer can
// vary the operations without breaking the file.
constexpr size_t kOpBytes = 6;

// How far the inputs got, over the whole run, printed at exit: most mutations are refused by
// the decoder, and a run is only worth its time if some reach restore and the operations.
struct Counts {
    unsigned long long executions = 0, decoded = 0, restored = 0, operations = 0, refused = 0;
} counts;

void print_counts() {
    std::fprintf(stderr,
                 "fuzz_snapshot: %llu executions, %llu decoded after resealing, %llu restored, "
                 "%llu operations on restored caches (%llu refused)\n",
                 counts.executions, counts.decoded, counts.restored, counts.operations,
                 counts.refused);
}

Context& context() {
    // No validation layer here: under ASan it makes each execution several times slower, and
    // the test suite already runs every path under it.
    static Context ctx = Context::create();
    return ctx;
}

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
    std::fprintf(stderr, "fuzz_snapshot: %s%s%s\n", what, detail.empty() ? "" : ": ",
                 detail.c_str());
    std::abort();
}

// One pair of files per process, so that parallel jobs (-jobs, -fork) keep to their own;
// removed at exit.
struct TempFiles {
    std::filesystem::path in, out;
    TempFiles() {
        const auto base = std::filesystem::temp_directory_path() /
                          ("pagedkv-fuzz-snapshot-" + std::to_string(getpid()));
        in = base.string() + "-in.snap";
        out = base.string() + "-out.snap";
    }
    ~TempFiles() {
        std::error_code ec;
        std::filesystem::remove(in, ec);
        std::filesystem::remove(out, ec);
    }
};

TempFiles& temp_files() {
    static TempFiles files;
    return files;
}

void write_file(const std::filesystem::path& path, std::span<const uint8_t> bytes) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f))
        fail("cannot write the temporary file", path.string());
}

// What pagedkv-dump does with a file before printing it. Only CorruptSnapshot may come out of
// the decoder, and whatever it returns must hold every invariant and re-encode to the same
// bytes (else some bytes were ignored, and two different files would restore the same).
std::optional<SnapshotData> inspect(std::span<const uint8_t> bytes) {
    SnapshotData s;
    try {
        s = decode_snapshot(bytes);
    } catch (const Error& e) {
        if (e.code() != ErrorCode::CorruptSnapshot)
            fail("decode_snapshot threw other than CorruptSnapshot", e.what());
        return std::nullopt;
    }
    if (std::string e = check_snapshot(s); !e.empty())
        fail("decode_snapshot returned what check_snapshot rejects", e);
    (void)compute_detailed_stats(s);
    (void)slots_in_use(s);
    const std::vector<uint8_t> again = encode_snapshot(s);
    if (!std::equal(again.begin(), again.end(), bytes.begin(), bytes.end()))
        fail("a decoded snapshot does not re-encode to its bytes");
    return s;
}

void check_pool(const BlockPool& pool, const char* after) {
    if (!pool.validate()) fail(after, pool.check());
}

// Reads every layer back, as a runtime resuming from the snapshot would first do.
void read_all(const PagedKVCache& cache, uint32_t layers) {
    for (uint32_t l = 0; l < layers; ++l) {
        const std::vector<int64_t> lens = cache.seq_lengths(l);
        if (lens.size() != cache.batch_size()) fail("seq_lengths() size is not batch_size()");
        if (auto kv = cache.get(l)) {
            (void)kv->first.to_host();
            (void)kv->second.to_host();
        }
    }
}

// One operation on a restored cache, chosen by `b`; a refusal (pagedkv::Error) is fine.
void mutate(Context& ctx, PagedKVCache& cache, uint8_t b) {
    const PoolConfig& c = cache.pool().config();
    const uint32_t batch = cache.batch_size(), arg = b >> 3;
    switch (b % 8) {
        case 0:
            cache.batch_repeat_interleave(1 + arg % 3);
            break;
        case 1: {  // a selection that repeats a row, so two rows share every page
            const int32_t r = int32_t(arg % (batch + 1));
            const std::vector<int32_t> idx{r, r};
            cache.batch_select_indices(idx);
            break;
        }
        case 2: {  // reversed rows
            std::vector<int32_t> idx;
            for (uint32_t r = batch; r-- > 0;)
                idx.push_back(int32_t(r));
            cache.reorder_cache(idx);
            break;
        }
        case 3:
            cache.crop(int64_t(arg % 8) - 1);
            break;
        case 4:
            cache.truncate(int64_t(arg % 10) - 5);
            break;
        case 5: {  // append one token to every row of one layer
            const int64_t rows = batch ? batch : 1;
            std::vector<float> k(size_t(rows) * c.num_kv_heads * c.head_dim),
                v(size_t(rows) * c.num_kv_heads * c.v_head_dim);
            for (size_t i = 0; i < k.size(); ++i)
                k[i] = 0.25f * float(i % 8);
            for (size_t i = 0; i < v.size(); ++i)
                v[i] = -0.5f * float(i % 4);
            const Tensor kt =
                Tensor::from_host(ctx, k, {rows, c.num_kv_heads, 1, c.head_dim}, c.dtype);
            const Tensor vt =
                Tensor::from_host(ctx, v, {rows, c.num_kv_heads, 1, c.v_head_dim}, c.dtype);
            cache.update(kt, vt, arg % c.num_layers);
            break;
        }
        case 6:
            cache.reset();
            break;
        case 7:
            cache.batch_select_indices(std::vector<int32_t>{0});
            break;
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // libFuzzer ends a run (-runs, -max_total_time) with exit(), which runs this.
    std::atexit(print_counts);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    ++counts.executions;
    const std::span<const uint8_t> input(data, size);
    // The file as given: the header and checksum checks.
    (void)inspect(input);
    if (size < 32) return 0;
    // The same bytes with both checksums recomputed, so that mutations reach the checks behind
    // them instead of all failing at the checksum.
    std::vector<uint8_t> sealed(data, data + size);
    seal_snapshot(sealed);
    const std::optional<SnapshotData> s = inspect(sealed);
    if (!s) return 0;
    ++counts.decoded;
    if (!s->has_pages) return 0;
    const uint64_t block_bytes = s->layout.block_bytes();  // at least 1: check_layout
    if (block_bytes > kMaxPoolBytes || s->layout.num_blocks > kMaxPoolBytes / block_bytes) return 0;

    Context& ctx = context();
    const std::filesystem::path& path = temp_files().in;
    write_file(path, sealed);
    RestoredSnapshot r;
    try {
        r = restore_snapshot(ctx, path);
    } catch (const Error& e) {
        // The decoder accepted the file: only the device may refuse (e.g. slab limits).
        if (e.code() == ErrorCode::CorruptSnapshot)
            fail("restore_snapshot rejects what decode_snapshot accepts", e.what());
        return 0;
    }
    ++counts.restored;
    BlockPool& pool = *r.pool;
    check_pool(pool, "pool invariants broken after restore");

    // Saved again, the restored pool and caches must give back the very file (an exception out
    // of save_snapshot is a finding too: everything it is given came from restore).
    std::vector<const PagedKVCache*> caches;
    for (const auto& c : r.caches)
        caches.push_back(c.get());
    const std::filesystem::path& out = temp_files().out;
    save_snapshot(out, pool, caches, SnapshotOptions{.page_contents = true});
    const std::vector<uint8_t> saved = read_snapshot_file(out);
    // Restore puts an empty layer's start at slot 0 (the library never leaves it elsewhere, older
    // versions could): a file that has one elsewhere comes back in that canonical form.
    SnapshotData canonical = *s;
    bool normalised = false;
    for (SnapshotCache& k : canonical.caches)
        for (size_t l = 0; l < k.len.size(); ++l)
            for (size_t row = 0; row < k.len[l].size(); ++row)
                if (k.len[l][row] == 0 && k.start[l][row] != 0) {
                    k.start[l][row] = 0;
                    normalised = true;
                }
    const std::vector<uint8_t> expected = normalised ? encode_snapshot(canonical) : sealed;
    if (saved != expected) {
        size_t at = 0;
        while (at < saved.size() && at < expected.size() && saved[at] == expected[at])
            ++at;
        fail("restore then save does not give back the file",
             "first difference at byte " + std::to_string(at));
    }

    const uint32_t layers = pool.config().num_layers;
    const auto ops = input.last(std::min(size, kOpBytes));
    for (const auto& cache : r.caches) {
        read_all(*cache, layers);
        for (uint8_t b : ops) {
            ++counts.operations;
            try {
                mutate(ctx, *cache, b);
            } catch (const Error&) {
                ++counts.refused;  // the pool must still be whole
            }
            check_pool(pool, "pool invariants broken after an operation on a restored cache");
            read_all(*cache, layers);
        }
    }
    return 0;
}
