#include "storage/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "storage/atomic_file.hpp"

namespace mohge {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

int64_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2")
    return 1;
  return 0;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

Error corrupt(const fs::path& path, const std::string& what) {
  return Error{ErrorCode::kDataLoss, path.string() + ": " + what, ""};
}

}  // namespace

void SafetensorsWriter::add_f32(std::string name, std::vector<int64_t> shape, const float* data) {
  tensors_.push_back({{std::move(name), "F32", std::move(shape), 0, 0}, data});
}

void SafetensorsWriter::add_i64(std::string name, std::vector<int64_t> shape, const int64_t* data) {
  tensors_.push_back({{std::move(name), "I64", std::move(shape), 0, 0}, data});
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

Status SafetensorsWriter::write(const fs::path& path) const {
  json header = json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const Pending& t : tensors_) {
    const uint64_t bytes = static_cast<uint64_t>(numel(t.entry.shape) * dtype_size(t.entry.dtype));
    header[t.entry.name] = {{"dtype", t.entry.dtype},
                            {"shape", t.entry.shape},
                            {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  return atomic_write_file(path, [&](std::ostream& out) {
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(header_len >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const Pending& t : tensors_) {
      const int64_t bytes = numel(t.entry.shape) * dtype_size(t.entry.dtype);
      out.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(bytes));
    }
  });
}

Result<SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    return Error{ErrorCode::kNotFound, path.string() + " does not exist", ""};
  const uintmax_t size = fs::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (ec || !in) return Error{ErrorCode::kNotFound, "cannot read " + path.string(), ""};
  if (size < 8) return corrupt(path, "shorter than the 8-byte header length");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(len_bytes[i]) << (8 * i);
  if (header_len > size - 8) {
    return corrupt(path, "header length " + std::to_string(header_len) + " exceeds the file size " +
                             std::to_string(size) + " (truncated?)");
  }
  std::string text(header_len, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_len));
  json header;
  try {
    header = json::parse(text);
  } catch (const json::parse_error& e) {
    return corrupt(path, std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) return corrupt(path, "header is not a JSON object");

  SafetensorsFile file;
  file.path_ = path;
  const uint64_t data_size = size - 8 - header_len;
  try {
    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        for (const auto& [mk, mv] : value.items()) file.metadata_[mk] = mv.get<std::string>();
        continue;
      }
      SafetensorsEntry e;
      e.name = key;
      e.dtype = value.at("dtype").get<std::string>();
      e.shape = value.at("shape").get<std::vector<int64_t>>();
      const auto offsets = value.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2)
        return corrupt(path, "tensor " + key + ": data_offsets needs 2 values");
      e.begin = offsets[0];
      e.end = offsets[1];
      const int64_t elem = dtype_size(e.dtype);
      if (elem == 0) return corrupt(path, "tensor " + key + ": unknown dtype " + e.dtype);
      for (int64_t d : e.shape)
        if (d < 0) return corrupt(path, "tensor " + key + ": negative dimension");
      if (e.end < e.begin || e.end > data_size) {
        return corrupt(path, "tensor " + key + ": data_offsets [" + std::to_string(e.begin) + ", " +
                                 std::to_string(e.end) + ") outside the " +
                                 std::to_string(data_size) + "-byte data section (truncated?)");
      }
      if (static_cast<int64_t>(e.end - e.begin) != numel(e.shape) * elem) {
        return corrupt(path, "tensor " + key + ": " + std::to_string(e.end - e.begin) +
                                 " bytes for shape " + shape_string(e.shape) + " of " + e.dtype);
      }
      file.entries_.push_back(std::move(e));
    }
  } catch (const json::exception& ex) {
    return corrupt(path, std::string("malformed header entry: ") + ex.what());
  }
  // Tensors must not overlap.
  std::vector<const SafetensorsEntry*> sorted;
  for (const auto& e : file.entries_) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->begin < sorted[i - 1]->end && sorted[i]->end > sorted[i]->begin) {
      return corrupt(path,
                     "tensors " + sorted[i - 1]->name + " and " + sorted[i]->name + " overlap");
    }
  }
  file.data_.resize(data_size);
  in.read(file.data_.data(), static_cast<std::streamsize>(data_size));
  if (!in) return corrupt(path, "short read of the data section");
  return file;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return find(name) != nullptr;
}

namespace {

Status read_typed(const SafetensorsFile& f, const std::string& name, const std::string& dtype,
                  const std::vector<int64_t>& expected_shape, void* dst, const char* data) {
  const SafetensorsEntry* e = f.find(name);
  if (e == nullptr) {
    return Error{ErrorCode::kInvalidArgument, f.path().string() + " has no tensor " + name, ""};
  }
  if (e->dtype != dtype) {
    return Error{ErrorCode::kInvalidArgument,
                 f.path().string() + ": tensor " + name + " is " + e->dtype + ", expected " + dtype,
                 ""};
  }
  if (e->shape != expected_shape) {
    return Error{ErrorCode::kInvalidArgument,
                 f.path().string() + ": tensor " + name + " has shape " + shape_string(e->shape) +
                     ", expected " + shape_string(expected_shape),
                 ""};
  }
  std::memcpy(dst, data + e->begin, e->end - e->begin);
  return {};
}

}  // namespace

Status SafetensorsFile::read_f32(const std::string& name, const std::vector<int64_t>& shape,
                                 float* dst) const {
  return read_typed(*this, name, "F32", shape, dst, data_.data());
}

Status SafetensorsFile::read_i64(const std::string& name, const std::vector<int64_t>& shape,
                                 int64_t* dst) const {
  return read_typed(*this, name, "I64", shape, dst, data_.data());
}

}  // namespace mohge
