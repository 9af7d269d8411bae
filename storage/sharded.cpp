#include "storage/sharded.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "storage/atomic_file.hpp"

namespace mohge {

namespace fs = std::filesystem;
using nlohmann::json;

std::string shard_file_name(const std::string& stem, int shard, int num_shards) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "-%05d-of-%05d.safetensors", shard + 1, num_shards);
  return stem + buf;
}

Status shard_index_write(const fs::path& path, const std::map<std::string, std::string>& weight_map,
                         int64_t total_size, const std::map<std::string, std::string>& metadata) {
  json meta = metadata;
  meta["total_size"] = total_size;
  const std::string text = json{{"metadata", meta}, {"weight_map", weight_map}}.dump(2) + "\n";
  return atomic_write_file(path, [&](std::ostream& out) { out << text; });
}

TensorSource::TensorSource(TensorSource&&) noexcept = default;
TensorSource& TensorSource::operator=(TensorSource&&) noexcept = default;
TensorSource::~TensorSource() = default;

Result<TensorSource> TensorSource::open(const fs::path& dir, const std::string& stem) {
  TensorSource src;
  src.dir_ = dir;
  std::error_code file_ec;
  if (fs::is_regular_file(dir, file_ec)) {
    if (stem != "model") {
      return Error{ErrorCode::kInvalidArgument,
                   dir.string() + " is one model file; it holds no " + stem +
                       " (give the checkpoint folder)",
                   ""};
    }
    Result<SafetensorsFile> file = SafetensorsFile::open(dir);
    if (!file.ok()) return file.error();
    src.metadata_ = file.value().metadata();
    src.files_[dir.filename().string()] =
        std::make_unique<SafetensorsFile>(std::move(file).value());
    return src;
  }
  const fs::path index = dir / (stem + ".safetensors.index.json");
  std::error_code ec;
  if (fs::exists(index, ec)) {
    std::ifstream in(index);
    try {
      const json j = json::parse(in);
      for (const auto& [k, v] : j.at("metadata").items())
        src.metadata_[k] = v.is_string() ? v.get<std::string>() : v.dump();
      src.weight_map_ = j.at("weight_map").get<std::map<std::string, std::string>>();
    } catch (const json::exception& e) {
      return Error{ErrorCode::kDataLoss, index.string() + " is unreadable: " + e.what(), ""};
    }
    // A sharded checkpoint maps at least one tensor; the empty map is what a single file
    // looks like to the rest of this class, so it is refused here.
    if (src.weight_map_.empty()) {
      return Error{ErrorCode::kDataLoss,
                   index.string() + " maps no tensors (\"weight_map\" is empty)", ""};
    }
    for (const auto& [name, file] : src.weight_map_) {
      if (file.find('/') != std::string::npos || !fs::exists(dir / file, ec)) {
        return Error{ErrorCode::kDataLoss,
                     index.string() + " maps " + name + " to " + file + ", which is missing", ""};
      }
    }
    return src;
  }
  Result<SafetensorsFile> single = SafetensorsFile::open(dir / (stem + ".safetensors"));
  if (!single.ok()) return single.error();
  src.metadata_ = single.value().metadata();
  src.files_[stem + ".safetensors"] = std::make_unique<SafetensorsFile>(std::move(single).value());
  return src;
}

std::vector<std::string> TensorSource::names() const {
  std::vector<std::string> out;
  if (sharded()) {
    for (const auto& [name, file] : weight_map_) out.push_back(name);
  } else {
    for (const auto& e : files_.begin()->second->entries()) out.push_back(e.name);
    std::sort(out.begin(), out.end());
  }
  return out;
}

Status TensorSource::read_f32(const std::string& name, const std::vector<int64_t>& shape,
                              float* dst) {
  if (!sharded()) return files_.begin()->second->read_f32(name, shape, dst);
  auto it = weight_map_.find(name);
  if (it == weight_map_.end()) {
    return Error{ErrorCode::kInvalidArgument,
                 "the checkpoint in " + dir_.string() + " has no tensor " + name, ""};
  }
  auto f = files_.find(it->second);
  if (f == files_.end()) {
    Result<SafetensorsFile> opened = SafetensorsFile::open(dir_ / it->second);
    if (!opened.ok()) return opened.error();
    f = files_.emplace(it->second, std::make_unique<SafetensorsFile>(std::move(opened).value()))
            .first;
  }
  return f->second->read_f32(name, shape, dst);
}

Status consolidate_safetensors(const std::filesystem::path& dir, const std::string& stem,
                               const std::filesystem::path& out) {
  Result<TensorSource> src = TensorSource::open(dir, stem);
  if (!src.ok()) return src.error();
  // Shapes come from the shard headers; the data is read tensor by tensor.
  std::vector<std::filesystem::path> files;
  if (src.value().sharded()) {
    std::map<std::string, bool> seen;
    for (const auto& [name, file] : src.value().weight_map_view())
      if (!seen[file]) {
        seen[file] = true;
        files.push_back(dir / file);
      }
  } else {
    files.push_back(dir / (stem + ".safetensors"));
  }
  SafetensorsWriter writer;
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<int64_t>> i64;
  std::vector<SafetensorsFile> opened;
  opened.reserve(files.size());
  for (const auto& f : files) {
    Result<SafetensorsFile> file = SafetensorsFile::open(f);
    if (!file.ok()) return file.error();
    opened.push_back(std::move(file).value());
  }
  size_t count = 0;
  for (const SafetensorsFile& file : opened) count += file.entries().size();
  f32.reserve(count);
  i64.reserve(count);
  for (const SafetensorsFile& file : opened) {
    for (const SafetensorsEntry& e : file.entries()) {
      int64_t n = 1;
      for (int64_t d : e.shape) n *= d;
      if (e.dtype == "F32") {
        f32.emplace_back(static_cast<size_t>(n));
        if (Status s = file.read_f32(e.name, e.shape, f32.back().data()); !s.ok()) return s;
        writer.add_f32(e.name, e.shape, f32.back().data());
      } else if (e.dtype == "I64") {
        i64.emplace_back(static_cast<size_t>(n));
        if (Status s = file.read_i64(e.name, e.shape, i64.back().data()); !s.ok()) return s;
        writer.add_i64(e.name, e.shape, i64.back().data());
      } else {
        return Error{ErrorCode::kDataLoss,
                     file.path().string() + ": tensor " + e.name + " has dtype " + e.dtype +
                         " (only F32 and I64 are consolidated)",
                     ""};
      }
    }
  }
  for (const auto& [k, v] : src.value().metadata())
    if (k != "total_size") writer.set_metadata(k, v);
  return writer.write(out);
}

}  // namespace mohge
