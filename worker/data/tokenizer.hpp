// A SentencePiece model (trained by `mohge prepare-data`). Thread-compatible: const methods
// may be called concurrently; load() is the only way to make one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "api/result.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mohge {

class Tokenizer {
 public:
  /// Loads a .model file. Errors name the path: kNotFound when it does not exist, kDataLoss
  /// when it is not a SentencePiece model.
  static Result<Tokenizer> load(const std::filesystem::path& model);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  /// Token ids of `text` (UTF-8), each in [0, vocab_size()); no bos/eos added.
  std::vector<int32_t> encode(std::string_view text) const;
  /// Text of `ids`; an id outside [0, vocab_size()) decodes as the unknown piece (" ⁇ "),
  /// as SentencePiece shows unknown input.
  std::string decode(const std::vector<int32_t>& ids) const;
  /// Number of pieces, byte and control pieces included.
  int vocab_size() const;
  /// The end-of-sequence id that separates documents in token files.
  int eos_id() const;

 private:
  Tokenizer();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace mohge
