#include "cache/snapshot/crc32.hpp"

#include <array>

namespace pagedkv {

namespace {

constexpr std::array<uint32_t, 256> make_table() {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        t[i] = c;
    }
    return t;
}

constexpr std::array<uint32_t, 256> kTable = make_table();

}  // namespace

uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc) noexcept {
    crc = ~crc;
    for (uint8_t b : bytes)
        crc = kTable[(crc ^ b) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

}  // namespace pagedkv
