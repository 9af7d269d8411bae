// The job spec (DESIGN.md §8): one JSON document drives `mohge train` and POST /api/v1/jobs.
// Fields may be added, never renamed. parse_job_spec() validates every field before anything
// runs; each problem is reported with the field's dotted path and the rule it breaks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "api/result.hpp"

namespace mohge {

struct FfnSpec {
  std::string kind = "mohge";  // "dense" | "moe" | "mohge"
  // mohge
  int groups = 0;             // G
  int experts_per_group = 0;  // n
  std::vector<int> widths;    // (G) W_g, ascending; or derived from base_width/width_step
  int base_width = 0;         // W_base of eq. 1 (0 when widths are given)
  int width_step = 0;
  int top_groups = 0;                    // Kg
  double alpha_group = 1e-4;             // α_G
  double alpha_expert = 2.5e-3;          // α_E
  std::string router_variant = "paper";  // "paper" | "reference"
  std::string group_loss = "paper";      // "paper" | "reference"
  std::string expert_loss = "paper";     // "paper" | "reference"
  double group_loss_start = 0.0;         // fraction of steps before L_G switches on
  // moe
  int experts = 0;  // E
  int expert_width = 0;
  double alpha_balance = 3e-3;
  // moe and mohge
  // Expert balance: "aux" (the paper's L_E, or the MoE switch loss) or "bias" (aux-loss-free:
  // a per-expert bias on the selection scores, moved by bias_rate against each step's load
  // error; L_E / the switch loss are then off).
  std::string balance = "aux";
  double bias_rate = 1e-3;
  int top_experts = 0;     // K
  int shared_experts = 0;  // S
  int shared_width = 0;
  // dense
  int width = 0;

  /// Routed experts: G·n (mohge), experts (moe), 0 (dense).
  int num_experts() const;
  /// Hidden width of routed expert e (mohge: its group's width).
  int expert_hidden_width(int e) const;
};

struct ModelSpec {
  int vocab_size = 0;
  int seq_len = 0;
  int layers = 0;
  int d_model = 0;
  int heads = 0;
  bool tie_embeddings = true;
  double rope_base = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  FfnSpec ffn;
};

struct DataSpec {
  std::string train;  // relative to the storage root (or absolute)
  std::string val;
};

struct TrainSpec {
  int64_t steps = 0;
  int batch_size = 0;
  double lr = 3e-4;
  double lr_min = 3e-5;
  int64_t warmup_steps = 0;
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  uint64_t seed = 1;
  int64_t eval_every = 100;
  int eval_batches = 20;
  std::string precision = "fp32";  // "fp32" | "bf16": the GEMMs' inputs (kernels/ops.hpp)
};

struct ResourcesSpec {
  int workers = 1;
  std::string device = "cpu";  // "cpu" | "cuda"
};

struct CheckpointSpec {
  int64_t every = 0;  // 0: only at the end
  int keep = 3;
};

struct JobSpec {
  std::string name;
  ModelSpec model;
  DataSpec data;
  TrainSpec train;
  ResourcesSpec resources;
  // "all-size" | "all-size-adaptive" | "group-per-rank" | "contiguous"
  std::string placement = "all-size";
  // all-size-adaptive: re-plan every this many steps (0: never) from the measured loads, and
  // move experts when the predicted imbalance drops by at least this fraction.
  int64_t placement_every = 10;
  double placement_min_gain = 0.02;
  CheckpointSpec checkpoint;
  int priority = 50;     // 0..100, higher first
  int max_restarts = 3;  // recoveries after lost workers before the job FAILS
};

/// Parameter counts of a model, as the worker's Transformer builds it (checked against it by
/// tests/worker/test_model.cpp): every rank's experts counted once.
struct ParamCounts {
  int64_t total = 0;   // every parameter (embeddings, attention, norms, routers, FFNs)
  int64_t ffn = 0;     // FFN weights: routed + shared experts (dense: the FFN)
  int64_t routed = 0;  // routed experts only
};
ParamCounts model_param_counts(const ModelSpec& model);

/// Parses and validates a spec. On failure the Error names the first offending field; all
/// problems are listed (one per line) in its message.
Result<JobSpec> parse_job_spec(const nlohmann::json& json);
/// Reads and parses a spec file (errors name the file).
Result<JobSpec> load_job_spec(const std::string& path);
/// The spec as JSON with every field (defaults filled in); parse_job_spec(to_json(s)) == s.
nlohmann::json job_spec_to_json(const JobSpec& spec);

}  // namespace mohge
