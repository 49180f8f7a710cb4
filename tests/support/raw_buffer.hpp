// RawBuffer: a VkBuffer a host runtime made itself (not through pagedkv), with the usages
// Tensor::wrap documents and host-visible memory the "runtime" writes through a mapping, for
// the tests of wrapped tensors. Destroyed by its destructor, never by the library.
#pragma once

#include <vulkan/vulkan_core.h>
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>

#include "cache/manager/access.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv::test {

struct RawBuffer {
    VkDevice device = VK_NULL_HANDLE;
    VkBuffer buffer = VK_NULL_HANDLE;
    VkDeviceMemory memory = VK_NULL_HANDLE;
    VkDeviceSize size = 0;
    VkDeviceSize allocation = 0;  // vkGetBufferMemoryRequirements' size
    char* mapped = nullptr;

    // usage: what Tensor::wrap needs unless a test wants less.
    RawBuffer(VkPhysicalDevice physical, VkDevice dev, VkDeviceSize bytes,
              VkBufferUsageFlags usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                                         VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT |
                                         VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                         VK_BUFFER_USAGE_TRANSFER_DST_BIT)
        : device(dev), size(bytes) {
        VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
        bci.size = bytes;
        bci.usage = usage;
        bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
        REQUIRE(vkCreateBuffer(device, &bci, nullptr, &buffer) == VK_SUCCESS);
        VkMemoryRequirements req;
        vkGetBufferMemoryRequirements(device, buffer, &req);
        allocation = req.size;
        VkPhysicalDeviceMemoryProperties props;
        vkGetPhysicalDeviceMemoryProperties(physical, &props);
        const VkMemoryPropertyFlags want =
            VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
        uint32_t type = UINT32_MAX;
        for (uint32_t i = 0; i < props.memoryTypeCount && type == UINT32_MAX; ++i)
            if ((req.memoryTypeBits & (1u << i)) &&
                (props.memoryTypes[i].propertyFlags & want) == want)
                type = i;
        REQUIRE(type != UINT32_MAX);
        VkMemoryAllocateFlagsInfo flags{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO};
        flags.flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT;
        VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
        mai.pNext = &flags;
        mai.allocationSize = req.size;
        mai.memoryTypeIndex = type;
        REQUIRE(vkAllocateMemory(device, &mai, nullptr, &memory) == VK_SUCCESS);
        REQUIRE(vkBindBufferMemory(device, buffer, memory, 0) == VK_SUCCESS);
        void* p = nullptr;
        REQUIRE(vkMapMemory(device, memory, 0, VK_WHOLE_SIZE, 0, &p) == VK_SUCCESS);
        mapped = static_cast<char*>(p);
        std::memset(mapped, 0xA5, size_t(bytes));  // garbage around what the tests write
    }
    // On the device of a library-made context (its VkDevice, as a host sharing it would).
    RawBuffer(Context& ctx, VkDeviceSize bytes)
        : RawBuffer(detail::Access::device(ctx).physical(), detail::Access::device(ctx).handle(),
                    bytes) {}
    ~RawBuffer() {
        if (mapped) vkUnmapMemory(device, memory);
        vkDestroyBuffer(device, buffer, nullptr);
        vkFreeMemory(device, memory, nullptr);
    }
    RawBuffer(const RawBuffer&) = delete;
    RawBuffer& operator=(const RawBuffer&) = delete;

    // The runtime writes bytes at offset through its mapping.
    void write(VkDeviceSize offset, const void* data, size_t bytes) {
        std::memcpy(mapped + offset, data, bytes);
    }
};

}  // namespace pagedkv::test
