#include "worker/data/tokenizer.hpp"

#include <sentencepiece_processor.h>

namespace mohge {

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::load(const std::filesystem::path& model) {
  Tokenizer t;
  const auto status = t.sp_->Load(model.string());
  if (!status.ok()) {
    return Error{ErrorCode::kNotFound,
                 "cannot load tokenizer " + model.string() + ": " + status.ToString(), ""};
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  const std::vector<int> ids = sp_->EncodeAsIds(text);
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  return sp_->DecodeIds(std::vector<int>(ids.begin(), ids.end()));
}

int Tokenizer::vocab_size() const {
  return sp_->GetPieceSize();
}
int Tokenizer::eos_id() const {
  return sp_->eos_id();
}

}  // namespace mohge
