#include "worker/train/batches.hpp"

#include <numeric>
#include <string>

#include "kernels/check.hpp"
#include "storage/token_file.hpp"
#include "worker/model/rng.hpp"

namespace mohge {

Result<TokenWindows> TokenWindows::load(const std::filesystem::path& path, int64_t seq,
                                        int64_t vocab_size, const std::string& field) {
  Result<std::vector<uint16_t>> tokens = token_file_read(path);
  if (!tokens.ok()) {
    Error e = tokens.error();
    e.field = field;
    return e;
  }
  const std::vector<uint16_t>& t = tokens.value();
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] >= vocab_size) {
      return invalid_argument(field, path.string() + ": token " + std::to_string(i) + " has id " +
                                         std::to_string(t[i]) + ", not below model.vocab_size " +
                                         std::to_string(vocab_size));
    }
  }
  if (static_cast<int64_t>(t.size()) < seq + 1) {
    return invalid_argument(
        field, path.string() + " holds " + std::to_string(t.size()) +
                   " tokens; one window needs model.seq_len + 1 = " + std::to_string(seq + 1));
  }
  return TokenWindows(std::move(tokens).value(), seq);
}

TokenWindows::TokenWindows(std::vector<uint16_t> tokens, int64_t seq)
    : tokens_(std::move(tokens)),
      seq_(seq),
      num_windows_((static_cast<int64_t>(tokens_.size()) - 1) / seq) {}

void TokenWindows::window(int64_t k, int32_t* inputs, int32_t* targets) const {
  MOHGE_CHECK(k >= 0 && k < num_windows_, "window " << k << " of " << num_windows_);
  const uint16_t* w = tokens_.data() + k * seq_;
  for (int64_t i = 0; i < seq_; ++i) {
    inputs[i] = w[i];
    targets[i] = w[i + 1];
  }
}

TrainBatches::TrainBatches(const TokenWindows& windows, int64_t batch, uint64_t seed)
    : windows_(windows), batch_(batch), seed_(seed) {
  shuffle();
}

void TrainBatches::shuffle() {
  order_.resize(static_cast<size_t>(windows_.num_windows()));
  std::iota(order_.begin(), order_.end(), int64_t{0});
  Rng rng(rng_stream_seed(seed_, "data-epoch-" + std::to_string(pos_.epoch)));
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
}

void TrainBatches::set_position(BatchPosition pos) {
  pos_ = pos;
  shuffle();
}

void TrainBatches::next(std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  const int64_t seq = windows_.seq();
  inputs.resize(static_cast<size_t>(batch_ * seq));
  targets.resize(static_cast<size_t>(batch_ * seq));
  for (int64_t b = 0; b < batch_; ++b) {
    if (pos_.index >= windows_.num_windows()) {  // epoch boundary: a new permutation
      ++pos_.epoch;
      pos_.index = 0;
      shuffle();
    }
    const int64_t k = order_[static_cast<size_t>(pos_.index++)];
    windows_.window(k, inputs.data() + b * seq, targets.data() + b * seq);
  }
}

std::vector<int64_t> TokenWindows::token_counts(int64_t vocab) const {
  std::vector<int64_t> counts(static_cast<size_t>(vocab), 0);
  for (uint16_t t : tokens_)
    if (t < vocab) ++counts[t];
  return counts;
}

}  // namespace mohge
