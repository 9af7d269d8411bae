// CUDA backend plumbing: device discovery (count, and each device's name and memory for the
// worker daemon's hello).
#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "kernels/backend.hpp"

namespace mohge {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

std::vector<CudaDeviceInfo> cuda_devices() {
  std::vector<CudaDeviceInfo> out;
  const int count = cuda_device_count();
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    char bus[32];
    std::snprintf(bus, sizeof(bus), "%04x:%02x:%02x.0", prop.pciDomainID, prop.pciBusID,
                  prop.pciDeviceID);
    out.push_back({i, prop.name, static_cast<int64_t>(prop.totalGlobalMem), bus});
  }
  return out;
}

}  // namespace mohge
