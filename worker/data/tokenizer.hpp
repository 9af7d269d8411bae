// A SentencePiece model (trained by `mohge prepare-data`). Thread-compatible: const methods
// may be called concurrently.
#pragma once

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
  /// Loads a .model file; the error names the path.
  static Result<Tokenizer> load(const std::filesystem::path& model);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  int vocab_size() const;
  int eos_id() const;

 private:
  Tokenizer();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace mohge
