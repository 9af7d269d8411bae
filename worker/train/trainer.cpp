#include "worker/train/trainer.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "worker/train/checkpoint.hpp"
#include "worker/train/optimizer.hpp"

namespace mohge {

namespace fs = std::filesystem;
using nlohmann::json;

EvalResult evaluate(Transformer& model, const TokenWindows& data, int64_t batches,
                    int64_t batch_size) {
  const int64_t T = data.seq();
  const int64_t windows = std::min(batches * batch_size, data.num_windows());
  std::vector<int32_t> inputs, targets;
  double sum = 0.0;
  EvalResult r;
  for (int64_t w0 = 0; w0 < windows; w0 += batch_size) {
    const int64_t B = std::min(batch_size, windows - w0);
    inputs.resize(static_cast<size_t>(B * T));
    targets.resize(static_cast<size_t>(B * T));
    for (int64_t b = 0; b < B; ++b)
      data.window(w0 + b, inputs.data() + b * T, targets.data() + b * T);
    const ForwardResult f = model.forward(inputs.data(), targets.data(), B, T);
    sum += f.ce_loss * static_cast<double>(f.num_targets);
    r.tokens += f.num_targets;
  }
  r.loss = r.tokens > 0 ? sum / static_cast<double>(r.tokens) : 0.0;
  return r;
}

namespace {

fs::path resolve(const fs::path& root, const std::string& p) {
  const fs::path path(p);
  return path.is_absolute() ? path : root / path;
}

// Metrics records of steps <= `last_step` survive a resume; later ones are replaced.
void truncate_metrics(const fs::path& path, int64_t last_step) {
  std::ifstream in(path);
  if (!in) return;
  std::vector<std::string> keep;
  std::string line;
  while (std::getline(in, line)) {
    try {
      if (json::parse(line).value("step", int64_t{0}) <= last_step) keep.push_back(line);
    } catch (const json::exception&) {
      // A line torn by a crash: dropped.
    }
  }
  in.close();
  std::ofstream out(path, std::ios::trunc);
  for (const auto& l : keep) out << l << "\n";
}

json layer_metrics(const Transformer& model) {
  json layers = json::array();
  const auto routing = model.routing();
  for (size_t l = 0; l < routing.size(); ++l) {
    const LayerRouting* r = routing[l];
    if (r == nullptr) continue;
    double total = 0.0;
    for (double v : r->group_assignments) total += v;
    std::vector<double> share;
    for (double v : r->group_assignments) share.push_back(total > 0 ? v / total : 0.0);
    layers.push_back({{"layer", l},
                      {"group_share", share},
                      {"expert_assignments", r->expert_assignments},
                      {"activated_expert_params", r->activated_expert_params},
                      {"aux_group", r->aux_group},
                      {"aux_expert", r->aux_expert}});
  }
  return layers;
}

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

// The live progress line: rewritten in place on a terminal, a line every ~5% otherwise.
class Progress {
 public:
  Progress(bool enabled, int64_t total)
      : enabled_(enabled), total_(total), tty_(::isatty(2) != 0) {}
  void update(const StepReport& r, std::optional<double> last_val, double eta_s) {
    if (!enabled_) return;
    const int64_t every = std::max<int64_t>(1, total_ / 20);
    if (!tty_ && r.step % every != 0 && r.step != total_ && r.step != 1 && !r.val_loss) return;
    char line[256];
    const int n =
        std::snprintf(line, sizeof(line),
                      "step %lld/%lld  loss %.4f  aux %.2e  lr %.2e  %.0f tok/s  %.0f ms/step",
                      static_cast<long long>(r.step), static_cast<long long>(total_), r.loss,
                      r.aux_group + r.aux_expert, r.lr, r.tokens_per_s, r.step_ms);
    std::string s(line, static_cast<size_t>(std::max(0, n)));
    if (last_val) {
      std::snprintf(line, sizeof(line), "  val %.4f", *last_val);
      s += line;
    }
    s += "  ETA " + format_duration(eta_s);
    if (tty_) {
      std::fprintf(stderr, "\r%-120s", s.c_str());
      if (r.step == total_) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "%s\n", s.c_str());
    }
    std::fflush(stderr);
  }
  void newline() {
    if (enabled_ && tty_) std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  int64_t total_;
  bool tty_;
};

}  // namespace

Result<std::unique_ptr<Trainer>> Trainer::create(const JobSpec& spec, const TrainOptions& options,
                                                 Backend& backend) {
  TrainOptions opt = options;
  if (opt.run_dir.empty()) opt.run_dir = opt.storage_root / "runs" / spec.name;
  Result<TokenWindows> train =
      TokenWindows::load(resolve(opt.storage_root, spec.data.train), spec.model.seq_len,
                         spec.model.vocab_size, "data.train");
  if (!train.ok()) return train.error();
  Result<TokenWindows> val =
      TokenWindows::load(resolve(opt.storage_root, spec.data.val), spec.model.seq_len,
                         spec.model.vocab_size, "data.val");
  if (!val.ok()) return val.error();
  if (train.value().num_windows() < spec.train.batch_size) {
    return invalid_argument("train.batch_size",
                            "is larger than the " + std::to_string(train.value().num_windows()) +
                                " windows of model.seq_len tokens in data.train");
  }
  const fs::path ckpt = opt.run_dir / "checkpoints";
  if (!opt.resume && !checkpoint_list(ckpt).empty()) {
    return Error{ErrorCode::kAlreadyExists,
                 opt.run_dir.string() +
                     " already holds checkpoints; pass --resume to continue "
                     "that run or --out to start a new one",
                 ""};
  }
  if (opt.resume && checkpoint_list(ckpt).empty()) {
    return Error{ErrorCode::kNotFound, "--resume: no complete checkpoint in " + ckpt.string(), ""};
  }
  std::error_code ec;
  fs::create_directories(opt.run_dir, ec);
  if (ec) {
    return Error{ErrorCode::kInvalidArgument,
                 "cannot create run folder " + opt.run_dir.string() + ": " + ec.message(), "--out"};
  }
  return std::unique_ptr<Trainer>(
      new Trainer(spec, opt, backend, std::move(train).value(), std::move(val).value()));
}

Trainer::Trainer(const JobSpec& spec, const TrainOptions& options, Backend& backend,
                 TokenWindows train, TokenWindows val)
    : spec_(spec),
      options_(options),
      be_(backend),
      train_(std::move(train)),
      val_(std::move(val)),
      model_(std::make_unique<Transformer>(spec.model, backend)) {}

Trainer::~Trainer() = default;

Status Trainer::run(const std::function<void(const StepReport&)>& on_step) {
  using Clock = std::chrono::steady_clock;
  const TrainSpec& ts = spec_.train;
  const int64_t B = ts.batch_size, T = spec_.model.seq_len;
  const fs::path ckpt_dir = options_.run_dir / "checkpoints";
  const fs::path metrics_path = options_.run_dir / "metrics.jsonl";

  AdamW optimizer(ts, model_->params(), be_);
  TrainBatches batches(train_, B, ts.seed);
  TrainerState state;
  state.seed = ts.seed;
  if (options_.resume) {
    const fs::path latest = checkpoint_list(ckpt_dir).back();
    if (Status s = checkpoint_load(latest, *model_, &optimizer, &state); !s.ok()) return s;
    if (state.seed != ts.seed) {
      return invalid_argument(
          "train.seed", "differs from the run being resumed (" + std::to_string(state.seed) + ")");
    }
    batches.set_position(state.data);
    truncate_metrics(metrics_path, state.step);
    spdlog::info("resuming {} from {} (step {})", spec_.name, latest.string(), state.step);
  } else {
    model_->initialize(ts.seed);
    std::ofstream(metrics_path, std::ios::trunc);
  }
  {
    std::ofstream job(options_.run_dir / "job.json");
    job << job_spec_to_json(spec_).dump(2) << "\n";
  }
  spdlog::info("{}: {} parameters ({} in experts), {} train / {} val tokens, {} threads",
               spec_.name, model_->total_params(), model_->expert_params(), train_.num_tokens(),
               val_.num_tokens(), be_.num_threads());

  // The tokenizer that prepare-data wrote next to the training data travels with every
  // checkpoint, so `mohge generate` needs nothing else.
  std::vector<fs::path> extra_files;
  const fs::path tokenizer =
      resolve(options_.storage_root, spec_.data.train).parent_path() / "tokenizer.model";
  if (fs::exists(tokenizer)) extra_files.push_back(tokenizer);

  std::ofstream metrics(metrics_path, std::ios::app);
  Progress progress(options_.progress, ts.steps);
  std::optional<double> last_val;
  double recent_step_s = 0.0;
  const int64_t group_loss_start = static_cast<int64_t>(
      std::ceil(spec_.model.ffn.group_loss_start * static_cast<double>(ts.steps)));
  std::vector<int32_t> inputs, targets;

  for (int64_t step = state.step; step < ts.steps; ++step) {
    const auto t0 = Clock::now();
    const double lr = lr_at(ts, step);
    batches.next(inputs, targets);
    const ForwardResult f = model_->forward(inputs.data(), targets.data(), B, T,
                                            {.group_loss_on = step >= group_loss_start});
    model_->params().zero_grad();
    model_->backward();
    const double norm = optimizer.grad_norm();
    if (!std::isfinite(norm) || !std::isfinite(f.total_loss())) {
      progress.newline();
      return Error{ErrorCode::kFailedPrecondition,
                   "training diverged at step " + std::to_string(step + 1) + " (loss " +
                       std::to_string(f.total_loss()) + ", grad norm " + std::to_string(norm) +
                       "); lower train.lr or raise train.warmup_steps",
                   "train.lr"};
    }
    optimizer.step(lr, norm);
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    recent_step_s = step == state.step ? step_s : 0.9 * recent_step_s + 0.1 * step_s;

    StepReport r;
    r.step = step + 1;
    r.loss = f.ce_loss;
    r.aux_group = f.aux_group;
    r.aux_expert = f.aux_expert;
    r.lr = lr;
    r.grad_norm = norm;
    r.step_ms = step_s * 1e3;
    r.tokens_per_s = static_cast<double>(B * T) / step_s;
    r.activated_expert_params = model_->activated_expert_params();
    json rec = {{"step", r.step},
                {"loss", r.loss},
                {"aux_group", r.aux_group},
                {"aux_expert", r.aux_expert},
                {"lr", r.lr},
                {"grad_norm", r.grad_norm},
                {"tokens_per_s", r.tokens_per_s},
                {"step_ms", r.step_ms},
                {"activated_expert_params", r.activated_expert_params}};
    const json layers = layer_metrics(*model_);
    if (!layers.empty()) rec["layers"] = layers;
    metrics << rec.dump() << "\n";

    const bool last = r.step == ts.steps;
    if ((ts.eval_every > 0 && r.step % ts.eval_every == 0) || last) {
      if (ts.eval_batches > 0) {
        const EvalResult e = evaluate(*model_, val_, ts.eval_batches, B);
        r.val_loss = e.loss;
        last_val = e.loss;
        metrics << json{{"step", r.step},
                        {"val_loss", e.loss},
                        {"val_perplexity", std::exp(e.loss)},
                        {"val_tokens", e.tokens}}
                       .dump()
                << "\n";
      }
    }
    metrics.flush();
    state.step = r.step;
    state.data = batches.position();
    const bool stop = options_.stop_after > 0 && r.step >= options_.stop_after;
    if ((spec_.checkpoint.every > 0 && r.step % spec_.checkpoint.every == 0) || last || stop) {
      Result<fs::path> written = checkpoint_write(ckpt_dir, *model_, optimizer, spec_, state,
                                                  spec_.checkpoint.keep, extra_files);
      if (!written.ok()) {
        progress.newline();
        return written.error();
      }
    }
    progress.update(r, last_val, recent_step_s * static_cast<double>(ts.steps - r.step));
    if (on_step) on_step(r);
    if (stop) {
      progress.newline();
      spdlog::info("stopped after step {} as asked; continue with --resume", r.step);
      break;
    }
  }
  return {};
}

}  // namespace mohge
