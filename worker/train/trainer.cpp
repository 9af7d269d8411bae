#include "worker/train/trainer.hpp"

#include <algorithm>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "storage/atomic_file.hpp"
#include "worker/dist/expert_moves.hpp"
#include "worker/train/checkpoint.hpp"
#include "worker/train/optimizer.hpp"
#include "worker/train/progress.hpp"
#include "worker/train/step_metrics.hpp"

namespace mohge {

namespace fs = std::filesystem;

Result<std::unique_ptr<Backend>> make_job_backend(const JobSpec& spec, int threads, int gpu) {
  std::string why;
  if (spec.resources.device == "cuda" && !cuda_backend_available(&why)) {
    return invalid_argument("resources.device",
                            "\"cuda\" is not available here: " + why + "; use \"cpu\"");
  }
  const Precision precision = spec.train.precision == "bf16" ? Precision::kBf16 : Precision::kFp32;
  if (spec.resources.device == "cuda") {
    const int visible = static_cast<int>(cuda_devices().size());
    if (gpu < 0 || gpu >= visible) {
      return invalid_argument("resources.device",
                              "\"cuda\": GPU " + std::to_string(gpu) + " is not visible here (" +
                                  std::to_string(visible) + " visible); one rank per GPU");
    }
    return make_cuda_backend(gpu, precision);
  }
  if (precision == Precision::kBf16 && !cpu_bf16_available(&why))
    return invalid_argument("train.precision", "\"bf16\" is not available here: " + why);
  return make_cpu_backend(threads, precision);
}
using nlohmann::json;

DifficultyRouting DifficultyRouting::from_counts(const std::vector<int64_t>& counts, int groups) {
  DifficultyRouting d;
  d.groups = groups;
  d.frequency_bucket.assign(counts.size(), kBuckets - 1);
  std::vector<int32_t> order(counts.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return counts[a] > counts[b]; });
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  int64_t seen = 0;
  for (int32_t t : order) {
    // The bucket of the cumulative count before this token: the most frequent token is in
    // bucket 0 even when it alone passes 25 %.
    const int b = total > 0 ? static_cast<int>(seen * kBuckets / total) : kBuckets - 1;
    d.frequency_bucket[static_cast<size_t>(t)] = static_cast<int8_t>(std::min(b, kBuckets - 1));
    seen += counts[static_cast<size_t>(t)];
  }
  d.by_frequency.assign(static_cast<size_t>(kBuckets * groups), 0.0);
  d.by_loss.assign(static_cast<size_t>(kBuckets * groups), 0.0);
  return d;
}

json DifficultyRouting::to_json() const {
  auto shares = [&](const std::vector<double>& m) {
    json rows = json::array();
    for (int b = 0; b < kBuckets; ++b) {
      double sum = 0;
      for (int g = 0; g < groups; ++g) sum += m[static_cast<size_t>(b * groups + g)];
      json row = json::array();
      for (int g = 0; g < groups; ++g)
        row.push_back(sum > 0 ? m[static_cast<size_t>(b * groups + g)] / sum : 0.0);
      rows.push_back(row);
    }
    return rows;
  };
  return {{"frequency", shares(by_frequency)}, {"token_loss", shares(by_loss)}};
}

EvalResult evaluate(Transformer& model, const TokenWindows& data, int64_t batches,
                    int64_t batch_size, const ParallelContext& parallel,
                    DifficultyRouting* difficulty) {
  const int64_t T = data.seq();
  const int64_t windows = std::min(batches * batch_size, data.num_windows());
  const int64_t R = parallel.world(), r = parallel.rank();
  std::vector<int32_t> inputs, targets;
  double totals[2] = {0.0, 0.0};  // CE sum, targets
  for (int64_t w0 = 0; w0 < windows; w0 += batch_size) {
    // This rank's share of the batch (every rank runs the forward, even with no windows,
    // because the experts' token exchange is collective).
    const int64_t B = std::min(batch_size, windows - w0);
    const int64_t first = w0 + B * r / R, count = B * (r + 1) / R - B * r / R;
    inputs.resize(static_cast<size_t>(std::max<int64_t>(count, 1) * T));
    targets.resize(inputs.size());
    for (int64_t b = 0; b < count; ++b)
      data.window(first + b, inputs.data() + b * T, targets.data() + b * T);
    const ForwardResult f = model.forward(inputs.data(), targets.data(), count, T);
    totals[0] += f.ce_loss * static_cast<double>(f.num_targets);
    totals[1] += static_cast<double>(f.num_targets);
    if (difficulty != nullptr && difficulty->groups > 0 && count > 0) {
      // Every routed layer's kept experts (N, K) → their groups, counted per token bucket.
      const int64_t N = count * T;
      const std::vector<float> losses = model.token_losses();
      const int G = difficulty->groups;
      const int64_t per_group = std::max<int64_t>(1, model.spec().ffn.num_experts() / G);
      std::vector<int32_t> index;
      std::vector<float> weight;
      for (int l = 0; l < model.spec().layers; ++l) {
        if (!model.ffn(l).routing_decisions(&index, &weight) || index.empty()) continue;
        const int64_t K = static_cast<int64_t>(index.size()) / N;
        for (int64_t i = 0; i < N; ++i) {
          const int fb =
              difficulty->frequency_bucket[static_cast<size_t>(inputs[static_cast<size_t>(i)])];
          const int lb = DifficultyRouting::loss_bucket(losses[static_cast<size_t>(i)]);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t g = index[static_cast<size_t>(i * K + k)] / per_group;
            if (g < 0 || g >= G) continue;
            difficulty->by_frequency[static_cast<size_t>(fb * G + g)] += 1;
            difficulty->by_loss[static_cast<size_t>(lb * G + g)] += 1;
          }
        }
      }
    }
  }
  if (parallel.distributed())
    collective_check(parallel.comm->all_reduce(totals, 2, ReduceOp::kSum));
  if (difficulty != nullptr && difficulty->groups > 0 && parallel.distributed()) {
    for (std::vector<double>* m : {&difficulty->by_frequency, &difficulty->by_loss}) {
      collective_check(
          parallel.comm->all_reduce(m->data(), static_cast<int64_t>(m->size()), ReduceOp::kSum));
    }
  }
  EvalResult e;
  e.tokens = static_cast<int64_t>(totals[1]);
  e.loss = totals[1] > 0 ? totals[0] / totals[1] : 0.0;
  return e;
}

namespace {

fs::path resolve(const fs::path& root, const std::string& p) {
  const fs::path path(p);
  return path.is_absolute() ? path : root / path;
}

// Metrics records of steps <= `last_step` survive a resume; later ones are replaced.
}  // namespace

// Keeps the records up to `last_step`. The file is replaced (a new file renamed over it), not
// rewritten in place: a rank of a superseded attempt that passed its fence check just before
// it was stopped still holds the old file open, and its late record lands there, not in the
// run's metrics.
Status metrics_truncate(const fs::path& path, int64_t last_step) {
  std::ifstream in(path);
  if (!in) return {};
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
  return atomic_write_file(path, [&](std::ostream& out) {
    for (const auto& l : keep) out << l << "\n";
  });
}

Result<std::unique_ptr<Trainer>> Trainer::create(const JobSpec& spec, const TrainOptions& options,
                                                 Backend& backend) {
  TrainOptions opt = options;
  if (opt.run_dir.empty()) opt.run_dir = opt.storage_root / "runs" / spec.name;
  const int world = opt.comm != nullptr ? opt.comm->world() : 1;
  std::unique_ptr<ExpertPlacement> placement;
  if (world > 1) {
    if (spec.train.batch_size % world != 0) {
      return invalid_argument("train.batch_size", "must be divisible by the number of workers (" +
                                                      std::to_string(world) + "), got " +
                                                      std::to_string(spec.train.batch_size));
    }
    Result<ExpertPlacement> p = placement_plan(spec.model, spec.placement, world);
    if (!p.ok()) return p.error();
    placement = std::make_unique<ExpertPlacement>(std::move(p).value());
  }
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
  if (!opt.resume && !opt.resume_if_present && !checkpoint_list(ckpt).empty()) {
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
  return std::unique_ptr<Trainer>(new Trainer(spec, opt, backend, std::move(train).value(),
                                              std::move(val).value(), std::move(placement)));
}

Trainer::Trainer(const JobSpec& spec, const TrainOptions& options, Backend& backend,
                 TokenWindows train, TokenWindows val, std::unique_ptr<ExpertPlacement> placement)
    : spec_(spec),
      options_(options),
      be_(backend),
      train_(std::move(train)),
      val_(std::move(val)),
      placement_(std::move(placement)) {
  if (placement_) parallel_ = ParallelContext{options_.comm, placement_.get(), options_.data_comm};
  model_ = std::make_unique<Transformer>(spec.model, backend, parallel_);
}

Trainer::~Trainer() = default;

Status Trainer::run(const std::function<void(const StepReport&)>& on_step) {
  try {
    return train_loop(on_step);
  } catch (const CollectiveError& e) {
    if (parallel_.distributed()) parallel_.comm->abort(e.error().message);
    return e.error();
  } catch (const std::exception& e) {
    // A broken invariant, an allocation or filesystem failure: report it like any error, so
    // the other ranks are told instead of waiting for a collective this rank will not join.
    const Error error{ErrorCode::kInternal, e.what(), ""};
    if (parallel_.distributed()) parallel_.comm->abort(error.message);
    return error;
  }
}

void Trainer::restore_placement(const std::vector<std::vector<int>>& owners) {
  const ModelSpec& m = spec_.model;
  const int E = m.ffn.num_experts(), R = placement_->world;
  if (owners.size() != static_cast<size_t>(m.layers)) return;  // none, or another model
  std::vector<ExpertPlacement> layers;
  for (const std::vector<int>& owner : owners) {
    if (owner.size() != static_cast<size_t>(E)) return;
    ExpertPlacement p = *placement_;
    p.layers.clear();
    p.owner = owner;
    for (int o : owner)
      if (o < 0 || o >= R) return;  // another world: start from static All-size
    placement_index(m, p);
    // Only an All-size placement fits the slots every rank has.
    for (const std::vector<int>& mine : p.experts)
      if (mine.size() != placement_->experts[0].size()) return;
    for (size_t r = 0; r < p.experts.size(); ++r)
      for (size_t j = 0; j < p.experts[r].size(); ++j)
        if (m.ffn.expert_hidden_width(p.experts[r][j]) !=
            m.ffn.expert_hidden_width(placement_->experts[r][j]))
          return;
    layers.push_back(std::move(p));
  }
  placement_->layers = std::move(layers);
  model_->placement_changed();
  if (parallel_.rank() == 0) spdlog::info("continuing with the checkpoint's expert placement");
}

Result<json> Trainer::adapt_placement(int64_t step, AdamW& optimizer) {
  if (!placement_ || placement_->kind != "all-size-adaptive" || !parallel_.distributed())
    return json(nullptr);
  const ModelSpec& m = spec_.model;
  const std::vector<const LayerRouting*> routing = model_->routing();
  if (load_ema_.empty()) load_ema_.assign(routing.size(), {});
  // The tokens of each expert (summed over ranks: the same numbers on every rank), averaged
  // over about the last ten steps.
  for (size_t l = 0; l < routing.size(); ++l)
    if (routing[l] != nullptr)
      placement_average_loads(load_ema_[l], routing[l]->expert_assignments);
  if (spec_.placement_every <= 0 || step % spec_.placement_every != 0) return json(nullptr);

  Result<PlacementReplan> plan =
      placement_replan(m, *placement_, load_ema_, spec_.placement_min_gain);
  if (!plan.ok()) return plan.error();
  if (!plan.value().worth) return json(nullptr);
  const ExpertPlacement& next = plan.value().next;
  const double before = plan.value().before, after = plan.value().after;
  const ExpertPlacement from = *placement_;
  const int64_t moved_experts = expert_moves_size(m, from, next).experts;
  if (moved_experts == 0) return json(nullptr);
  Result<ExpertMoves> moved = expert_moves_apply(
      model_->params(),
      {model_->params().data_arena(), optimizer.exp_avg(), optimizer.exp_avg_sq()}, m, from, next,
      parallel_.data(), be_, [&] {
        *placement_ = next;
        model_->placement_changed();
      });
  if (!moved.ok()) throw CollectiveError(moved.error());
  // Bytes of all ranks, milliseconds averaged over them (small host values: control plane).
  double cost[2] = {static_cast<double>(moved.value().bytes_sent), moved.value().ms};
  collective_check(parallel_.comm->all_reduce(cost, 2, ReduceOp::kSum));
  return json{{"step", step},
              {"placement",
               {{"experts_moved", moved_experts},
                {"bytes", static_cast<int64_t>(cost[0])},
                {"ms", cost[1] / placement_->world},
                {"predicted_imbalance_before", before},
                {"predicted_imbalance_after", after}}}};
}

Status Trainer::train_loop(const std::function<void(const StepReport&)>& on_step) {
  using Clock = std::chrono::steady_clock;
  const TrainSpec& ts = spec_.train;
  const int64_t B = ts.batch_size, T = spec_.model.seq_len;
  const int64_t R = parallel_.world(), rank = parallel_.rank(), B_local = B / R;
  const bool lead = rank == 0;  // writes metrics, shows progress
  const fs::path ckpt_dir = options_.run_dir / "checkpoints";
  const fs::path metrics_path = options_.run_dir / "metrics.jsonl";

  AdamW optimizer(ts, model_->params(), be_);
  TrainBatches batches(train_, B, ts.seed);
  TrainerState state;
  state.seed = ts.seed;
  const bool resume =
      options_.resume || (options_.resume_if_present && !checkpoint_list(ckpt_dir).empty());
  if (resume) {
    // Rank 0 picks the checkpoint, so every rank loads the same step.
    fs::path latest = checkpoint_list(ckpt_dir).back();
    if (parallel_.distributed()) {
      int64_t step = rank == 0 ? std::stoll(latest.filename().string().substr(5)) : 0;
      collective_check(parallel_.comm->broadcast(&step, sizeof(step), 0));
      latest = ckpt_dir / checkpoint_folder_name(step);
    }
    if (placement_ && placement_->kind == "all-size-adaptive") {
      // The experts each rank held when the checkpoint was written (names follow them), as
      // rank 0 reads them: every rank must take the same slots.
      const int64_t L = spec_.model.layers, E = spec_.model.ffn.num_experts();
      std::vector<std::vector<int>> owners;
      int64_t found = 0;  // 1: a placement of the right shape; -1: unreadable
      if (rank == 0) {
        Result<std::vector<std::vector<int>>> read = checkpoint_placement(latest);
        if (!read.ok()) {
          found = -1;
        } else if (read.value().size() == static_cast<size_t>(L) &&
                   std::all_of(read.value().begin(), read.value().end(),
                               [&](const std::vector<int>& o) {
                                 return o.size() == static_cast<size_t>(E);
                               })) {
          owners = read.value();
          found = 1;
        }
        if (found < 0) {
          collective_check(parallel_.comm->broadcast(&found, sizeof(found), 0));
          return read.error();
        }
      }
      collective_check(parallel_.comm->broadcast(&found, sizeof(found), 0));
      if (found < 0) {
        return Error{ErrorCode::kDataLoss,
                     "rank 0 could not read the placement of " + latest.string(), ""};
      }
      if (found == 1) {
        std::vector<int32_t> flat(static_cast<size_t>(L * E));
        if (rank == 0) {
          for (int64_t l = 0; l < L; ++l)
            for (int64_t e = 0; e < E; ++e)
              flat[static_cast<size_t>(l * E + e)] =
                  owners[static_cast<size_t>(l)][static_cast<size_t>(e)];
        }
        collective_check(parallel_.comm->broadcast(
            flat.data(), static_cast<int64_t>(flat.size() * sizeof(int32_t)), 0));
        owners.assign(static_cast<size_t>(L), std::vector<int>(static_cast<size_t>(E)));
        for (int64_t l = 0; l < L; ++l)
          for (int64_t e = 0; e < E; ++e)
            owners[static_cast<size_t>(l)][static_cast<size_t>(e)] =
                flat[static_cast<size_t>(l * E + e)];
        restore_placement(owners);
      }
    }
    if (Status s = checkpoint_load(latest, *model_, &optimizer, &state); !s.ok()) return s;
    if (state.seed != ts.seed) {
      return invalid_argument(
          "train.seed", "differs from the run being resumed (" + std::to_string(state.seed) + ")");
    }
    batches.set_position(state.data);
    if (lead) {
      if (Status s = metrics_truncate(metrics_path, state.step); !s.ok()) return s;
    }
    if (lead)
      spdlog::info("resuming {} from {} (step {})", spec_.name, latest.string(), state.step);
    // Report again what the run holds up to here: the records kept and the checkpoint resumed
    // from. The attempt that wrote them may have been superseded before its reports were
    // accepted (its worker declared lost while the coordinator was cut off), and the service
    // keys metric rows by (name, step) and checkpoints by step, so nothing is doubled.
    if (lead && options_.on_record) {
      std::ifstream kept(metrics_path);
      for (std::string line; std::getline(kept, line);) {
        const json rec = json::parse(line, nullptr, false);
        if (rec.is_object() && rec.contains("step")) options_.on_record(rec);
      }
    }
    if (options_.on_checkpoint) options_.on_checkpoint(state.step, latest);
  } else {
    model_->initialize(ts.seed);
    if (lead) {
      // A new file, for the same reason as metrics_truncate.
      if (Status s = atomic_write_file(metrics_path, [](std::ostream&) {}); !s.ok()) return s;
    }
  }
  if (lead) {
    std::ofstream job(options_.run_dir / "job.json");
    job << job_spec_to_json(spec_).dump(2) << "\n";
    spdlog::info(
        "{}: {} parameters on rank 0 ({} in experts), {} ranks, {} train / {} val "
        "tokens, {} threads per rank",
        spec_.name, model_->total_params(), model_->expert_params(), R, train_.num_tokens(),
        val_.num_tokens(), be_.num_threads());
  }

  // The tokenizer that prepare-data wrote next to the training data travels with every
  // checkpoint, so `mohge generate` needs nothing else.
  std::vector<fs::path> extra_files;
  const fs::path tokenizer =
      resolve(options_.storage_root, spec_.data.train).parent_path() / "tokenizer.model";
  if (fs::exists(tokenizer)) extra_files.push_back(tokenizer);

  std::ofstream metrics;
  if (lead) metrics.open(metrics_path, std::ios::app);
  Progress progress(options_.progress && lead, ts.steps);
  std::optional<double> last_val;
  double recent_step_s = 0.0;
  const int64_t group_loss_start = static_cast<int64_t>(
      std::ceil(spec_.model.ffn.group_loss_start * static_cast<double>(ts.steps)));
  ParamStore& params = model_->params();
  // Training-set token counts: the frequency buckets of difficulty routing (MoHGE).
  const std::vector<int64_t> train_counts = spec_.model.ffn.kind == "mohge"
                                                ? train_.token_counts(spec_.model.vocab_size)
                                                : std::vector<int64_t>{};
  std::vector<int32_t> inputs, targets;

  // A record goes out whole and at once, right after the fence says this attempt still owns
  // the run (an evaluation can take long enough for the attempt to be superseded meanwhile).
  auto write_record = [&](const json& rec) -> Status {
    if (Status s = options_.fence.verify(); !s.ok()) return s;
    metrics << rec.dump() + "\n";
    metrics.flush();
    if (options_.on_record) options_.on_record(rec);
    return {};
  };
  // How many rank pairs use each transport kind, for the first step's record.
  json transport_pairs;
  if (!options_.transport_pairs.empty()) transport_pairs = options_.transport_pairs;
  // Seconds inside communication calls on this rank, both planes.
  auto comm_busy = [&] {
    double s = parallel_.comm != nullptr ? parallel_.comm->busy_seconds() : 0.0;
    if (parallel_.data_comm != nullptr && parallel_.data_comm != parallel_.comm)
      s += parallel_.data_comm->busy_seconds();
    return s;
  };
  const int64_t first_step = state.step;  // state.step moves on with every step
  for (int64_t step = first_step; step < ts.steps; ++step) {
    const auto t0 = Clock::now();
    const double busy0 = comm_busy();
    const double lr = lr_at(ts, step);
    // Every rank draws the same global batch and keeps its B/R sequences.
    batches.next(inputs, targets);
    const int64_t first = rank * B_local * T;
    const ForwardResult f = model_->forward(inputs.data() + first, targets.data() + first, B_local,
                                            T, {.group_loss_on = step >= group_loss_start});
    const StepLosses losses = step_losses_reduce(parallel_, *model_, f);
    params.zero_grad();
    model_->backward(losses.targets);
    // Replicated gradients: sum of the ranks' contributions (each already scaled by the
    // global target count). Expert gradients stay with their owner.
    double norm_sq[2] = {0.0, 0.0};  // replicated, owned experts
    if (parallel_.distributed()) {
      collective_check(parallel_.data().all_reduce(params.grad_arena(), params.replicated_size(),
                                                   ReduceOp::kSum));
      norm_sq[1] = be_.sum_squares(params.total_size() - params.replicated_size(),
                                   params.grad_arena() + params.replicated_size());
      collective_check(parallel_.comm->all_reduce(&norm_sq[1], 1, ReduceOp::kSum));
    }
    norm_sq[0] = be_.sum_squares(params.replicated_size(), params.grad_arena());
    const double norm = std::sqrt(norm_sq[0] + norm_sq[1]);
    const double total_loss = losses.ce_loss + losses.aux_group + losses.aux_expert;
    if (!std::isfinite(norm) || !std::isfinite(total_loss)) {
      progress.newline();
      return Error{ErrorCode::kFailedPrecondition,
                   "training diverged at step " + std::to_string(step + 1) + " (loss " +
                       std::to_string(total_loss) + ", grad norm " + std::to_string(norm) +
                       "); lower train.lr or raise train.warmup_steps",
                   "train.lr"};
    }
    optimizer.step(lr, norm);
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    recent_step_s = step == first_step ? step_s : 0.9 * recent_step_s + 0.1 * step_s;

    StepReport r;
    r.step = step + 1;
    r.loss = losses.ce_loss;
    r.aux_group = losses.aux_group;
    r.aux_expert = losses.aux_expert;
    r.lr = lr;
    r.grad_norm = norm;
    r.step_ms = step_s * 1e3;
    r.comm_ms = (comm_busy() - busy0) * 1e3;
    r.tokens_per_s = static_cast<double>(B * T) / step_s;
    r.activated_expert_params = model_->activated_expert_params();
    const json layers = step_layer_metrics(parallel_, *model_, losses);
    if (lead) {
      json rec = {{"step", r.step},
                  {"loss", r.loss},
                  {"aux_group", r.aux_group},
                  {"aux_expert", r.aux_expert},
                  {"lr", r.lr},
                  {"grad_norm", r.grad_norm},
                  {"tokens_per_s", r.tokens_per_s},
                  {"step_ms", r.step_ms},
                  {"activated_expert_params", r.activated_expert_params},
                  {"workers", R}};
      if (step == first_step && transport_pairs.is_object()) {
        // The first step of the run (or of this resume) says which transports the pairs use
        // (numbers only, the protocol's rule for records; each rank's log names them).
        rec["transport_pairs"] = transport_pairs;
      }
      if (parallel_.distributed()) {
        // The communication share of the step on rank 0 (what a slow link or a slow peer costs).
        rec["comm_ms"] = r.comm_ms;
        rec["comm_share"] = r.step_ms > 0 ? r.comm_ms / r.step_ms : 0.0;
      }
      if (!layers.empty()) rec["layers"] = layers;
      if (Status s = write_record(rec); !s.ok()) {
        progress.newline();
        return s.error();
      }
    }
    if (r.step < ts.steps) {
      Result<json> moved = adapt_placement(r.step, optimizer);
      if (!moved.ok()) {
        progress.newline();
        return moved.error();
      }
      if (lead && !moved.value().is_null()) {
        if (Status s = write_record(moved.value()); !s.ok()) {
          progress.newline();
          return s.error();
        }
      }
    }

    const bool last = r.step == ts.steps;
    if ((ts.eval_every > 0 && r.step % ts.eval_every == 0) || last) {
      if (ts.eval_batches > 0) {
        DifficultyRouting difficulty;
        const bool mohge = spec_.model.ffn.kind == "mohge";
        if (mohge)
          difficulty = DifficultyRouting::from_counts(train_counts, spec_.model.ffn.groups);
        const EvalResult e =
            evaluate(*model_, val_, ts.eval_batches, B, parallel_, mohge ? &difficulty : nullptr);
        r.val_loss = e.loss;
        last_val = e.loss;
        if (lead) {
          json rec = {{"step", r.step},
                      {"val_loss", e.loss},
                      {"val_perplexity", std::exp(e.loss)},
                      {"val_tokens", e.tokens}};
          if (mohge) rec["difficulty"] = difficulty.to_json();
          if (Status s = write_record(rec); !s.ok()) {
            progress.newline();
            return s.error();
          }
        }
      }
    }
    state.step = r.step;
    state.data = batches.position();
    bool stop = options_.stop_after > 0 && r.step >= options_.stop_after;
    if (options_.stop_request != nullptr && !last) {
      // Every rank must stop after the same step: any rank's request stops them all.
      float asked = options_.stop_request->load() ? 1.0f : 0.0f;
      if (parallel_.distributed())
        collective_check(parallel_.comm->all_reduce(&asked, 1, ReduceOp::kSum));
      stop = stop || asked > 0.0f;
    }
    r.stopped = stop && !last;
    if (placement_ && !placement_->layers.empty()) {
      state.placement.clear();
      for (const ExpertPlacement& l : placement_->layers) state.placement.push_back(l.owner);
    }
    if ((spec_.checkpoint.every > 0 && r.step % spec_.checkpoint.every == 0) || last || stop) {
      Result<fs::path> written =
          checkpoint_write(ckpt_dir, *model_, optimizer, spec_, state, spec_.checkpoint.keep,
                           extra_files, parallel_, options_.fence);
      if (!written.ok()) {
        progress.newline();
        return written.error();
      }
      if (options_.on_checkpoint) options_.on_checkpoint(r.step, written.value());
    }
    progress.update(r, last_val, recent_step_s * static_cast<double>(ts.steps - r.step));
    if (on_step) on_step(r);
    if (stop) {
      progress.newline();
      if (lead) spdlog::info("stopped after step {} as asked; continue with --resume", r.step);
      break;
    }
  }
  return {};
}

}  // namespace mohge
