// ParamStore: every trainable tensor of a model, with its checkpoint name (storage/FORMAT.md),
// shape and optimizer flags, laid out in one arena (and a same-shaped gradient arena).
// The arena has two regions: replicated parameters (identical on every expert-parallel rank,
// gradients all-reduced) first, then this rank's routed experts. Within a region, parameters
// registered one after another are contiguous, which the model uses to fuse GEMMs (q|k|v,
// gate|up, group_gate|expert_gate) without renaming tensors.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/backend.hpp"

namespace mohge {

enum class ParamInit {
  kNormal,  // N(0, std)
  kOnes,    // norm weights
  kZeros,   // state kept with the model but not trained (the balance bias)
};

struct ParamInfo {
  std::string name;            // e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // (out, in) for linear weights
  int64_t offset = 0;          // into the arena, in floats
  int64_t size = 0;            // numel
  bool weight_decay = true;    // false for norms
  bool replicated = true;      // false for routed experts (owned by one rank)
  ParamInit init = ParamInit::kNormal;
  float init_std = 0.02f;
  bool trainable = true;  // false: saved and loaded, never updated by the optimizer
};

class ParamStore {
 public:
  /// Registers a parameter before allocate(); returns its index.
  int add(std::string name, std::vector<int64_t> shape, ParamInit init, float init_std,
          bool weight_decay, bool replicated = true);
  /// Allocates the value and gradient arenas (zero-filled). Call once.
  void allocate(Backend& backend);
  /// Fills every parameter from its own named random stream (see rng_stream_seed).
  void initialize(uint64_t seed);

  float* data(int index) { return data_.data() + info_[static_cast<size_t>(index)].offset; }
  float* grad(int index) { return grad_.data() + info_[static_cast<size_t>(index)].offset; }
  const ParamInfo& info(int index) const { return info_[static_cast<size_t>(index)]; }
  /// -1 if absent.
  int find(const std::string& name) const;
  /// Gives parameter `index` a new name (a routed expert slot that now holds another expert);
  /// the name must not be taken by another parameter.
  void rename(int index, const std::string& name);
  /// Marks a parameter as state the optimizer leaves alone (before allocate()).
  void set_trainable(int index, bool trainable) {
    info_.at(static_cast<size_t>(index)).trainable = trainable;
  }
  const std::vector<ParamInfo>& all() const { return info_; }
  int64_t total_size() const { return total_; }
  /// Floats of the replicated region, which starts the arena.
  int64_t replicated_size() const { return replicated_; }
  float* data_arena() { return data_.data(); }
  float* grad_arena() { return grad_.data(); }
  void zero_grad();

 private:
  Backend* backend_ = nullptr;
  std::vector<ParamInfo> info_;
  std::unordered_map<std::string, int> by_name_;
  int64_t total_ = 0;
  int64_t replicated_ = 0;
  Buffer<float> data_;
  Buffer<float> grad_;
};

}  // namespace mohge
