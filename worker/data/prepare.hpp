// `mohge prepare-data`: a corpus → a SentencePiece tokenizer trained on its training part and
// train.bin / val.bin in the llm.c token layout (storage/token_file.hpp).
//
// Documents: the Brown files (brown.hpp), or each --text file as one document (UTF-8,
// checked). Split (deterministic, by document): documents sorted by name; document i goes to
// validation when i % 10 == 9, to training otherwise. With 2 to 9 documents the last one is
// the validation document (i % 10 == 9 would pick none); a single document is split by lines,
// its last tenth (at least one line) going to validation.
//
// Tokenizer: SentencePiece BPE on the non-empty lines of the training documents only,
// character_coverage 1.0 with byte fallback (any UTF-8 text encodes, nothing maps to unk),
// ids unk 0, bos 1, eos 2, no pad; the default nmt_nfkc normalisation (so runs of whitespace,
// newlines included, decode as one space). The same input gives byte-identical outputs.
//
// Token files: each document's text encoded whole and followed by the eos id (2).
//
// Output folder: tokenizer.model (load with Tokenizer::load), tokenizer.vocab (one
// "piece<TAB>score" line per id, for people), train.bin, val.bin. Each is written atomically.
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
  std::filesystem::path out_dir;                  // created if missing
  int vocab_size = 4096;                          // in [256, 65535] (uint16 token ids)
};

struct PrepareSummary {
  int64_t train_tokens = 0, val_tokens = 0;  // eos tokens included
  int train_documents = 0, val_documents = 0;
  int vocab_size = 0;  // pieces in the trained model (can be below the request for tiny text)
  std::filesystem::path tokenizer, train_bin, val_bin;
};

struct DocumentSplit {
  std::vector<TextDocument> train, val;
};

/// Splits documents into training and validation by the rule above. Never fails; either
/// part may be empty (no documents, or a single document of one line).
DocumentSplit split_documents(std::vector<TextDocument> docs);

/// Runs the whole preparation; `progress` (may be empty) receives one line per stage, with
/// counts. Errors: kInvalidArgument naming the flag ("--corpus", "--text", "--vocab",
/// "--out") for bad options, including a --vocab too small for the text's characters;
/// kNotFound ("--brown-dir") when the Brown corpus is missing; others from SentencePiece or
/// writing. Runs SentencePiece training on the calling thread and encodes on up to
/// hardware_concurrency threads; safe to call from one thread at a time (SentencePiece's log
/// level is process-wide).
Result<PrepareSummary> prepare_dataset(const PrepareOptions& options,
                                       const std::function<void(const std::string&)>& progress);

}  // namespace mohge
