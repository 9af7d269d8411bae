// CUDA backend plumbing: device discovery. The CUDA kernels themselves (router, permute,
// grouped experts, attention, loss, optimizer) come with the GPU-path issue; until then
// cuda_backend_available() reports that the kernels are not built, even where a GPU exists.
#include <cuda_runtime.h>

#include <string>

namespace mohge {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

}  // namespace mohge
