// CallerKernels: compute pipelines a host runtime would own (tests/support/caller_kernels.comp),
// made on the host's device by the test, and dispatched into the host's command buffers.
#pragma once

#include <vulkan/vulkan_core.h>
#include <catch2/catch.hpp>

#include <cstdint>
#include <span>

namespace pagedkv::test {

// Mirrors the push constants of caller_kernels.comp.
struct CallerParams {
    uint64_t a = 0;
    uint64_t b = 0;
    uint64_t c = 0;
    uint32_t n = 0;
    float base = 0;
    float step = 0;
    uint32_t heads = 0;
    uint32_t dim = 0;
    uint32_t max_len = 0;
    uint32_t block_size = 0;
    uint32_t slab_shift = 0;
    uint32_t token_major = 0;
    uint64_t indptr = 0;
    uint64_t indices = 0;
    uint64_t last_page_len = 0;
    uint64_t first_slot = 0;
    uint64_t block_bytes = 0;
    uint64_t page_offset = 0;
    uint64_t scales_offset = 0;
    uint32_t quant = 0;
};

constexpr uint32_t kProduceSpirv[] = {
#include "spirv/caller_kernels_produce.inc"
};
constexpr uint32_t kCombineSpirv[] = {
#include "spirv/caller_kernels_combine.inc"
};
constexpr uint32_t kViewGatherSpirv[] = {
#include "spirv/caller_kernels_view_gather.inc"
};

class CallerKernels {
  public:
    enum Kind { Produce, Combine, ViewGather };

    CallerKernels(VkDevice device, uint32_t family) : device_(device) {
        VkPushConstantRange range{VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(CallerParams)};
        VkPipelineLayoutCreateInfo lci{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
        lci.pushConstantRangeCount = 1;
        lci.pPushConstantRanges = &range;
        REQUIRE(vkCreatePipelineLayout(device_, &lci, nullptr, &layout_) == VK_SUCCESS);
        const std::span<const uint32_t> code[] = {kProduceSpirv, kCombineSpirv, kViewGatherSpirv};
        for (int k = 0; k < 3; ++k) {
            VkShaderModuleCreateInfo mci{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
            mci.codeSize = code[k].size_bytes();
            mci.pCode = code[k].data();
            VkShaderModule module = VK_NULL_HANDLE;
            REQUIRE(vkCreateShaderModule(device_, &mci, nullptr, &module) == VK_SUCCESS);
            VkComputePipelineCreateInfo pci{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
            pci.stage = {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO};
            pci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
            pci.stage.module = module;
            pci.stage.pName = "main";
            pci.layout = layout_;
            const VkResult r =
                vkCreateComputePipelines(device_, VK_NULL_HANDLE, 1, &pci, nullptr, &pipes_[k]);
            vkDestroyShaderModule(device_, module, nullptr);
            REQUIRE(r == VK_SUCCESS);
        }
        VkCommandPoolCreateInfo cpci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
        cpci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
        cpci.queueFamilyIndex = family;
        REQUIRE(vkCreateCommandPool(device_, &cpci, nullptr, &pool_) == VK_SUCCESS);
        VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
        ai.commandPool = pool_;
        ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
        ai.commandBufferCount = 1;
        REQUIRE(vkAllocateCommandBuffers(device_, &ai, &cmd_) == VK_SUCCESS);
        VkFenceCreateInfo fci{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
        REQUIRE(vkCreateFence(device_, &fci, nullptr, &fence_) == VK_SUCCESS);
    }
    ~CallerKernels() {
        vkDestroyFence(device_, fence_, nullptr);
        vkDestroyCommandPool(device_, pool_, nullptr);
        for (VkPipeline p : pipes_)
            vkDestroyPipeline(device_, p, nullptr);
        vkDestroyPipelineLayout(device_, layout_, nullptr);
    }
    CallerKernels(const CallerKernels&) = delete;
    CallerKernels& operator=(const CallerKernels&) = delete;

    // The host's command buffer, begun.
    VkCommandBuffer begin() {
        REQUIRE(vkResetCommandBuffer(cmd_, 0) == VK_SUCCESS);
        VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
        bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
        REQUIRE(vkBeginCommandBuffer(cmd_, &bi) == VK_SUCCESS);
        return cmd_;
    }
    // Records one kernel over p.n elements (no barrier: the library's own barriers order it
    // against the library's commands).
    void dispatch(Kind k, const CallerParams& p) {
        vkCmdBindPipeline(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, pipes_[k]);
        vkCmdPushConstants(cmd_, layout_, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof p, &p);
        vkCmdDispatch(cmd_, (p.n + 63) / 64, 1, 1);
    }
    // Ends, submits and waits for the command buffer.
    void submit_and_wait(VkQueue queue) {
        REQUIRE(vkEndCommandBuffer(cmd_) == VK_SUCCESS);
        REQUIRE(vkResetFences(device_, 1, &fence_) == VK_SUCCESS);
        VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
        si.commandBufferCount = 1;
        si.pCommandBuffers = &cmd_;
        REQUIRE(vkQueueSubmit(queue, 1, &si, fence_) == VK_SUCCESS);
        REQUIRE(vkWaitForFences(device_, 1, &fence_, VK_TRUE, UINT64_MAX) == VK_SUCCESS);
    }

  private:
    VkDevice device_;
    VkPipelineLayout layout_ = VK_NULL_HANDLE;
    VkPipeline pipes_[3] = {};
    VkCommandPool pool_ = VK_NULL_HANDLE;
    VkCommandBuffer cmd_ = VK_NULL_HANDLE;
    VkFence fence_ = VK_NULL_HANDLE;
};

}  // namespace pagedkv::test
