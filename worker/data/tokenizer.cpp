#include "worker/data/tokenizer.hpp"

#include <sentencepiece_processor.h>

namespace mohge {

namespace fs = std::filesystem;

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::load(const fs::path& model) {
  std::error_code ec;
  if (!fs::is_regular_file(model, ec)) {
    return Error{ErrorCode::kNotFound,
                 "tokenizer " + model.string() + " does not exist (run `mohge prepare-data`?)", ""};
  }
  Tokenizer t;
  const auto status = t.sp_->Load(model.string());
  if (!status.ok()) {
    return Error{ErrorCode::kDataLoss,
                 "cannot load tokenizer " + model.string() + ": " + status.ToString(), ""};
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  const std::vector<int> ids = sp_->EncodeAsIds(text);
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  // SentencePiece refuses a whole sequence (returns "") for one invalid id.
  const int n = vocab_size();
  std::vector<int> valid(ids.size());
  for (size_t i = 0; i < ids.size(); ++i)
    valid[i] = ids[i] >= 0 && ids[i] < n ? ids[i] : sp_->unk_id();
  return sp_->DecodeIds(valid);
}

int Tokenizer::vocab_size() const {
  return sp_->GetPieceSize();
}

int Tokenizer::eos_id() const {
  return sp_->eos_id();
}

}  // namespace mohge
