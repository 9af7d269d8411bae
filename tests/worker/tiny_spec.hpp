// Tiny job specs for model and trainer tests.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "api/job_spec.hpp"

namespace mohge::testing {

/// kind: "dense", "moe", "mohge" (paper router) or "mohge-reference" (reference router and
/// reference aux losses). Large aux coefficients so their gradients show in checks.
inline nlohmann::json tiny_spec_json(const std::string& kind) {
  nlohmann::json ffn;
  if (kind == "dense") {
    ffn = {{"kind", "dense"}, {"width", 24}};
  } else if (kind == "moe") {
    ffn = {{"kind", "moe"},       {"experts", 4},      {"expert_width", 12},  {"top_experts", 2},
           {"shared_experts", 1}, {"shared_width", 8}, {"alpha_balance", 0.3}};
  } else {
    const std::string v = kind == "mohge-reference" ? "reference" : "paper";
    ffn = {{"kind", "mohge"},           {"groups", 4},         {"experts_per_group", 2},
           {"widths", {6, 10, 14, 18}}, {"top_groups", 2},     {"top_experts", 3},
           {"shared_experts", 1},       {"shared_width", 8},   {"alpha_group", 0.3},
           {"alpha_expert", 0.3},       {"router_variant", v}, {"group_loss", v},
           {"expert_loss", v}};
  }
  return {{"name", "tiny-" + kind},
          {"model",
           {{"vocab_size", 32},
            {"seq_len", 6},
            {"layers", 2},
            {"d_model", 16},
            {"heads", 2},
            {"tie_embeddings", kind != "dense"},
            {"init_std", 0.3},
            {"ffn", ffn}}},
          {"data", {{"train", "train.bin"}, {"val", "val.bin"}}},
          {"train",
           {{"steps", 8},
            {"batch_size", 2},
            {"lr", 1e-2},
            {"lr_min", 1e-3},
            {"warmup_steps", 2},
            {"eval_every", 4},
            {"eval_batches", 2},
            {"seed", 3}}},
          {"resources", {{"workers", 1}, {"device", "cpu"}}},
          {"checkpoint", {{"every", 4}, {"keep", 2}}}};
}

inline JobSpec tiny_spec(const std::string& kind) {
  Result<JobSpec> s = parse_job_spec(tiny_spec_json(kind));
  if (!s.ok()) throw std::runtime_error(s.error().to_string());
  return s.value();
}

}  // namespace mohge::testing
