// crc32: the checksum of snapshot files (CRC-32 of IEEE 802.3 / zlib / PNG, reflected polynomial
// 0xEDB88320), which catches every single-bit flip and every burst error up to 32 bits.
#pragma once

#include <cstdint>
#include <span>

namespace pagedkv {

// Continues a running checksum: crc32(b, crc32(a)) == crc32(a followed by b).
uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc = 0) noexcept;

}  // namespace pagedkv
