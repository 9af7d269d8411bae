#include "kernels/backend.hpp"

#include <stdexcept>

namespace mohge {

#ifdef MOHGE_HAVE_CUDA
int cuda_device_count();
#endif

bool cuda_backend_available(std::string* why_not) {
#ifdef MOHGE_HAVE_CUDA
  if (cuda_device_count() > 0) return true;
  if (why_not != nullptr) *why_not = "no CUDA device is visible";
  return false;
#else
  if (why_not != nullptr) *why_not = "built without CUDA (MOHGE_WITH_CUDA=OFF)";
  return false;
#endif
}

#ifndef MOHGE_HAVE_CUDA
std::vector<CudaDeviceInfo> cuda_devices() {
  return {};
}

std::unique_ptr<Backend> make_cuda_backend(int, Precision) {
  throw std::runtime_error("this build has no CUDA backend (MOHGE_WITH_CUDA=OFF)");
}
#endif

}  // namespace mohge
