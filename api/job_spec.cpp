#include "api/job_spec.hpp"

#include <cstdint>

#include "api/field_reader.hpp"
#include "api/paths.hpp"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace mohge {

using nlohmann::json;

int FfnSpec::num_experts() const {
  if (kind == "mohge") return groups * experts_per_group;
  if (kind == "moe") return experts;
  return 0;
}

int FfnSpec::expert_hidden_width(int e) const {
  if (kind == "mohge") return widths.at(static_cast<size_t>(e / experts_per_group));
  return expert_width;
}

namespace {

constexpr int64_t kMaxDim = 1 << 20;

void parse_ffn(const FieldReader& r, FfnSpec& f, std::vector<Error>& errors) {
  r.choice("kind", f.kind, {"dense", "moe", "mohge"}, true);
  if (f.kind == "dense") {
    r.integer("width", f.width, true, 1, kMaxDim);
  } else if (f.kind == "moe") {
    r.integer("experts", f.experts, true, 1, 4096);
    r.integer("expert_width", f.expert_width, true, 1, kMaxDim);
    r.integer("top_experts", f.top_experts, true, 1, 4096);
    r.integer("shared_experts", f.shared_experts, false, 0, 64);
    r.integer("shared_width", f.shared_width, f.shared_experts > 0, 1, kMaxDim);
    r.real("alpha_balance", f.alpha_balance, false, 0.0, 1.0);
    r.choice("balance", f.balance, {"aux", "bias"}, false);
    r.real("bias_rate", f.bias_rate, false, 0.0, 1.0);
    if (f.top_experts > f.experts && f.experts > 0)
      r.fail("top_experts",
             "must not exceed model.ffn.experts (" + std::to_string(f.experts) + ")");
  } else if (f.kind == "mohge") {
    r.integer("groups", f.groups, true, 1, 256);
    r.integer("experts_per_group", f.experts_per_group, true, 1, 1024);
    r.integer("top_groups", f.top_groups, true, 1, 256);
    r.integer("top_experts", f.top_experts, true, 1, 4096);
    r.integer("shared_experts", f.shared_experts, false, 0, 64);
    r.integer("shared_width", f.shared_width, f.shared_experts > 0, 1, kMaxDim);
    r.real("alpha_group", f.alpha_group, false, 0.0, 1.0);
    r.real("alpha_expert", f.alpha_expert, false, 0.0, 1.0);
    r.choice("router_variant", f.router_variant, {"paper", "reference"}, false);
    r.choice("group_loss", f.group_loss, {"paper", "reference"}, false);
    r.choice("expert_loss", f.expert_loss, {"paper", "reference"}, false);
    r.real("group_loss_start", f.group_loss_start, false, 0.0, 1.0);
    r.choice("balance", f.balance, {"aux", "bias"}, false);
    r.real("bias_rate", f.bias_rate, false, 0.0, 1.0);
    const bool has_widths = r.has("widths");
    const bool has_base = r.has("base_width") || r.has("width_step");
    if (has_widths && has_base) {
      r.fail("widths", "give either widths or base_width and width_step, not both");
    } else if (has_widths) {
      const json* w = r.get("widths", true);
      if (!w->is_array()) {
        r.fail("widths", "must be an array of integers");
      } else {
        f.widths.clear();
        for (const auto& x : *w) {
          if (!x.is_number_integer() || x.get<int64_t>() < 1 || x.get<int64_t>() > kMaxDim) {
            r.fail("widths",
                   "every width must be an integer in [1, " + std::to_string(kMaxDim) + "]");
            f.widths.clear();
            break;
          }
          f.widths.push_back(x.get<int>());
        }
      }
    } else if (has_base) {
      r.integer("base_width", f.base_width, true, 1, kMaxDim);
      r.integer("width_step", f.width_step, true, 0, kMaxDim);
      // Eq. 1: W_g + W_{G-1-g} = 2·W_base with W_g = W_base + (g - (G-1)/2)·step.
      f.widths.clear();
      for (int g = 0; g < f.groups && f.base_width > 0; ++g) {
        const double w = f.base_width + (g - (f.groups - 1) / 2.0) * f.width_step;
        if (w < 1 || w != static_cast<int>(w)) {
          r.fail("width_step", "gives a non-positive or fractional width for group " +
                                   std::to_string(g) + " (W_base + (g - (G-1)/2)·step)");
          f.widths.clear();
          break;
        }
        f.widths.push_back(static_cast<int>(w));
      }
    } else {
      r.fail("widths", "is required (or base_width and width_step)");
    }
    if (!f.widths.empty() && f.groups > 0) {
      if (static_cast<int>(f.widths.size()) != f.groups) {
        r.fail("widths", "must have one width per group (" + std::to_string(f.groups) + "), got " +
                             std::to_string(f.widths.size()));
      } else if (!std::is_sorted(f.widths.begin(), f.widths.end())) {
        r.fail("widths", "must be ascending (group 0 is the smallest)");
      }
    }
    if (f.top_groups > f.groups && f.groups > 0)
      r.fail("top_groups", "must not exceed model.ffn.groups (" + std::to_string(f.groups) + ")");
    if (f.top_experts > f.top_groups * f.experts_per_group && f.top_groups > 0)
      r.fail("top_experts", "must not exceed top_groups·experts_per_group (" +
                                std::to_string(f.top_groups * f.experts_per_group) + ")");
  }
  (void)errors;
  r.reject_unknown();
}

}  // namespace

ParamCounts model_param_counts(const ModelSpec& m) {
  // In 128 bits and saturated: the largest specs the validator accepts exceed int64 (a count
  // that large is reported as INT64_MAX). One pass over the groups, not over the experts.
  __extension__ typedef __int128 Wide;
  const Wide D = m.d_model, V = m.vocab_size, L = m.layers;
  const FfnSpec& f = m.ffn;
  Wide per_layer_other = 4 * D * D + 2 * D;  // q, k, v, o; two norms
  Wide per_layer_ffn = 0, routed = 0;
  if (f.kind == "dense") {
    per_layer_ffn = 3 * D * f.width;
  } else {
    const int E = f.num_experts();
    if (f.kind == "mohge") {
      for (int g = 0; g < f.groups; ++g)
        routed +=
            Wide{3} * D * f.experts_per_group * f.expert_hidden_width(g * f.experts_per_group);
    } else {
      routed = Wide{3} * D * E * f.expert_width;
    }
    per_layer_ffn = routed + Wide{f.shared_experts} * 3 * D * f.shared_width;
    per_layer_other += D * E + (f.kind == "mohge" ? D * f.groups : 0);  // routers
    if (f.balance == "bias") per_layer_other += E;                      // expert_bias
  }
  const auto narrow = [](Wide v) { return v > INT64_MAX ? INT64_MAX : static_cast<int64_t>(v); };
  ParamCounts c;
  c.routed = narrow(L * routed);
  c.ffn = narrow(L * per_layer_ffn);
  c.total = narrow(V * D * (m.tie_embeddings ? 1 : 2) + D + L * (per_layer_other + per_layer_ffn));
  return c;
}

Result<JobSpec> parse_job_spec(const json& j) {
  std::vector<Error> errors;
  JobSpec s;
  FieldReader top(j, "", errors);
  top.string("name", s.name, true);
  if (top.has("name") && s.name.empty()) top.fail("name", "must not be empty");

  if (const json* m = top.get("model", true)) {
    FieldReader r(*m, "model", errors);
    ModelSpec& ms = s.model;
    r.integer("vocab_size", ms.vocab_size, true, 2, 65536);
    r.integer("seq_len", ms.seq_len, true, 1, 1 << 16);
    r.integer("layers", ms.layers, true, 1, 1024);
    r.integer("d_model", ms.d_model, true, 2, kMaxDim);
    r.integer("heads", ms.heads, true, 1, 1024);
    r.boolean("tie_embeddings", ms.tie_embeddings);
    r.real("rope_base", ms.rope_base, false, 1.0, 1e9);
    r.real("norm_eps", ms.norm_eps, false, 1e-12, 1.0);
    r.real("init_std", ms.init_std, false, 1e-6, 1.0);
    if (ms.heads > 0 && ms.d_model > 0) {
      if (ms.d_model % ms.heads != 0) {
        r.fail("d_model", "must be divisible by model.heads (" + std::to_string(ms.heads) + ")");
      } else if ((ms.d_model / ms.heads) % 2 != 0) {
        r.fail("heads", "must leave an even head_dim = d_model / heads for RoPE");
      }
    }
    if (const json* f = r.get("ffn", true))
      parse_ffn(FieldReader(*f, "model.ffn", errors), ms.ffn, errors);
    r.reject_unknown();
  }
  if (const json* d = top.get("data", true)) {
    FieldReader r(*d, "data", errors);
    r.string("train", s.data.train, true);
    r.string("val", s.data.val, true);
    for (const auto& [key, value] : {std::pair{"train", &s.data.train}, {"val", &s.data.val}}) {
      if (r.has(key) && d->at(key).is_string() && !path_is_confined(*value))
        r.fail(key, "must be a path relative to the storage root, without \"..\"");
    }
    r.reject_unknown();
  }
  if (const json* t = top.get("train", true)) {
    FieldReader r(*t, "train", errors);
    TrainSpec& ts = s.train;
    r.integer("steps", ts.steps, true, 1, int64_t{1} << 40);
    r.integer("batch_size", ts.batch_size, true, 1, 1 << 20);
    r.real("lr", ts.lr, true, 0.0, 10.0);
    r.real("lr_min", ts.lr_min, false, 0.0, 10.0);
    r.integer("warmup_steps", ts.warmup_steps, false, 0, int64_t{1} << 40);
    r.real("weight_decay", ts.weight_decay, false, 0.0, 10.0);
    r.real("grad_clip", ts.grad_clip, false, 0.0, 1e9);
    r.real("beta1", ts.beta1, false, 0.0, 0.999999);
    r.real("beta2", ts.beta2, false, 0.0, 0.999999);
    r.real("adam_eps", ts.adam_eps, false, 1e-20, 1.0);
    r.integer("seed", ts.seed, false, 0, int64_t{1} << 62);
    r.integer("eval_every", ts.eval_every, false, 0, int64_t{1} << 40);
    r.integer("eval_batches", ts.eval_batches, false, 0, 1 << 20);
    r.choice("precision", ts.precision, {"fp32", "bf16"}, false);
    if (ts.lr_min > ts.lr) r.fail("lr_min", "must not exceed train.lr");
    if (ts.warmup_steps > ts.steps && ts.steps > 0)
      r.fail("warmup_steps", "must not exceed train.steps (" + std::to_string(ts.steps) + ")");
    r.reject_unknown();
  }
  if (const json* res = top.get("resources", false)) {
    FieldReader r(*res, "resources", errors);
    r.integer("workers", s.resources.workers, false, 1, 4096);
    r.choice("device", s.resources.device, {"cpu", "cuda"}, false);
    r.reject_unknown();
  }
  top.choice("placement", s.placement,
             {"all-size", "all-size-adaptive", "group-per-rank", "contiguous"}, false);
  top.integer("placement_every", s.placement_every, false, 0, int64_t{1} << 40);
  top.real("placement_min_gain", s.placement_min_gain, false, 0.0, 1.0);
  if (const json* c = top.get("checkpoint", false)) {
    FieldReader r(*c, "checkpoint", errors);
    r.integer("every", s.checkpoint.every, false, 0, int64_t{1} << 40);
    r.integer("keep", s.checkpoint.keep, false, 1, 1 << 20);
    r.reject_unknown();
  }
  top.integer("priority", s.priority, false, 0, 100);
  top.integer("max_restarts", s.max_restarts, false, 0, 100);

  // Rules between sections.
  const FfnSpec& f = s.model.ffn;
  const int R = s.resources.workers;
  if (f.kind == "mohge" && f.experts_per_group > 0 && R > 0 && f.experts_per_group % R != 0 &&
      (s.placement == "all-size" || s.placement == "all-size-adaptive")) {
    errors.push_back(invalid_argument("model.ffn.experts_per_group",
                                      "must be divisible by resources.workers (" +
                                          std::to_string(R) + ") for all-size placement, got " +
                                          std::to_string(f.experts_per_group)));
  }
  if (f.kind == "moe" && f.experts > 0 && R > 0 && f.experts % R != 0) {
    errors.push_back(invalid_argument(
        "model.ffn.experts", "must be divisible by resources.workers (" + std::to_string(R) +
                                 "), got " + std::to_string(f.experts)));
  }
  if (s.model.vocab_size > 65536) {
    errors.push_back(
        invalid_argument("model.vocab_size", "must fit uint16 token files (<= 65536)"));
  }
  top.reject_unknown();

  if (!errors.empty()) {
    Error first = errors.front();
    if (errors.size() > 1) {
      std::ostringstream all;
      all << first.message << " (" << errors.size() << " problems in the job spec:";
      for (const auto& e : errors) all << "\n" << e.to_string();
      all << ")";
      first.message = all.str();
    }
    return first;
  }
  return s;
}

Result<JobSpec> load_job_spec(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Error{ErrorCode::kNotFound, "cannot open job spec " + path, ""};
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {  // parse errors, and numbers that overflow
    return Error{ErrorCode::kInvalidArgument,
                 "job spec " + path + " is not valid JSON: " + e.what(), ""};
  }
  return parse_job_spec(j);
}

json job_spec_to_json(const JobSpec& s) {
  const FfnSpec& f = s.model.ffn;
  json ffn = {{"kind", f.kind}};
  if (f.kind == "dense") {
    ffn["width"] = f.width;
  } else if (f.kind == "moe") {
    ffn.update({{"experts", f.experts},
                {"expert_width", f.expert_width},
                {"top_experts", f.top_experts},
                {"shared_experts", f.shared_experts},
                {"alpha_balance", f.alpha_balance},
                {"balance", f.balance},
                {"bias_rate", f.bias_rate}});
    if (f.shared_experts > 0) ffn["shared_width"] = f.shared_width;
  } else {
    ffn.update({{"groups", f.groups},
                {"experts_per_group", f.experts_per_group},
                {"widths", f.widths},
                {"top_groups", f.top_groups},
                {"top_experts", f.top_experts},
                {"shared_experts", f.shared_experts},
                {"alpha_group", f.alpha_group},
                {"alpha_expert", f.alpha_expert},
                {"router_variant", f.router_variant},
                {"group_loss", f.group_loss},
                {"expert_loss", f.expert_loss},
                {"group_loss_start", f.group_loss_start},
                {"balance", f.balance},
                {"bias_rate", f.bias_rate}});
    if (f.shared_experts > 0) ffn["shared_width"] = f.shared_width;
  }
  const ModelSpec& m = s.model;
  const TrainSpec& t = s.train;
  return json{{"name", s.name},
              {"model",
               {{"vocab_size", m.vocab_size},
                {"seq_len", m.seq_len},
                {"layers", m.layers},
                {"d_model", m.d_model},
                {"heads", m.heads},
                {"tie_embeddings", m.tie_embeddings},
                {"rope_base", m.rope_base},
                {"norm_eps", m.norm_eps},
                {"init_std", m.init_std},
                {"ffn", ffn}}},
              {"data", {{"train", s.data.train}, {"val", s.data.val}}},
              {"train",
               {{"steps", t.steps},
                {"batch_size", t.batch_size},
                {"lr", t.lr},
                {"lr_min", t.lr_min},
                {"warmup_steps", t.warmup_steps},
                {"weight_decay", t.weight_decay},
                {"grad_clip", t.grad_clip},
                {"beta1", t.beta1},
                {"beta2", t.beta2},
                {"adam_eps", t.adam_eps},
                {"seed", t.seed},
                {"eval_every", t.eval_every},
                {"eval_batches", t.eval_batches},
                {"precision", t.precision}}},
              {"resources", {{"workers", s.resources.workers}, {"device", s.resources.device}}},
              {"placement", s.placement},
              {"placement_every", s.placement_every},
              {"placement_min_gain", s.placement_min_gain},
              {"checkpoint", {{"every", s.checkpoint.every}, {"keep", s.checkpoint.keep}}},
              {"priority", s.priority},
              {"max_restarts", s.max_restarts}};
}

}  // namespace mohge
