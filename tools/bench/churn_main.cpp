// pagedkv-churn: the allocator churn table (tools/bench/allocator_churn.hpp) for 1k, 100k and
// 1M pages, or for the pool sizes given as arguments.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "allocator_churn.hpp"

int main(int argc, char** argv) {
    std::vector<uint64_t> sizes{1000, 100000, 1000000};
    int pairs = 7;
    if (argc > 1) {
        sizes.clear();
        for (int i = 1; i < argc; ++i)
            sizes.push_back(std::strtoull(argv[i], nullptr, 10));
    }
    if (const char* p = std::getenv("PAGEDKV_CHURN_PAIRS")) pairs = std::atoi(p);
    std::printf("%10s %12s %12s %8s %16s\n", "pages", "raw ns/pg", "alloc ns/pg", "ratio",
                "ratio min-max");
    for (uint64_t n : sizes) {
        const auto r = pagedkv::bench::measure_churn(n, pairs);
        std::printf("%10llu %12.2f %12.2f %7.2fx %7.2f-%.2fx\n",
                    static_cast<unsigned long long>(r.pages), r.ns_per_page_raw,
                    r.ns_per_page_allocator, r.ratio, r.ratio_min, r.ratio_max);
    }
    return 0;
}
