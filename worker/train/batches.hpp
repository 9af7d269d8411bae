// Batches of next-token windows from a token file.
//
// A window k is the seq+1 tokens starting at token k·seq (inputs: the first seq, targets:
// the last seq). Training visits all windows of an epoch in a permutation drawn from
// (seed, epoch), B windows per batch; evaluation reads windows 0, 1, 2, … in order.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "api/result.hpp"

namespace mohge {

struct BatchPosition {
  int64_t epoch = 0;
  int64_t index = 0;  // windows of this epoch already used
};

class TokenWindows {
 public:
  /// Loads a token file and checks every id is below vocab_size. `field` names the spec
  /// field the path came from, for error messages (e.g. "data.train").
  static Result<TokenWindows> load(const std::filesystem::path& path, int64_t seq,
                                   int64_t vocab_size, const std::string& field);
  TokenWindows(std::vector<uint16_t> tokens, int64_t seq);

  int64_t num_windows() const { return num_windows_; }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t seq() const { return seq_; }
  /// Copies window k into inputs (seq) and targets (seq).
  void window(int64_t k, int32_t* inputs, int32_t* targets) const;
  /// Occurrences of every token id below `vocab` in the file.
  std::vector<int64_t> token_counts(int64_t vocab) const;

 private:
  std::vector<uint16_t> tokens_;
  int64_t seq_;
  int64_t num_windows_;
};

/// Shuffled training batches; the position is part of the trainer state.
class TrainBatches {
 public:
  TrainBatches(const TokenWindows& windows, int64_t batch, uint64_t seed);
  /// Fills inputs and targets, each (B, T).
  void next(std::vector<int32_t>& inputs, std::vector<int32_t>& targets);
  BatchPosition position() const { return pos_; }
  void set_position(BatchPosition pos);

 private:
  void shuffle();

  const TokenWindows& windows_;
  int64_t batch_;
  uint64_t seed_;
  BatchPosition pos_;
  std::vector<int64_t> order_;  // (num_windows) this epoch's permutation
};

}  // namespace mohge
