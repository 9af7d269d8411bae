#include "storage/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

#include "storage/atomic_file.hpp"

namespace mohge {

namespace fs = std::filesystem;
using nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swapping");

namespace {

constexpr const char* kMetadataKey = "__metadata__";
// The reference implementation refuses larger headers; so do we (a corrupt length field
// must not make us allocate gigabytes).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Bytes per element, 0 for an unknown dtype.
int64_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2")
    return 1;
  return 0;
}

// prod(shape) × element_size, or nullopt when a dimension is negative or the product
// overflows int64.
std::optional<int64_t> byte_count(const std::vector<int64_t>& shape, int64_t element_size) {
  int64_t n = element_size;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return std::nullopt;
    n *= d;
  }
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

// One tensor entry of the header, checked against the data section size. The error text
// names the tensor; the caller prefixes the path.
Result<SafetensorsEntry> parse_entry(const std::string& name, const json& value,
                                     uint64_t data_size) {
  auto bad = [&](const std::string& what) {
    return Error{ErrorCode::kDataLoss, "tensor " + name + ": " + what, ""};
  };
  if (!value.is_object()) return bad("entry is not a JSON object");
  SafetensorsEntry e;
  e.name = name;
  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) return bad("needs a string \"dtype\"");
  e.dtype = dtype->get<std::string>();
  const int64_t element_size = dtype_size(e.dtype);
  if (element_size == 0) return bad("unknown dtype " + e.dtype);

  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) return bad("needs a \"shape\" array");
  for (const json& d : *shape) {
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return bad("shape " + shape->dump() + " must hold non-negative integers");
    }
    e.shape.push_back(d.get<int64_t>());
  }

  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return bad("needs \"data_offsets\": [begin, end] with non-negative integers");
  }
  e.begin = (*offsets)[0].get<uint64_t>();
  e.end = (*offsets)[1].get<uint64_t>();
  if (e.end < e.begin || e.end > data_size) {
    return bad("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
               ") outside the " + std::to_string(data_size) + "-byte data section (truncated?)");
  }
  const std::optional<int64_t> bytes = byte_count(e.shape, element_size);
  if (!bytes) return bad("shape " + shape_string(e.shape) + " is too large");
  if (e.end - e.begin != static_cast<uint64_t>(*bytes)) {
    return bad(std::to_string(e.end - e.begin) + " bytes, but shape " + shape_string(e.shape) +
               " of " + e.dtype + " needs " + std::to_string(*bytes));
  }
  return e;
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
  auto refuse = [&](const std::string& what) {
    return invalid_argument("", "cannot write " + path.string() + ": " + what);
  };
  json header = json::object();
  if (!metadata_.empty()) header[kMetadataKey] = metadata_;
  std::set<std::string> names;
  std::vector<uint64_t> sizes;  // bytes of each tensor, in order
  uint64_t offset = 0;
  for (const Pending& t : tensors_) {
    const std::string& name = t.entry.name;
    if (name.empty()) return refuse("a tensor has an empty name");
    if (name == kMetadataKey) return refuse("\"__metadata__\" is reserved, not a tensor name");
    if (!names.insert(name).second) return refuse("tensor " + name + " is added twice");
    const std::optional<int64_t> bytes = byte_count(t.entry.shape, dtype_size(t.entry.dtype));
    if (!bytes) {
      return refuse("tensor " + name + " has shape " + shape_string(t.entry.shape) +
                    " (a negative dimension or too many elements)");
    }
    if (*bytes > 0 && t.data == nullptr) return refuse("tensor " + name + " has no data");
    header[name] = {{"dtype", t.entry.dtype},
                    {"shape", t.entry.shape},
                    {"data_offsets", {offset, offset + static_cast<uint64_t>(*bytes)}}};
    offset += static_cast<uint64_t>(*bytes);
    sizes.push_back(static_cast<uint64_t>(*bytes));
  }
  std::string text;
  try {
    text = header.dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::type_error& e) {
    return refuse(std::string("tensor names and metadata must be UTF-8 (") + e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  return atomic_write_file(path, [&](std::ostream& out) {
    char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((header_len >> (8 * i)) & 0xFF);
    out.write(len, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out.write(static_cast<const char*>(tensors_[i].data), static_cast<std::streamsize>(sizes[i]));
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
  if (size < 8) return corrupt(path, "shorter than the 8-byte header length (truncated?)");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(len_bytes[i]) << (8 * i);
  if (header_len > size - 8) {
    return corrupt(path, "header length " + std::to_string(header_len) + " exceeds the file size " +
                             std::to_string(size) + " (truncated?)");
  }
  if (header_len > kMaxHeaderBytes) {
    return corrupt(path, "header length " + std::to_string(header_len) +
                             " exceeds the format's limit of " + std::to_string(kMaxHeaderBytes));
  }
  std::string text(header_len, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_len));
  if (!in) return corrupt(path, "short read of the header");
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {  // parse errors, and numbers that overflow
    return corrupt(path, std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) return corrupt(path, "header is not a JSON object");

  SafetensorsFile file;
  file.path_ = path;
  const uint64_t data_size = size - 8 - header_len;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) return corrupt(path, "__metadata__ is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) return corrupt(path, "__metadata__ value " + mk + " is not a string");
        file.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    Result<SafetensorsEntry> e = parse_entry(key, value, data_size);
    if (!e.ok()) return corrupt(path, e.error().message);
    file.entries_.push_back(std::move(e).value());
  }

  // The tensors tile the data section: sorted by offsets, each starts where the last ended.
  std::sort(file.entries_.begin(), file.entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
            });
  uint64_t covered = 0;
  for (size_t i = 0; i < file.entries_.size(); ++i) {
    const SafetensorsEntry& e = file.entries_[i];
    if (e.begin < covered) {
      return corrupt(path, "tensors " + file.entries_[i - 1].name + " and " + e.name + " overlap");
    }
    if (e.begin > covered) {
      return corrupt(path, "data section bytes [" + std::to_string(covered) + ", " +
                               std::to_string(e.begin) + ") belong to no tensor");
    }
    covered = e.end;
  }
  if (covered != data_size) {
    return corrupt(path, "the tensors cover " + std::to_string(covered) + " of the " +
                             std::to_string(data_size) + " data section bytes");
  }
  for (size_t i = 0; i < file.entries_.size(); ++i) file.index_[file.entries_[i].name] = i;

  file.data_.resize(data_size);
  in.read(file.data_.data(), static_cast<std::streamsize>(data_size));
  if (!in) return corrupt(path, "short read of the data section");
  return file;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
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
  if (e->end > e->begin) std::memcpy(dst, data + e->begin, e->end - e->begin);
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
