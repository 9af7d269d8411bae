// `mohge prepare-data`: a corpus → a SentencePiece tokenizer trained on its training part and
// train.bin / val.bin in the llm.c token layout (storage/token_file.hpp).
//
// Split (deterministic, by document): documents sorted by name; document i goes to
// validation when i % 10 == 9, to training otherwise. With fewer than ten documents the
// last document is the validation one; a single document is split by lines, its last tenth
// (at least one line) going to validation. Every document ends with the end-of-sequence id.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "api/result.hpp"
#include "worker/data/brown.hpp"

namespace mohge {

struct PrepareOptions {
  std::string corpus;                             // "brown", or empty with text_files
  std::vector<std::filesystem::path> text_files;  // UTF-8 text, one document per file
  std::filesystem::path brown_dir;                // default: brown_find_corpus_dir()
  std::filesystem::path out_dir;
  int vocab_size = 4096;
};

struct PrepareSummary {
  int64_t train_tokens = 0, val_tokens = 0;
  int train_documents = 0, val_documents = 0;
  int vocab_size = 0;  // pieces in the trained model (can be below the request for tiny text)
  std::filesystem::path tokenizer, train_bin, val_bin;
};

/// Splits documents into (train, validation) by the rule above.
void split_documents(std::vector<TextDocument> docs, std::vector<TextDocument>& train,
                     std::vector<TextDocument>& val);

/// Runs the whole preparation; `progress` receives one line per stage.
Result<PrepareSummary> prepare_dataset(const PrepareOptions& options,
                                       const std::function<void(const std::string&)>& progress);

}  // namespace mohge
