#include "kernels/backend.hpp"

namespace mohge {

#ifdef MOHGE_HAVE_CUDA
int cuda_device_count();
#endif

bool cuda_backend_available(std::string* why_not) {
#ifdef MOHGE_HAVE_CUDA
  const int devices = cuda_device_count();
  if (why_not != nullptr) {
    *why_not = devices == 0 ? "no CUDA device is visible"
                            : "the CUDA kernels are not part of this build yet (GPU-path issue)";
  }
  return false;
#else
  if (why_not != nullptr) *why_not = "built without CUDA (MOHGE_WITH_CUDA=OFF)";
  return false;
#endif
}

}  // namespace mohge
