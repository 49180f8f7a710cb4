// pagedkv::Error: the one exception type the library throws.
// Every throwing call is all-or-nothing: after it throws, the object is exactly as before.
#pragma once

#include "pagedkv/export.h"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pagedkv {

enum class ErrorCode {
    InvalidArgument,   // a shape, index, dtype or option the call cannot accept
    OutOfBlocks,       // the pool has too few free pages; recoverable (free some, retry)
    CapacityExceeded,  // a fixed capacity (static cache, buffer range) would be exceeded
    CorruptSnapshot,   // a snapshot file failed its checks
    Vulkan,            // a Vulkan call failed; vk_result() holds the VkResult
    Unsupported,       // the device lacks a feature the call needs
    NotImplemented,    // the capability exists in the API but is not built yet
    OutOfMemory,       // device or host memory is too small for the request (pages: OutOfBlocks)
};

PAGEDKV_API const char* to_string(ErrorCode code) noexcept;

class PAGEDKV_API Error : public std::runtime_error {
  public:
    Error(ErrorCode code, const std::string& message, int32_t vk_result = 0)
        : std::runtime_error(message), code_(code), vk_result_(vk_result) {}
    ErrorCode code() const noexcept { return code_; }
    // The VkResult of a failed Vulkan call (code() == ErrorCode::Vulkan), else 0.
    int32_t vk_result() const noexcept { return vk_result_; }

  private:
    ErrorCode code_;
    int32_t vk_result_;
};

}  // namespace pagedkv
