// Catch2's main, plus one option of the project's own: --page-layout=head|token|auto sets
// PAGEDKV_TEST_LAYOUT (tests/support/test_support.hpp) before any test runs, so that
// tests/CMakeLists.txt can register the suite once per page layout (ctest's ENVIRONMENT cannot
// ride through catch_discover_tests next to another variable).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <vector>

int main(int argc, char* argv[]) {
    std::vector<char*> args;
    constexpr const char* kOption = "--page-layout=";
    for (int i = 0; i < argc; ++i) {
        if (std::strncmp(argv[i], kOption, std::strlen(kOption)) == 0)
            setenv("PAGEDKV_TEST_LAYOUT", argv[i] + std::strlen(kOption), 1);
        else
            args.push_back(argv[i]);
    }
    return Catch::Session().run(int(args.size()), args.data());
}
