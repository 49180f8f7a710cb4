// A Catch2 listener that fails the run when a test case leaves a Vulkan device alive.
// Listener types are visible outside the main file only with this defined.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>

#include "shaders/vulkan/device.hpp"

namespace {

// Every test case must leave no Vulkan device alive: a leaked device (a reference cycle, a
// handle kept past its test) is found here, where lavapipe would otherwise hide it until a
// real driver runs out of instances.
struct DeviceLeakListener : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    void testCaseEnded(const Catch::TestCaseStats& stats) override {
        const int live = pagedkv::detail::Device::live_count();
        if (live != 0) {
            std::fprintf(stderr, "test case \"%s\" leaked %d Vulkan device(s)\n",
                         stats.testInfo.name.c_str(), live);
            std::exit(3);
        }
    }
};

}  // namespace

CATCH_REGISTER_LISTENER(DeviceLeakListener)
