#include "worker/daemon/gpu_monitor.hpp"

#include <dlfcn.h>

#include "kernels/backend.hpp"

namespace mohge {

namespace {

// The few NVML types and entry points used here, as nvml.h declares them (stable C ABI since
// NVML 2; the header itself is not needed to build).
using NvmlReturn = int;  // nvmlReturn_t; NVML_SUCCESS is 0
using NvmlDevice = struct NvmlDeviceOpaque*;
struct NvmlUtilization {
  unsigned int gpu;
  unsigned int memory;
};
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
constexpr NvmlReturn kNvmlSuccess = 0;

}  // namespace

struct GpuMonitor::Impl {
  void* lib = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  NvmlReturn (*utilization)(NvmlDevice, NvmlUtilization*) = nullptr;
  NvmlReturn (*memory)(NvmlDevice, NvmlMemory*) = nullptr;
  NvmlDevice device = nullptr;
  int index = 0;
  bool initialised = false;

  ~Impl() {
    if (initialised && shutdown != nullptr) shutdown();
    if (lib != nullptr) dlclose(lib);
  }
};

std::unique_ptr<GpuMonitor> GpuMonitor::open(int cuda_index, std::string* why_not) {
  auto fail = [&](const std::string& why) -> std::unique_ptr<GpuMonitor> {
    if (why_not != nullptr) *why_not = why;
    return nullptr;
  };
  std::string bus_id;
  for (const CudaDeviceInfo& d : cuda_devices())
    if (d.index == cuda_index) bus_id = d.pci_bus_id;
  if (bus_id.empty()) return fail("CUDA device " + std::to_string(cuda_index) + " is not visible");
  auto impl = std::make_unique<Impl>();
  impl->index = cuda_index;
  impl->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (impl->lib == nullptr) return fail("libnvidia-ml.so.1 (the driver's NVML) is not present");
  auto sym = [&](const char* name) { return dlsym(impl->lib, name); };
  auto init = reinterpret_cast<NvmlReturn (*)()>(sym("nvmlInit_v2"));
  auto by_bus = reinterpret_cast<NvmlReturn (*)(const char*, NvmlDevice*)>(
      sym("nvmlDeviceGetHandleByPciBusId_v2"));
  impl->shutdown = reinterpret_cast<NvmlReturn (*)()>(sym("nvmlShutdown"));
  impl->utilization = reinterpret_cast<NvmlReturn (*)(NvmlDevice, NvmlUtilization*)>(
      sym("nvmlDeviceGetUtilizationRates"));
  impl->memory =
      reinterpret_cast<NvmlReturn (*)(NvmlDevice, NvmlMemory*)>(sym("nvmlDeviceGetMemoryInfo"));
  if (init == nullptr || by_bus == nullptr || impl->shutdown == nullptr ||
      impl->utilization == nullptr || impl->memory == nullptr) {
    return fail("libnvidia-ml.so.1 lacks the NVML calls this daemon uses");
  }
  if (init() != kNvmlSuccess) return fail("nvmlInit failed");
  impl->initialised = true;
  if (by_bus(bus_id.c_str(), &impl->device) != kNvmlSuccess)
    return fail("NVML does not know the GPU at PCI " + bus_id);
  return std::unique_ptr<GpuMonitor>(new GpuMonitor(std::move(impl)));
}

GpuMonitor::GpuMonitor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuMonitor::~GpuMonitor() = default;

std::optional<GpuSample> GpuMonitor::sample() {
  NvmlUtilization u{};
  NvmlMemory m{};
  if (impl_->utilization(impl_->device, &u) != kNvmlSuccess ||
      impl_->memory(impl_->device, &m) != kNvmlSuccess) {
    return std::nullopt;
  }
  GpuSample s;
  s.index = impl_->index;
  s.utilization_pct = static_cast<double>(u.gpu);
  s.memory_used_mb = static_cast<int64_t>(m.used >> 20);
  s.memory_total_mb = static_cast<int64_t>(m.total >> 20);
  return s;
}

}  // namespace mohge
