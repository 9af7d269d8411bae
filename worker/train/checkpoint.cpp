#include "worker/train/checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "storage/safetensors.hpp"

namespace mohge {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kTrainerStateVersion = 1;

// Host copies of an arena, so writers can borrow stable pointers.
std::vector<float> to_host(Backend& be, const float* data, int64_t count) {
  std::vector<float> host(static_cast<size_t>(count));
  be.copy_to_host(host.data(), data, sizeof(float) * host.size());
  return host;
}

Status write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return Error{ErrorCode::kInternal, "cannot write " + path.string(), ""};
  return {};
}

Status io_error(const std::string& what, const std::error_code& ec) {
  return Error{ErrorCode::kInternal, what + ": " + ec.message(), ""};
}

}  // namespace

std::string checkpoint_folder_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

Result<fs::path> checkpoint_write(const fs::path& dir, Transformer& model, AdamW& optimizer,
                                  const JobSpec& spec, const TrainerState& state, int keep,
                                  const std::vector<fs::path>& extra_files) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error("cannot create " + dir.string(), ec).error();
  const fs::path final_dir = dir / checkpoint_folder_name(state.step);
  const fs::path tmp_dir =
      dir / (".tmp-" + checkpoint_folder_name(state.step) + "-" + std::to_string(::getpid()));
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  if (ec) return io_error("cannot create " + tmp_dir.string(), ec).error();

  Backend& be = model.backend();
  ParamStore& params = model.params();
  const std::string spec_json = job_spec_to_json(spec).dump();
  const std::vector<float> weights = to_host(be, params.data_arena(), params.total_size());
  const std::vector<float> m = to_host(be, optimizer.exp_avg(), params.total_size());
  const std::vector<float> v = to_host(be, optimizer.exp_avg_sq(), params.total_size());

  SafetensorsWriter model_file, optim_file;
  for (const ParamInfo& p : params.all()) {
    model_file.add_f32(p.name, p.shape, weights.data() + p.offset);
    optim_file.add_f32(p.name + ".exp_avg", p.shape, m.data() + p.offset);
    optim_file.add_f32(p.name + ".exp_avg_sq", p.shape, v.data() + p.offset);
  }
  model_file.set_metadata("mohge_spec", spec_json);
  model_file.set_metadata("step", std::to_string(state.step));
  model_file.set_metadata("format", "pt");
  optim_file.set_metadata("optimizer", "adamw");
  optim_file.set_metadata("steps_taken", std::to_string(optimizer.steps_taken()));
  if (Status s = model_file.write(tmp_dir / "model.safetensors"); !s.ok()) return s.error();
  if (Status s = optim_file.write(tmp_dir / "optimizer.safetensors"); !s.ok()) return s.error();
  if (Status s = write_text(tmp_dir / "job.json", job_spec_to_json(spec).dump(2) + "\n"); !s.ok())
    return s.error();
  const json trainer = {{"version", kTrainerStateVersion},
                        {"step", state.step},
                        {"data", {{"epoch", state.data.epoch}, {"index", state.data.index}}},
                        {"seed", state.seed},
                        {"optimizer_steps", optimizer.steps_taken()}};
  if (Status s = write_text(tmp_dir / "trainer_state.json", trainer.dump(2) + "\n"); !s.ok())
    return s.error();

  for (const fs::path& extra : extra_files) {
    fs::copy_file(extra, tmp_dir / extra.filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) return io_error("cannot copy " + extra.string() + " into the checkpoint", ec).error();
  }

  fs::remove_all(final_dir, ec);  // a checkpoint of the same step from an earlier attempt
  fs::rename(tmp_dir, final_dir, ec);
  if (ec)
    return io_error("cannot rename " + tmp_dir.string() + " to " + final_dir.string(), ec).error();

  // Retention: the oldest complete checkpoints beyond `keep` go.
  std::vector<fs::path> all = checkpoint_list(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove_all(all[i], ec);
  return final_dir;
}

std::vector<fs::path> checkpoint_list(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind("step-", 0) == 0 &&
        fs::exists(entry.path() / "trainer_state.json")) {
      out.push_back(entry.path());
    }
  }
  std::sort(out.begin(), out.end());  // zero-padded step numbers sort by step
  return out;
}

Result<JobSpec> checkpoint_read_spec(const fs::path& checkpoint) {
  Result<SafetensorsFile> file = SafetensorsFile::open(checkpoint / "model.safetensors");
  if (!file.ok()) return file.error();
  const auto& meta = file.value().metadata();
  auto it = meta.find("mohge_spec");
  if (it == meta.end()) {
    return Error{ErrorCode::kDataLoss,
                 (checkpoint / "model.safetensors").string() + " has no mohge_spec metadata", ""};
  }
  try {
    return parse_job_spec(json::parse(it->second));
  } catch (const json::parse_error& e) {
    return Error{ErrorCode::kDataLoss, "mohge_spec metadata is not JSON: " + std::string(e.what()),
                 ""};
  }
}

Status params_load(const SafetensorsFile& file, ParamStore& params, Backend& backend) {
  std::set<std::string> expected;
  std::vector<float> host;
  for (const ParamInfo& p : params.all()) {
    expected.insert(p.name);
    host.resize(static_cast<size_t>(p.size));
    if (Status s = file.read_f32(p.name, p.shape, host.data()); !s.ok()) return s;
    backend.copy_from_host(params.data_arena() + p.offset, host.data(),
                           sizeof(float) * host.size());
  }
  for (const SafetensorsEntry& e : file.entries()) {
    if (!expected.contains(e.name)) {
      return Error{ErrorCode::kInvalidArgument,
                   file.path().string() + " holds tensor " + e.name +
                       " that this model does not have (does the job spec match?)",
                   ""};
    }
  }
  return {};
}

Status checkpoint_load(const fs::path& checkpoint, Transformer& model, AdamW* optimizer,
                       TrainerState* state) {
  Result<SafetensorsFile> weights = SafetensorsFile::open(checkpoint / "model.safetensors");
  if (!weights.ok()) return weights.error();
  if (Status s = params_load(weights.value(), model.params(), model.backend()); !s.ok()) return s;
  if (optimizer != nullptr) {
    Result<SafetensorsFile> opt = SafetensorsFile::open(checkpoint / "optimizer.safetensors");
    if (!opt.ok()) return opt.error();
    ParamStore& params = model.params();
    std::vector<float> host;
    for (const ParamInfo& p : params.all()) {
      host.resize(static_cast<size_t>(p.size));
      for (const char* kind : {".exp_avg", ".exp_avg_sq"}) {
        if (Status s = opt.value().read_f32(p.name + kind, p.shape, host.data()); !s.ok()) return s;
        float* dst =
            (std::string(kind) == ".exp_avg" ? optimizer->exp_avg() : optimizer->exp_avg_sq()) +
            p.offset;
        model.backend().copy_from_host(dst, host.data(), sizeof(float) * host.size());
      }
    }
  }
  if (state != nullptr || optimizer != nullptr) {
    std::ifstream in(checkpoint / "trainer_state.json");
    json j;
    try {
      j = json::parse(in);
      if (j.at("version").get<int>() != kTrainerStateVersion) {
        return Error{ErrorCode::kDataLoss, "unsupported trainer_state.json version", ""};
      }
      if (state != nullptr) {
        state->step = j.at("step").get<int64_t>();
        state->data.epoch = j.at("data").at("epoch").get<int64_t>();
        state->data.index = j.at("data").at("index").get<int64_t>();
        state->seed = j.at("seed").get<uint64_t>();
      }
      if (optimizer != nullptr) optimizer->set_steps_taken(j.at("optimizer_steps").get<int64_t>());
    } catch (const json::exception& e) {
      return Error{ErrorCode::kDataLoss,
                   (checkpoint / "trainer_state.json").string() + " is unreadable: " + e.what(),
                   ""};
    }
  }
  return {};
}

}  // namespace mohge
