// mohge generate --checkpoint DIR|FILE --prompt TEXT [--tokens N] [--temperature T] [--seed S]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "worker/cli/commands.hpp"
#include "worker/cli/common.hpp"
#include "worker/data/tokenizer.hpp"
#include "worker/model/rng.hpp"
#include "worker/train/checkpoint.hpp"

namespace mohge::cli {

namespace {

struct GenerateArgs {
  std::string checkpoint;
  std::string prompt;
  std::string tokenizer;
  int tokens = 100;
  double temperature = 0.8;
  uint64_t seed = 1;
  int threads = 0;
};

// Samples from softmax(logits / temperature); temperature 0 takes the argmax.
int32_t sample(const float* logits, int64_t vocab, double temperature, Rng& rng) {
  if (temperature <= 0.0)
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  const float mx = *std::max_element(logits, logits + vocab);
  std::vector<double> p(static_cast<size_t>(vocab));
  double z = 0.0;
  for (int64_t v = 0; v < vocab; ++v) z += (p[v] = std::exp((logits[v] - mx) / temperature));
  double u = rng.uniform() * z;
  for (int64_t v = 0; v < vocab; ++v) {
    if ((u -= p[v]) <= 0.0) return static_cast<int32_t>(v);
  }
  return static_cast<int32_t>(vocab - 1);
}

int run_generate(const GenerateArgs& a) {
  namespace fs = std::filesystem;
  Result<JobSpec> spec = checkpoint_read_spec(a.checkpoint);
  if (!spec.ok()) return report(spec.error());
  std::error_code ec;
  if (a.tokenizer.empty() && fs::is_regular_file(a.checkpoint, ec)) {
    return report(
        invalid_argument("--tokenizer",
                         "is required with a single .safetensors file, which carries no tokenizer "
                         "(give the tokenizer.model of the job's dataset or checkpoint folder)"));
  }
  const fs::path tok_path =
      a.tokenizer.empty() ? fs::path(a.checkpoint) / "tokenizer.model" : fs::path(a.tokenizer);
  Result<Tokenizer> tok = Tokenizer::load(tok_path);
  if (!tok.ok()) {
    Error e = tok.error();
    e.field = "--tokenizer";
    return report(e);
  }
  const ModelSpec& m = spec.value().model;
  if (tok.value().vocab_size() > m.vocab_size) {
    return report(invalid_argument(
        "--tokenizer", "has " + std::to_string(tok.value().vocab_size()) +
                           " pieces, more than model.vocab_size " + std::to_string(m.vocab_size)));
  }
  Result<std::unique_ptr<Backend>> backend = make_backend(spec.value(), a.threads);
  if (!backend.ok()) return report(backend.error());
  Transformer model(m, *backend.value());
  if (Status st = checkpoint_load(a.checkpoint, model, nullptr, nullptr); !st.ok())
    return report(st.error());

  // Documents were separated by end-of-sequence in training: start like a new document.
  std::vector<int32_t> ids = {tok.value().eos_id()};
  const std::vector<int32_t> prompt = tok.value().encode(a.prompt);
  ids.insert(ids.end(), prompt.begin(), prompt.end());
  Rng rng(a.seed);
  std::vector<float> last(static_cast<size_t>(m.vocab_size));
  for (int i = 0; i < a.tokens; ++i) {
    const int64_t T = std::min<int64_t>(static_cast<int64_t>(ids.size()), m.seq_len);
    const int32_t* window = ids.data() + (ids.size() - static_cast<size_t>(T));
    model.forward(window, nullptr, 1, T);
    backend.value()->copy_to_host(last.data(), model.logits() + (T - 1) * m.vocab_size,
                                  sizeof(float) * last.size());
    const int32_t next = sample(last.data(), m.vocab_size, a.temperature, rng);
    if (next == tok.value().eos_id()) break;
    ids.push_back(next);
  }
  // Decode prompt and continuation together so pieces join as SentencePiece joins them.
  const std::vector<int32_t> text_ids(ids.begin() + 1, ids.end());
  std::printf("%s\n", tok.value().decode(text_ids).c_str());
  return 0;
}

}  // namespace

void add_generate(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Continue a prompt with a checkpoint");
  cmd->add_option("--checkpoint", args->checkpoint,
                  "Checkpoint folder, or the .safetensors file `mohge download` wrote")
      ->required();
  cmd->add_option("--prompt", args->prompt, "Text to continue")->required();
  cmd->add_option("--tokens", args->tokens, "Tokens to generate")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd->add_option("--temperature", args->temperature, "Sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--tokenizer", args->tokenizer,
                  "SentencePiece model (default: tokenizer.model in the checkpoint)");
  cmd->add_option("--threads", args->threads, "Compute threads (default: all cores)");
  cmd->callback([args, &exit_code] { exit_code = run_generate(*args); });
}

}  // namespace mohge::cli
