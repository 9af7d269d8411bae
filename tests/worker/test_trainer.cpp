// The single-process trainer end to end on tiny models: it overfits a batch, resuming
// equals an uninterrupted run bit for bit, checkpoints are complete and rotated, bad data
// files are refused with the field named.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "storage/token_file.hpp"
#include "tests/worker/tiny_spec.hpp"
#include "worker/model/rng.hpp"
#include "worker/train/checkpoint.hpp"
#include "worker/train/trainer.hpp"

namespace mohge {
namespace {

namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("mohge-trainer-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  void write_tokens(const std::string& name, int64_t count, int32_t vocab, uint64_t seed) {
    Rng rng(seed);
    std::vector<uint16_t> t(static_cast<size_t>(count));
    // A repetitive stream with some noise: learnable, but not trivially.
    for (size_t i = 0; i < t.size(); ++i)
      t[i] = static_cast<uint16_t>(rng.uniform() < 0.8 ? (i * 7) % vocab : rng.below(vocab));
    ASSERT_TRUE(token_file_write(root_ / name, t).ok());
  }

  // Runs the trainer; returns the per-step losses from metrics.jsonl.
  // `adjust` may set more options (hooks) before the trainer is made.
  std::vector<double> train(const JobSpec& spec, const fs::path& run, bool resume,
                            int64_t stop_after = 0,
                            const std::function<void(TrainOptions&)>& adjust = {}) {
    auto be = make_cpu_backend(2);
    TrainOptions opt;
    opt.storage_root = root_;
    opt.run_dir = run;
    opt.resume = resume;
    opt.progress = false;
    opt.stop_after = stop_after;
    if (adjust) adjust(opt);
    auto trainer = Trainer::create(spec, opt, *be);
    EXPECT_TRUE(trainer.ok()) << (trainer.ok() ? "" : trainer.error().to_string());
    if (!trainer.ok()) return {};
    const Status s = trainer.value()->run();
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().to_string());
    return losses(run);
  }

  static std::vector<double> losses(const fs::path& run) {
    std::vector<double> out;
    std::ifstream in(run / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) {
        EXPECT_EQ(j["step"].get<int64_t>(), static_cast<int64_t>(out.size()) + 1);
        out.push_back(j["loss"].get<double>());
      }
    }
    return out;
  }

  fs::path root_;
};

TEST_F(TrainerTest, OverfitsOneBatch) {
  nlohmann::json j = testing::tiny_spec_json("mohge");
  j["train"]["steps"] = 80;
  j["train"]["lr"] = 2e-2;
  j["train"]["lr_min"] = 2e-2;
  j["train"]["warmup_steps"] = 0;
  j["train"]["weight_decay"] = 0.0;
  j["train"]["eval_every"] = 0;
  j["checkpoint"]["every"] = 0;
  const JobSpec spec = parse_job_spec(j).value();
  // Exactly one batch: B·T + 1 tokens.
  write_tokens("train.bin", 2 * 6 + 1, 32, 1);
  write_tokens("val.bin", 2 * 6 + 1, 32, 1);
  const auto l = train(spec, root_ / "run", false);
  ASSERT_EQ(l.size(), 80u);
  EXPECT_GT(l.front(), 2.5);  // ≈ ln 32 = 3.47 at initialisation
  EXPECT_LT(l.back(), 0.1) << "first " << l.front();
}

TEST_F(TrainerTest, ResumeEqualsAnUninterruptedRunBitForBit) {
  for (const std::string kind : {"mohge", "moe", "dense"}) {
    SCOPED_TRACE(kind);
    const JobSpec spec = testing::tiny_spec(kind);  // 8 steps, checkpoint every 4
    write_tokens("train.bin", 400, 32, 2);
    write_tokens("val.bin", 100, 32, 3);
    const auto full = train(spec, root_ / ("full-" + kind), false);
    ASSERT_EQ(full.size(), 8u);
    const auto first = train(spec, root_ / ("split-" + kind), false, /*stop_after=*/3);
    ASSERT_EQ(first.size(), 3u);
    const auto resumed = train(spec, root_ / ("split-" + kind), true);
    ASSERT_EQ(resumed.size(), 8u);
    for (size_t i = 0; i < full.size(); ++i) EXPECT_EQ(full[i], resumed[i]) << "step " << i + 1;
  }
}

// A resume reports again what the run already holds (the records kept and the checkpoint it
// resumes from) before its new steps: the service may have refused them from the attempt that
// wrote them (it was superseded), and it keys both, so nothing is doubled there.
TEST_F(TrainerTest, AResumeReportsTheKeptRecordsAndItsCheckpointAgain) {
  const JobSpec spec = testing::tiny_spec("mohge");  // 8 steps, checkpoint every 4
  write_tokens("train.bin", 400, 32, 2);
  write_tokens("val.bin", 100, 32, 3);
  const fs::path run = root_ / "run";
  ASSERT_EQ(train(spec, run, false, /*stop_after=*/5).size(), 5u);  // checkpoints at 4 and 5
  std::vector<int64_t> record_steps, checkpoint_steps;
  const auto l = train(spec, run, true, 0, [&](TrainOptions& opt) {
    opt.on_record = [&](const nlohmann::json& r) {
      if (r.contains("loss")) record_steps.push_back(r["step"].get<int64_t>());
    };
    opt.on_checkpoint = [&](int64_t step, const fs::path& folder) {
      EXPECT_TRUE(fs::exists(folder / "trainer_state.json")) << folder;
      checkpoint_steps.push_back(step);
    };
  });
  EXPECT_EQ(l.size(), 8u);
  EXPECT_EQ(record_steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(checkpoint_steps, (std::vector<int64_t>{5, 8}));  // resumed from 5, then the last
}

// Aux-loss-free balance ("balance": "bias"): with L_E off in both runs, the selection bias
// evens out the experts within each group; the bias is saved with the model (non-zero, not
// trained) and a resume continues bit for bit. The default stays the paper's aux loss.
TEST_F(TrainerTest, TheBalanceBiasEvensOutTheExpertsOfAGroupAndResumesExactly) {
  nlohmann::json j = testing::tiny_spec_json("mohge");
  j["model"]["seq_len"] = 32;
  j["train"]["batch_size"] = 16;
  j["train"]["steps"] = 60;
  j["train"]["eval_every"] = 0;
  j["checkpoint"]["every"] = 30;
  j["model"]["ffn"]["alpha_expert"] = 0.0;
  EXPECT_EQ(parse_job_spec(j).value().model.ffn.balance, "aux");
  write_tokens("train.bin", 4000, 32, 5);
  write_tokens("val.bin", 400, 32, 6);
  // Mean over the last 20 steps and all layers of max/mean tokens among a group's experts
  // (groups that routed at least 8 tokens).
  auto intra_group_imbalance = [&](const fs::path& run) {
    std::ifstream in(run / "metrics.jsonl");
    std::string line;
    double sum = 0;
    int count = 0;
    while (std::getline(in, line)) {
      const auto r = nlohmann::json::parse(line);
      if (!r.contains("layers") || r["step"].get<int>() <= 40) continue;
      for (const auto& l : r["layers"]) {
        const auto c = l["expert_assignments"].get<std::vector<double>>();
        for (size_t g = 0; g + 1 < c.size(); g += 2) {
          const double mean = (c[g] + c[g + 1]) / 2;
          if (mean * 2 < 8) continue;
          sum += std::max(c[g], c[g + 1]) / mean;
          ++count;
        }
      }
    }
    return count > 0 ? sum / count : 0.0;
  };
  const auto plain = train(parse_job_spec(j).value(), root_ / "plain", false);
  ASSERT_EQ(plain.size(), 60u);
  j["model"]["ffn"]["balance"] = "bias";
  j["model"]["ffn"]["bias_rate"] = 0.01;
  const JobSpec biased = parse_job_spec(j).value();
  const auto with_bias = train(biased, root_ / "bias", false);
  ASSERT_EQ(with_bias.size(), 60u);
  const double before = intra_group_imbalance(root_ / "plain");
  const double after = intra_group_imbalance(root_ / "bias");
  EXPECT_LT(after, before - 0.03) << "without the bias " << before << ", with it " << after;
  std::printf("intra-group imbalance without the bias %.4f, with it %.4f\n", before, after);

  Result<TensorSource> saved =
      TensorSource::open(root_ / "bias" / "checkpoints" / "step-00000060", "model");
  ASSERT_TRUE(saved.ok()) << saved.error().to_string();
  std::vector<float> bias(8);
  ASSERT_TRUE(saved.value().read_f32("model.layers.0.mlp.expert_bias", {8}, bias.data()).ok());
  double magnitude = 0;
  for (float b : bias) magnitude += std::abs(b);
  EXPECT_GT(magnitude, 0.0);

  const auto first = train(biased, root_ / "split", false, /*stop_after=*/30);
  ASSERT_EQ(first.size(), 30u);
  const auto resumed = train(biased, root_ / "split", true);
  ASSERT_EQ(resumed.size(), 60u);
  for (size_t i = 0; i < with_bias.size(); ++i)
    EXPECT_EQ(resumed[i], with_bias[i]) << "step " << i + 1;
}

// The window the attempt fence leaves: a stale writer that passed its check and was stopped
// before writing. Resuming replaces metrics.jsonl, so its late record lands in the old file.
TEST_F(TrainerTest, AStaleWriterOfTheMetricsCannotReachTheResumedRunsFile) {
  const fs::path path = root_ / "metrics.jsonl";
  {
    std::ofstream first(path);
    for (int s = 1; s <= 5; ++s) first << nlohmann::json{{"step", s}, {"loss", 1.0}}.dump() << "\n";
  }
  std::ofstream stale(path, std::ios::app);  // opened by the old attempt, before the resume
  ASSERT_TRUE(metrics_truncate(path, 3).ok());
  std::ofstream(path, std::ios::app) << nlohmann::json{{"step", 4}, {"loss", 2.0}}.dump() << "\n";
  stale << nlohmann::json{{"step", 6}, {"loss", 9.0}}.dump() << "\n";
  stale.close();
  std::ifstream in(path);
  std::string line;
  std::vector<int> steps;
  while (std::getline(in, line)) steps.push_back(nlohmann::json::parse(line)["step"].get<int>());
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4}));
}

TEST_F(TrainerTest, CheckpointsAreCompleteRotatedAndReloadable) {
  nlohmann::json j = testing::tiny_spec_json("mohge");
  j["checkpoint"]["every"] = 2;
  j["checkpoint"]["keep"] = 2;
  const JobSpec spec = parse_job_spec(j).value();
  write_tokens("train.bin", 400, 32, 4);
  write_tokens("val.bin", 100, 32, 5);
  train(spec, root_ / "run", false);
  const auto ckpts = checkpoint_list(root_ / "run" / "checkpoints");
  ASSERT_EQ(ckpts.size(), 2u);
  EXPECT_EQ(ckpts[0].filename(), "step-00000006");
  EXPECT_EQ(ckpts[1].filename(), "step-00000008");
  for (const char* f :
       {"model.safetensors", "optimizer.safetensors", "job.json", "trainer_state.json"})
    EXPECT_TRUE(fs::exists(ckpts[1] / f)) << f;
  for (const auto& e : fs::directory_iterator(root_ / "run" / "checkpoints"))
    EXPECT_EQ(e.path().filename().string().rfind(".tmp", 0), std::string::npos) << e.path();

  // The stored spec rebuilds the model; the final validation loss is reproduced.
  Result<JobSpec> stored = checkpoint_read_spec(ckpts[1]);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(job_spec_to_json(stored.value()), job_spec_to_json(spec));
  auto be = make_cpu_backend(2);
  Transformer model(stored.value().model, *be);
  ASSERT_TRUE(checkpoint_load(ckpts[1], model, nullptr, nullptr).ok());
  auto val = TokenWindows::load(root_ / "val.bin", 6, 32, "data.val");
  ASSERT_TRUE(val.ok());
  const EvalResult e = evaluate(model, val.value(), spec.train.eval_batches, spec.train.batch_size);
  double logged = -1;
  std::ifstream in(root_ / "run" / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto r = nlohmann::json::parse(line);
    if (r.contains("val_loss") && r["step"] == 8) logged = r["val_loss"].get<double>();
  }
  EXPECT_EQ(e.loss, logged);
  EXPECT_EQ(e.tokens, 2 * 2 * 6);

  // One .safetensors file (what `mohge download` writes) serves as well: spec and weights.
  const fs::path file = root_ / "downloaded.safetensors";
  fs::copy_file(ckpts[1] / "model.safetensors", file);
  Result<JobSpec> from_file = checkpoint_read_spec(file);
  ASSERT_TRUE(from_file.ok()) << from_file.error().to_string();
  EXPECT_EQ(job_spec_to_json(from_file.value()), job_spec_to_json(spec));
  Transformer again(from_file.value().model, *be);
  ASSERT_TRUE(checkpoint_load(file, again, nullptr, nullptr).ok());
  EXPECT_EQ(evaluate(again, val.value(), spec.train.eval_batches, spec.train.batch_size).loss,
            logged);
  // It holds no optimizer state, and says so.
  AdamW opt(spec.train, again.params(), *be);
  const Status no_opt = checkpoint_load(file, again, &opt, nullptr);
  ASSERT_FALSE(no_opt.ok());
  EXPECT_NE(no_opt.error().message.find("holds no optimizer"), std::string::npos)
      << no_opt.error().message;
}

TEST_F(TrainerTest, MetricsHoldEveryDocumentedField) {
  const JobSpec spec = testing::tiny_spec("mohge");  // 8 steps, eval every 4
  write_tokens("train.bin", 400, 32, 11);
  write_tokens("val.bin", 100, 32, 12);
  train(spec, root_ / "run", false);
  std::ifstream in(root_ / "run" / "metrics.jsonl");
  std::string line;
  int steps = 0, evals = 0;
  while (std::getline(in, line)) {
    const auto r = nlohmann::json::parse(line);
    if (r.contains("val_loss")) {
      ++evals;
      EXPECT_NEAR(r["val_perplexity"].get<double>(), std::exp(r["val_loss"].get<double>()), 1e-9);
      continue;
    }
    ++steps;
    for (const char* k : {"step", "loss", "aux_group", "aux_expert", "lr", "grad_norm",
                          "tokens_per_s", "step_ms", "activated_expert_params"})
      EXPECT_TRUE(r.contains(k)) << k;
    EXPECT_GT(r["aux_group"].get<double>(), 0.0);
    EXPECT_GT(r["aux_expert"].get<double>(), 0.0);
    ASSERT_EQ(r["layers"].size(), 2u);
    double share = 0.0;
    for (double v : r["layers"][0]["group_share"]) share += v;
    EXPECT_NEAR(share, 1.0, 1e-9);
    EXPECT_EQ(r["layers"][0]["group_share"].size(), 4u);
    EXPECT_GT(r["layers"][1]["activated_expert_params"].get<double>(), 0.0);
  }
  EXPECT_EQ(steps, 8);
  EXPECT_EQ(evals, 2);
}

TEST_F(TrainerTest, RefusesToOverwriteARunWithoutResume) {
  const JobSpec spec = testing::tiny_spec("dense");
  write_tokens("train.bin", 400, 32, 6);
  write_tokens("val.bin", 100, 32, 7);
  train(spec, root_ / "run", false);
  auto be = make_cpu_backend(1);
  TrainOptions opt;
  opt.storage_root = root_;
  opt.run_dir = root_ / "run";
  auto again = Trainer::create(spec, opt, *be);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message.find("--resume"), std::string::npos) << again.error().message;
}

TEST_F(TrainerTest, RefusesBadTokenFilesNamingTheField) {
  const JobSpec spec = testing::tiny_spec("mohge");
  write_tokens("val.bin", 100, 32, 8);
  auto be = make_cpu_backend(1);
  TrainOptions opt;
  opt.storage_root = root_;

  // Wrong magic.
  {
    std::vector<int32_t> header(256, 0);
    header[0] = 12345;
    header[1] = 1;
    header[2] = 4;
    std::ofstream out(root_ / "train.bin", std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), 1024);
    const uint16_t tokens[4] = {1, 2, 3, 4};
    out.write(reinterpret_cast<const char*>(tokens), sizeof(tokens));
  }
  auto r = Trainer::create(spec, opt, *be);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field, "data.train");
  EXPECT_NE(r.error().message.find("magic"), std::string::npos) << r.error().message;

  // Truncated: the header promises more tokens than the file holds.
  write_tokens("train.bin", 400, 32, 9);
  fs::resize_file(root_ / "train.bin", fs::file_size(root_ / "train.bin") - 10);
  r = Trainer::create(spec, opt, *be);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field, "data.train");

  // Token ids beyond the vocabulary.
  write_tokens("train.bin", 400, 40, 10);
  r = Trainer::create(spec, opt, *be);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field, "data.train");
  EXPECT_NE(r.error().message.find("vocab_size"), std::string::npos) << r.error().message;

  // Missing file.
  fs::remove(root_ / "train.bin");
  r = Trainer::create(spec, opt, *be);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field, "data.train");
}

}  // namespace
}  // namespace mohge
