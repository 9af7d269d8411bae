// What a GPU is doing right now, for the worker daemon's heartbeats: utilisation and memory
// in use, read through NVML. The driver ships NVML (libnvidia-ml.so.1); build hosts and CI
// have no driver, so the library is opened at run time and its absence is a reason, not an
// error: the heartbeat then carries no GPU figures.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace mohge {

struct GpuSample {
  int index = 0;                 // the CUDA index the daemon was given (--devices cuda:N)
  double utilization_pct = 0.0;  // share of the last sample period a kernel ran, 0–100
  int64_t memory_used_mb = 0;    // memory in use on the device (all processes)
  int64_t memory_total_mb = 0;
};

class GpuMonitor {
 public:
  /// NVML's view of CUDA device `cuda_index` (matched by PCI bus id, so the two numberings
  /// may differ); null with `why_not` set when there is no NVML or no such device.
  static std::unique_ptr<GpuMonitor> open(int cuda_index, std::string* why_not);
  ~GpuMonitor();
  GpuMonitor(const GpuMonitor&) = delete;
  GpuMonitor& operator=(const GpuMonitor&) = delete;

  /// The current figures; nullopt when NVML could not read them this time.
  std::optional<GpuSample> sample();

 private:
  struct Impl;
  explicit GpuMonitor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mohge
