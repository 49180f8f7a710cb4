// f16 / bf16 conversions: round to nearest even, exact round trips, specials.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <limits>

#include "pagedkv/dtype.hpp"

using namespace pagedkv;

TEST_CASE("every f16 value survives a round trip through f32", "[dtype]") {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = f16_to_f32(uint16_t(h));
        if (std::isnan(f)) continue;
        REQUIRE(f32_to_f16(f) == h);
    }
}

TEST_CASE("every bf16 value survives a round trip through f32", "[dtype]") {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = bf16_to_f32(uint16_t(h));
        if (std::isnan(f)) continue;
        REQUIRE(f32_to_bf16(f) == h);
    }
}

TEST_CASE("f16 conversion rounds to nearest even and saturates to infinity", "[dtype]") {
    CHECK(f32_to_f16(1.0f) == 0x3c00);
    CHECK(f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00);  // tie: stays even
    CHECK(f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);  // tie: rounds up to even
    CHECK(f32_to_f16(65504.0f) == 0x7bff);
    CHECK(f32_to_f16(65520.0f) == 0x7c00);               // rounds to infinity
    CHECK(f32_to_f16(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
    CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);  // tie to even zero
    CHECK(f32_to_f16(-0.0f) == 0x8000);
    CHECK(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("bf16 conversion rounds to nearest even", "[dtype]") {
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(std::bit_cast<float>(0x3f808000u)) == 0x3f80);  // tie: even
    CHECK(f32_to_bf16(std::bit_cast<float>(0x3f818000u)) == 0x3f82);  // tie: up to even
    CHECK(f32_to_bf16(std::bit_cast<float>(0x3f808001u)) == 0x3f81);
    CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}
