#include "worker/data/prepare.hpp"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "storage/atomic_file.hpp"
#include "storage/token_file.hpp"
#include "worker/data/tokenizer.hpp"

namespace mohge {

namespace fs = std::filesystem;

namespace {

using Progress = std::function<void(const std::string&)>;

// SentencePiece flags besides the vocabulary size (see prepare.hpp). No input file and no
// model prefix: sentences come from an iterator and the model comes back as bytes, so the
// model holds no paths and is the same whatever the output folder. BPE training is
// single-threaded and, without sampling or shuffling, deterministic.
constexpr const char* kTrainerFlags =
    "--model_type=bpe --character_coverage=1.0 --byte_fallback=true"
    " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --hard_vocab_limit=false"
    " --input_sentence_size=0 --shuffle_input_sentence=false --num_threads=1 --minloglevel=1";

std::string byte_size(uint64_t bytes) {
  if (bytes < 100'000) return std::to_string(bytes) + " bytes";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

uint64_t text_bytes(const std::vector<TextDocument>& docs) {
  uint64_t n = 0;
  for (const TextDocument& d : docs) n += d.text.size();
  return n;
}

// Offset of the first byte that breaks UTF-8 (RFC 3629: no overlong forms, no surrogates,
// nothing above U+10FFFF), or -1 when `s` is valid.
int64_t invalid_utf8_offset(std::string_view s) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = byte(i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return static_cast<int64_t>(i);
    }
    if (i + len > s.size() || byte(i + 1) < lo || byte(i + 1) > hi) return static_cast<int64_t>(i);
    for (size_t k = 2; k < len; ++k)
      if ((byte(i + k) & 0xC0) != 0x80) return static_cast<int64_t>(i);
    i += len;
  }
  return -1;
}

Status validate_options(const PrepareOptions& opt) {
  if (opt.corpus.empty() == opt.text_files.empty()) {
    return invalid_argument("--corpus", "give either --corpus brown or --text FILE..., not both");
  }
  if (!opt.corpus.empty() && opt.corpus != "brown") {
    return invalid_argument("--corpus", "unknown corpus \"" + opt.corpus + "\" (known: brown)");
  }
  if (opt.vocab_size < 256 || opt.vocab_size > 65535) {
    return invalid_argument("--vocab", "must be in [256, 65535] (uint16 token files), got " +
                                           std::to_string(opt.vocab_size));
  }
  std::error_code ec;
  for (const fs::path& f : opt.text_files) {
    if (!fs::is_regular_file(f, ec)) {
      return invalid_argument("--text", f.string() + (fs::exists(f, ec) ? " is not a regular file"
                                                                        : " does not exist"));
    }
  }
  if (opt.out_dir.empty()) return invalid_argument("--out", "is required");
  fs::create_directories(opt.out_dir, ec);
  if (ec || !fs::is_directory(opt.out_dir, ec)) {
    return invalid_argument("--out", "cannot create the folder " + opt.out_dir.string() +
                                         (ec ? ": " + ec.message() : ""));
  }
  const fs::path probe = opt.out_dir / (".write-test-" + std::to_string(::getpid()));
  const bool writable = static_cast<bool>(std::ofstream(probe));
  fs::remove(probe, ec);
  if (!writable) return invalid_argument("--out", "cannot write into " + opt.out_dir.string());
  return {};
}

Result<std::vector<TextDocument>> read_text_files(const std::vector<fs::path>& files) {
  std::vector<TextDocument> docs;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in) return invalid_argument("--text", "cannot read " + f.string());
    std::string text = ss.str();
    if (const int64_t bad = invalid_utf8_offset(text); bad >= 0) {
      return invalid_argument(
          "--text", f.string() + " is not UTF-8 (byte offset " + std::to_string(bad) + ")");
    }
    docs.push_back({f.string(), std::move(text)});
  }
  return docs;
}

// Feeds SentencePiece the non-empty lines of the documents, in order (a trailing '\r' cut).
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<TextDocument>& docs) : docs_(docs) { advance(); }
  bool done() const override { return doc_ >= docs_.size(); }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  void advance() {
    while (doc_ < docs_.size()) {
      const std::string& text = docs_[doc_].text;
      if (pos_ >= text.size()) {
        ++doc_;
        pos_ = 0;
        continue;
      }
      const size_t nl = std::min(text.find('\n', pos_), text.size());
      line_.assign(text, pos_, nl - pos_);
      pos_ = nl + 1;
      if (!line_.empty() && line_.back() == '\r') line_.pop_back();
      if (!line_.empty()) return;
    }
  }

  const std::vector<TextDocument>& docs_;
  size_t doc_ = 0, pos_ = 0;
  std::string line_;
};

// Trains the tokenizer on `train`; writes tokenizer.model and tokenizer.vocab into out_dir.
Status train_tokenizer(const std::vector<TextDocument>& train, int vocab_size,
                       const fs::path& out_dir) {
  LineIterator lines(train);
  std::string model;
  const auto st = sentencepiece::SentencePieceTrainer::Train(
      "--vocab_size=" + std::to_string(vocab_size) + " " + kTrainerFlags, &lines, &model);
  if (!st.ok()) {
    const std::string msg = st.ToString();
    // "... Vocabulary size is smaller than required_chars. 256 vs 298. ..."
    if (const size_t at = msg.find("smaller than required_chars"); at != std::string::npos) {
      const size_t vs = msg.find(" vs ", at);
      const std::string need =
          vs == std::string::npos ? "more" : std::to_string(std::atoi(msg.c_str() + vs + 4));
      return invalid_argument("--vocab", std::to_string(vocab_size) +
                                             " is too small for this text: 3 control pieces, 256 "
                                             "byte pieces and one per distinct character need " +
                                             need);
    }
    return Error{ErrorCode::kInternal, "SentencePiece training failed: " + msg, ""};
  }
  sentencepiece::SentencePieceProcessor sp;
  if (const auto loaded = sp.LoadFromSerializedProto(model); !loaded.ok()) {
    return Error{ErrorCode::kInternal,
                 "SentencePiece made an unreadable model: " + loaded.ToString(), ""};
  }
  if (Status s =
          atomic_write_file(out_dir / "tokenizer.model", [&](std::ostream& out) { out << model; });
      !s.ok()) {
    return s;
  }
  return atomic_write_file(out_dir / "tokenizer.vocab", [&](std::ostream& out) {
    for (int id = 0; id < sp.GetPieceSize(); ++id)
      out << sp.IdToPiece(id) << '\t' << sp.GetScore(id) << '\n';
  });
}

// Every document's ids followed by eos, in document order. Documents are shared out to up to
// hardware_concurrency threads; the result does not depend on the thread count.
std::vector<uint16_t> encode_documents(const Tokenizer& tok,
                                       const std::vector<TextDocument>& docs) {
  std::vector<std::vector<int32_t>> ids(docs.size());
  std::atomic<size_t> next{0};
  const auto work = [&] {
    for (size_t i = next++; i < docs.size(); i = next++) ids[i] = tok.encode(docs[i].text);
  };
  const size_t num_threads =
      std::min<size_t>(docs.size(), std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> helpers;
  for (size_t t = 1; t < num_threads; ++t) helpers.emplace_back(work);
  work();
  for (std::thread& h : helpers) h.join();

  std::vector<uint16_t> out;
  for (const std::vector<int32_t>& doc : ids) {
    out.insert(out.end(), doc.begin(), doc.end());  // ids < vocab_size <= 65535
    out.push_back(static_cast<uint16_t>(tok.eos_id()));
  }
  return out;
}

}  // namespace

DocumentSplit split_documents(std::vector<TextDocument> docs) {
  std::sort(docs.begin(), docs.end(),
            [](const TextDocument& a, const TextDocument& b) { return a.name < b.name; });
  DocumentSplit split;
  if (docs.size() == 1) {
    std::vector<std::string> lines;
    std::istringstream in(docs[0].text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    const size_t num_val = std::max<size_t>(1, lines.size() / 10);
    const size_t cut = lines.size() > num_val ? lines.size() - num_val : 0;
    TextDocument train{docs[0].name, {}}, val{docs[0].name, {}};
    for (size_t i = 0; i < lines.size(); ++i) (i < cut ? train.text : val.text) += lines[i] + "\n";
    split.train.push_back(std::move(train));
    split.val.push_back(std::move(val));
    return split;
  }
  for (size_t i = 0; i < docs.size(); ++i) {
    const bool to_val = docs.size() >= 10 ? i % 10 == 9 : i + 1 == docs.size();
    (to_val ? split.val : split.train).push_back(std::move(docs[i]));
  }
  return split;
}

Result<PrepareSummary> prepare_dataset(const PrepareOptions& opt, const Progress& progress) {
  const auto say = [&](const std::string& m) {
    if (progress) progress(m);
  };
  if (Status s = validate_options(opt); !s.ok()) return s.error();

  Result<std::vector<TextDocument>> docs = Error{};
  if (opt.corpus == "brown") {
    const fs::path dir = opt.brown_dir.empty() ? brown_find_corpus_dir() : opt.brown_dir;
    say("reading the Brown corpus from " +
        (dir.empty() ? std::string("(not found)") : dir.string()));
    docs = brown_read_corpus(dir);
  } else {
    say("reading " + std::to_string(opt.text_files.size()) + " text file(s)");
    docs = read_text_files(opt.text_files);
  }
  if (!docs.ok()) return docs.error();
  say("read " + std::to_string(docs.value().size()) + " documents, " +
      byte_size(text_bytes(docs.value())));
  const DocumentSplit split = split_documents(std::move(docs).value());
  const uint64_t train_bytes = text_bytes(split.train);
  say("split: " + std::to_string(split.train.size()) + " training documents (" +
      byte_size(train_bytes) + "), " + std::to_string(split.val.size()) +
      " validation documents (" + byte_size(text_bytes(split.val)) + ")");
  const bool has_text = std::any_of(split.train.begin(), split.train.end(), [](const auto& d) {
    return d.text.find_first_not_of(" \t\r\n") != std::string::npos;
  });
  if (!has_text) {
    return invalid_argument("--text",
                            "the training part has no text (a single file needs at least 2 "
                            "lines: its last tenth, at least one line, is the validation part)");
  }

  say("training a SentencePiece BPE tokenizer (vocabulary " + std::to_string(opt.vocab_size) +
      ") on the training part");
  if (Status s = train_tokenizer(split.train, opt.vocab_size, opt.out_dir); !s.ok())
    return s.error();
  PrepareSummary summary;
  summary.tokenizer = opt.out_dir / "tokenizer.model";
  Result<Tokenizer> tok = Tokenizer::load(summary.tokenizer);
  if (!tok.ok()) return tok.error();
  summary.vocab_size = tok.value().vocab_size();
  say("tokenizer: " + std::to_string(summary.vocab_size) + " pieces, " +
      summary.tokenizer.string());

  say("encoding");
  const std::vector<uint16_t> train_tokens = encode_documents(tok.value(), split.train);
  const std::vector<uint16_t> val_tokens = encode_documents(tok.value(), split.val);
  summary.train_documents = static_cast<int>(split.train.size());
  summary.val_documents = static_cast<int>(split.val.size());
  summary.train_tokens = static_cast<int64_t>(train_tokens.size());
  summary.val_tokens = static_cast<int64_t>(val_tokens.size());
  summary.train_bin = opt.out_dir / "train.bin";
  summary.val_bin = opt.out_dir / "val.bin";
  say("writing " + std::to_string(summary.train_tokens) + " training tokens to " +
      summary.train_bin.string() + " and " + std::to_string(summary.val_tokens) +
      " validation tokens to " + summary.val_bin.string());
  if (Status s = token_file_write(summary.train_bin, train_tokens); !s.ok()) return s.error();
  if (Status s = token_file_write(summary.val_bin, val_tokens); !s.ok()) return s.error();
  return summary;
}

}  // namespace mohge
