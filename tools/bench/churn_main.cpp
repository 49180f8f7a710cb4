// pagedkv-churn: the allocator churn table (tools/bench/allocator_churn.hpp) for 1k, 100k and
// 1M pages, or for the pool sizes given as arguments.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <vector>

#include "allocator_churn.hpp"

int main(int argc, char** argv) {
    std::vector<uint64_t> sizes{1000, 100000, 1000000};
    int pairs = 7;
    CLI::App app{
        "pagedkv-churn: the allocator and block tables under churn (pool 90% full, sequences of "
        "1-128 pages ending and starting in random order) against a raw std::vector free list "
        "doing the same, in ns per page; one row per pool size as it is measured.",
        "pagedkv-churn"};
    app.add_option("pages", sizes, "pool sizes in pages")
        ->type_name("PAGES")
        ->capture_default_str()
        ->check(CLI::Range(uint64_t(1), uint64_t(1) << 32));
    app.add_option("--pairs", pairs, "interleaved allocator / raw runs per size")
        ->type_name("N")
        ->envname("PAGEDKV_CHURN_PAIRS")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "%s: %s\nRun with --help for more information.\n", "pagedkv-churn",
                     e.what());
        return 2;
    }
    std::printf("%10s %12s %12s %8s %16s\n", "pages", "raw ns/pg", "alloc ns/pg", "ratio",
                "ratio min-max");
    std::fflush(stdout);
    for (uint64_t n : sizes) {
        const auto r = pagedkv::bench::measure_churn(n, pairs);
        std::printf("%10llu %12.2f %12.2f %7.2fx %7.2f-%.2fx\n",
                    static_cast<unsigned long long>(r.pages), r.ns_per_page_raw,
                    r.ns_per_page_allocator, r.ratio, r.ratio_min, r.ratio_max);
        std::fflush(stdout);
    }
    return 0;
}
