// The worker daemon's device list (`--devices`): one worker per GPU, every bad list refused
// naming the flag; and the GPU monitor says why it has no figures on a host without NVML.
#include <gtest/gtest.h>

#include "kernels/backend.hpp"
#include "worker/daemon/daemon.hpp"
#include "worker/daemon/gpu_monitor.hpp"

namespace mohge {
namespace {

using Devices = std::vector<std::string>;

TEST(DaemonDevices, OneWorkerPerListedGpu) {
  EXPECT_EQ(split_devices("cpu").value(), Devices{"cpu"});
  EXPECT_EQ(split_devices("cuda").value(), Devices{"cuda:0"});
  EXPECT_EQ(split_devices("cuda:3").value(), Devices{"cuda:3"});
  EXPECT_EQ(split_devices("cuda:0,2,1").value(), (Devices{"cuda:0", "cuda:2", "cuda:1"}));
  EXPECT_EQ(split_devices("cuda:007").value(), Devices{"cuda:7"});
}

TEST(DaemonDevices, BadListsAreRefusedNamingTheFlag) {
  for (const std::string bad : {"gpu", "cuda:", "cuda:a", "cuda:1,", "cuda:,1", "cuda:1,1",
                                "cuda:-1", "cuda:99999", "cuda:1;rm", "CPU", ""}) {
    const Result<Devices> r = split_devices(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().field, "--devices") << bad;
    EXPECT_NE(r.error().message.find(bad.empty() ? "got \"\"" : bad), std::string::npos)
        << r.error().message;
  }
}

TEST(DaemonDevices, AllMeansEveryVisibleGpu) {
  const size_t visible = cuda_devices().size();
  const Result<Devices> all = split_devices("cuda:all");
  if (visible == 0) {
    ASSERT_FALSE(all.ok());
    EXPECT_NE(all.error().message.find("no CUDA GPU is visible"), std::string::npos);
  } else {
    ASSERT_TRUE(all.ok());
    EXPECT_EQ(all.value().size(), visible);
  }
}

TEST(GpuMonitor, SaysWhyItHasNoFigures) {
  if (!cuda_devices().empty()) GTEST_SKIP() << "a GPU is visible: nothing to refuse here";
  std::string why;
  EXPECT_EQ(GpuMonitor::open(0, &why), nullptr);
  EXPECT_NE(why.find("CUDA device 0 is not visible"), std::string::npos) << why;
}

}  // namespace
}  // namespace mohge
