#include "pagedkv/context.hpp"

#include "shaders/vulkan/batch.hpp"
#include "shaders/vulkan/device.hpp"

namespace pagedkv {

Context::Context(std::shared_ptr<detail::Device> d) : device_(std::move(d)) {}
Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&& other) noexcept {
    if (this != &other) {
        if (device_) device_->synchronize_quietly();
        device_ = std::move(other.device_);
    }
    return *this;
}

Context::~Context() {
    // Finished batches drop what they kept alive; the device itself goes when the last
    // tensor or pool holding it does.
    if (device_) device_->synchronize_quietly();
}

Context Context::create(ContextOptions opts) {
    return Context(detail::Device::create(opts));
}
Context Context::adopt(const ExternalVulkan& ext) {
    return Context(detail::Device::adopt(ext));
}

std::string Context::device_name() const {
    return device_->properties().deviceName;
}
bool Context::is_cpu_device() const {
    return device_->is_cpu();
}

void Context::flush() {
    std::lock_guard lock(device_->mutex());
    device_->batches().flush();
}

void Context::synchronize() {
    device_->synchronize();
}

void Context::begin_recording(VkCommandBuffer cmd) {
    std::lock_guard lock(device_->mutex());
    device_->batches().begin_external(cmd);
}

uint64_t Context::end_recording() {
    std::lock_guard lock(device_->mutex());
    return device_->batches().end_external();
}

void Context::finish_recording(uint64_t id) {
    std::lock_guard lock(device_->mutex());
    device_->batches().finish_external(id);
}

bool Context::recording() const {
    std::lock_guard lock(device_->mutex());
    return device_->batches().recording_external();
}

std::vector<std::string> Context::validation_messages() const {
    return device_->validation_messages();
}
void Context::clear_validation_messages() {
    device_->clear_validation_messages();
}

BytePath Context::scatter_path() const {
    return device_->byte_paths().scatter;
}
BytePath Context::gather_path() const {
    return device_->byte_paths().gather;
}

DeviceCounters Context::counters() const {
    std::lock_guard lock(device_->mutex());
    return device_->counters();
}

}  // namespace pagedkv
