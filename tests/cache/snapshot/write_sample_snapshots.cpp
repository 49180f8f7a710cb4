// Writes the sample snapshots into a directory for the ctest that validates pagedkv-dump --json
// against its schema: tables only, with page contents, an untouched pool with no caches, and a
// pool with prefix caching (held and evictable cached pages), quantized pools (int8, fp8), a hybrid
// model's pool (layer groups), and the
// README picture's pool (showcase.snap).
#include <cstdio>
#include <filesystem>

#include "cache/snapshot/snapshot_codec.hpp"
#include "snapshot_samples.hpp"

int main(int argc, char** argv) {
    using namespace pagedkv;
    if (argc != 2) {
        std::fprintf(stderr, "usage: pagedkv_write_sample_snapshots DIR\n");
        return 2;
    }
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    write_snapshot_file(dir / "sample.snap", encode_snapshot(test::sample_snapshot(false)));
    write_snapshot_file(dir / "sample-pages.snap", encode_snapshot(test::sample_snapshot(true)));
    SnapshotData token = test::sample_snapshot(true);
    token.layout.layout = PageLayout::TokenMajor;
    write_snapshot_file(dir / "sample-token-major.snap", encode_snapshot(token));
    SnapshotData empty;
    empty.layout = test::sample_snapshot(false).layout;
    BlockAllocator fresh(empty.layout.num_blocks);
    empty.allocator = fresh.state();
    write_snapshot_file(dir / "empty.snap", encode_snapshot(empty));
    write_snapshot_file(dir / "sample-cached.snap", encode_snapshot(test::cached_snapshot(false)));
    write_snapshot_file(dir / "sample-cached-pages.snap",
                        encode_snapshot(test::cached_snapshot(true)));
    write_snapshot_file(dir / "sample-int8-pages.snap",
                        encode_snapshot(test::quantized_snapshot(DType::Int8, true)));
    write_snapshot_file(dir / "sample-fp8.snap",
                        encode_snapshot(test::quantized_snapshot(DType::FP8E4M3, false)));
    // A hybrid model's pool: one table per layer group per row.
    write_snapshot_file(dir / "sample-hybrid.snap", encode_snapshot(test::hybrid_snapshot(false)));
    // The README's picture: pagedkv-dump --svg tools/dump-showcase.svg DIR/showcase.snap
    write_snapshot_file(dir / "showcase.snap", encode_snapshot(test::showcase_snapshot()));
    // A pool of 4096 pages and 64 rows: the compact picture.
    write_snapshot_file(dir / "large.snap", encode_snapshot(test::large_snapshot(4096, 64)));
    return 0;
}
