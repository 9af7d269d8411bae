// mohge eval --checkpoint DIR|FILE --data FILE [--batches N] [--batch-size B] [--threads N]
#include <cmath>
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "worker/cli/commands.hpp"
#include "worker/cli/common.hpp"
#include "worker/train/checkpoint.hpp"
#include "worker/train/trainer.hpp"

namespace mohge::cli {

namespace {

struct EvalArgs {
  std::string checkpoint;
  std::string data;
  int64_t batches = 0;
  int64_t batch_size = 0;
  int threads = 0;
};

int run_eval(const EvalArgs& a) {
  Result<JobSpec> spec = checkpoint_read_spec(a.checkpoint);
  if (!spec.ok()) return report(spec.error());
  const JobSpec& s = spec.value();
  Result<TokenWindows> data =
      TokenWindows::load(a.data, s.model.seq_len, s.model.vocab_size, "--data");
  if (!data.ok()) return report(data.error());
  Result<std::unique_ptr<Backend>> backend = make_backend(s, a.threads);
  if (!backend.ok()) return report(backend.error());
  Transformer model(s.model, *backend.value());
  if (Status st = checkpoint_load(a.checkpoint, model, nullptr, nullptr); !st.ok())
    return report(st.error());
  const int64_t batch_size = a.batch_size > 0 ? a.batch_size : s.train.batch_size;
  const int64_t batches = a.batches > 0 ? a.batches : s.train.eval_batches;
  const EvalResult r = evaluate(model, data.value(), batches, batch_size);
  const nlohmann::json out = {
      {"loss", r.loss}, {"tokens", r.tokens}, {"perplexity", std::exp(r.loss)}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

void add_eval(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Validation loss of a checkpoint on a token file");
  cmd->add_option("--checkpoint", args->checkpoint,
                  "Checkpoint folder, or the .safetensors file `mohge download` wrote")
      ->required();
  cmd->add_option("--data", args->data, "Token file (llm.c layout)")->required();
  cmd->add_option("--batches", args->batches, "Batches (default: the spec's train.eval_batches)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch-size", args->batch_size, "Windows per batch (default: train.batch_size)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", args->threads, "Compute threads (default: all cores)");
  cmd->callback([args, &exit_code] { exit_code = run_eval(*args); });
}

}  // namespace mohge::cli
