#include "pagedkv/error.hpp"

namespace pagedkv {

const char* to_string(ErrorCode code) noexcept {
    switch (code) {
        case ErrorCode::InvalidArgument:
            return "InvalidArgument";
        case ErrorCode::OutOfBlocks:
            return "OutOfBlocks";
        case ErrorCode::CapacityExceeded:
            return "CapacityExceeded";
        case ErrorCode::CorruptSnapshot:
            return "CorruptSnapshot";
        case ErrorCode::Vulkan:
            return "Vulkan";
        case ErrorCode::Unsupported:
            return "Unsupported";
        case ErrorCode::NotImplemented:
            return "NotImplemented";
        case ErrorCode::OutOfMemory:
            return "OutOfMemory";
    }
    return "Unknown";
}

}  // namespace pagedkv
