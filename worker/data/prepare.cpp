#include "worker/data/prepare.hpp"

#include <sentencepiece_trainer.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "storage/token_file.hpp"
#include "worker/data/tokenizer.hpp"

namespace mohge {

namespace fs = std::filesystem;

namespace {

// Offset of the first byte that breaks UTF-8, or -1 when the text is valid.
int64_t invalid_utf8_offset(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + static_cast<size_t>(len) > s.size()) return static_cast<int64_t>(i);
    for (int k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) >> 6) != 0x2)
        return static_cast<int64_t>(i);
    i += static_cast<size_t>(len);
  }
  return -1;
}

Result<std::vector<TextDocument>> read_text_files(const std::vector<fs::path>& files) {
  std::vector<TextDocument> docs;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) return invalid_argument("--text", "cannot read " + f.string());
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    if (const int64_t bad = invalid_utf8_offset(text); bad >= 0) {
      return invalid_argument(
          "--text", f.string() + " is not UTF-8 (byte offset " + std::to_string(bad) + ")");
    }
    docs.push_back({f.string(), std::move(text)});
  }
  return docs;
}

}  // namespace

void split_documents(std::vector<TextDocument> docs, std::vector<TextDocument>& train,
                     std::vector<TextDocument>& val) {
  std::sort(docs.begin(), docs.end(),
            [](const TextDocument& a, const TextDocument& b) { return a.name < b.name; });
  train.clear();
  val.clear();
  if (docs.size() == 1) {
    std::vector<std::string> lines;
    std::istringstream in(docs[0].text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    const size_t num_val = std::max<size_t>(1, lines.size() / 10);
    const size_t cut = lines.size() > num_val ? lines.size() - num_val : 0;
    TextDocument t{docs[0].name, {}}, v{docs[0].name, {}};
    for (size_t i = 0; i < lines.size(); ++i) (i < cut ? t.text : v.text) += lines[i] + "\n";
    train.push_back(std::move(t));
    val.push_back(std::move(v));
    return;
  }
  for (size_t i = 0; i < docs.size(); ++i) {
    const bool to_val = docs.size() >= 10 ? i % 10 == 9 : i + 1 == docs.size();
    (to_val ? val : train).push_back(std::move(docs[i]));
  }
}

Result<PrepareSummary> prepare_dataset(const PrepareOptions& opt,
                                       const std::function<void(const std::string&)>& progress) {
  auto say = [&](const std::string& m) {
    if (progress) progress(m);
  };
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
  if (opt.out_dir.empty()) return invalid_argument("--out", "is required");
  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  if (ec)
    return invalid_argument("--out", "cannot create " + opt.out_dir.string() + ": " + ec.message());

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
  std::vector<TextDocument> train, val;
  split_documents(std::move(docs).value(), train, val);
  say(std::to_string(train.size()) + " training and " + std::to_string(val.size()) +
      " validation documents");

  // SentencePiece learns from the training text only, one sentence (line) per input line.
  const fs::path sp_input = opt.out_dir / ".tokenizer-train.txt";
  {
    std::ofstream out(sp_input, std::ios::trunc);
    for (const TextDocument& d : train) out << d.text << (d.text.ends_with('\n') ? "" : "\n");
    if (!out) return Error{ErrorCode::kInternal, "cannot write " + sp_input.string(), ""};
  }
  const fs::path prefix = opt.out_dir / "tokenizer";
  say("training a SentencePiece BPE tokenizer (vocabulary " + std::to_string(opt.vocab_size) + ")");
  std::ostringstream args;
  args << "--input=" << sp_input.string() << " --model_prefix=" << prefix.string()
       << " --vocab_size=" << opt.vocab_size
       << " --model_type=bpe --character_coverage=1.0 --byte_fallback=true"
       << " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --hard_vocab_limit=false"
       << " --input_sentence_size=0 --shuffle_input_sentence=false --num_threads=1"
       << " --minloglevel=1";
  const auto st = sentencepiece::SentencePieceTrainer::Train(args.str());
  fs::remove(sp_input, ec);
  if (!st.ok()) {
    return Error{ErrorCode::kInternal, "SentencePiece training failed: " + st.ToString(), ""};
  }
  Result<Tokenizer> tok = Tokenizer::load(prefix.string() + ".model");
  if (!tok.ok()) return tok.error();

  PrepareSummary summary;
  summary.vocab_size = tok.value().vocab_size();
  summary.tokenizer = prefix.string() + ".model";
  summary.train_documents = static_cast<int>(train.size());
  summary.val_documents = static_cast<int>(val.size());
  auto encode_all = [&](const std::vector<TextDocument>& part) {
    std::vector<uint16_t> out;
    for (const TextDocument& d : part) {
      for (int32_t id : tok.value().encode(d.text)) out.push_back(static_cast<uint16_t>(id));
      out.push_back(static_cast<uint16_t>(tok.value().eos_id()));
    }
    return out;
  };
  say("encoding");
  const std::vector<uint16_t> train_tokens = encode_all(train);
  const std::vector<uint16_t> val_tokens = encode_all(val);
  summary.train_tokens = static_cast<int64_t>(train_tokens.size());
  summary.val_tokens = static_cast<int64_t>(val_tokens.size());
  summary.train_bin = opt.out_dir / "train.bin";
  summary.val_bin = opt.out_dir / "val.bin";
  if (Status s = token_file_write(summary.train_bin, train_tokens); !s.ok()) return s.error();
  if (Status s = token_file_write(summary.val_bin, val_tokens); !s.ok()) return s.error();
  return summary;
}

}  // namespace mohge
