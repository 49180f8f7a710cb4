// Catch2's main, plus two options of the project's own: --page-layout=head|token|auto sets
// PAGEDKV_TEST_LAYOUT and --devices=1|2 PAGEDKV_TEST_DEVICES (tests/support/test_support.hpp)
// before any test runs, so that tests/CMakeLists.txt can register the suite once per page layout
// and once over two devices (ctest's ENVIRONMENT cannot
// ride through catch_discover_tests next to another variable).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <vector>

int main(int argc, char* argv[]) {
    std::vector<char*> args;
    constexpr const char* kOption = "--page-layout=";
    constexpr const char* kDevices = "--devices=";
    for (int i = 0; i < argc; ++i) {
        if (std::strncmp(argv[i], kOption, std::strlen(kOption)) == 0)
            setenv("PAGEDKV_TEST_LAYOUT", argv[i] + std::strlen(kOption), 1);
        else if (std::strncmp(argv[i], kDevices, std::strlen(kDevices)) == 0)
            setenv("PAGEDKV_TEST_DEVICES", argv[i] + std::strlen(kDevices), 1);
        else
            args.push_back(argv[i]);
    }
    return Catch::Session().run(int(args.size()), args.data());
}
