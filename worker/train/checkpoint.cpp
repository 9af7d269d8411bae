#include "worker/train/checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "storage/atomic_file.hpp"
#include "storage/safetensors.hpp"

namespace mohge {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kTrainerStateVersion = 1;

std::vector<float> to_host(Backend& be, const float* data, int64_t count) {
  std::vector<float> host(static_cast<size_t>(count));
  be.copy_to_host(host.data(), data, sizeof(float) * host.size());
  return host;
}

Status write_text(const fs::path& path, const std::string& text) {
  return atomic_write_file(path, [&](std::ostream& out) { out << text; });
}

Error io_error(const std::string& what, const std::error_code& ec) {
  return Error{ErrorCode::kInternal, what + ": " + ec.message(), ""};
}

// Host copies of this rank's weights and moments, kept alive while writers borrow them.
struct HostState {
  std::vector<float> weights, m, v;
};

// Adds the parameters `keep` selects to a model and an optimizer writer.
template <class Keep>
void add_tensors(const ParamStore& params, const HostState& h, Keep keep, SafetensorsWriter& model,
                 SafetensorsWriter& optim) {
  for (const ParamInfo& p : params.all()) {
    if (!keep(p)) continue;
    model.add_f32(p.name, p.shape, h.weights.data() + p.offset);
    optim.add_f32(p.name + ".exp_avg", p.shape, h.m.data() + p.offset);
    optim.add_f32(p.name + ".exp_avg_sq", p.shape, h.v.data() + p.offset);
  }
}

// Temporary folders of checkpoints that were never published (a crash, a failed write).
void sweep_unpublished(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(".tmp-", 0) == 0 || name.rfind(".old-", 0) == 0)
      fs::remove_all(entry.path(), ec);
  }
}

// The files, besides the tensors, that make a checkpoint folder complete (rank 0 writes them).
Status write_metadata_files(const fs::path& dir, const JobSpec& spec, const TrainerState& state,
                            int64_t optimizer_steps, int world,
                            const std::vector<fs::path>& extra_files, int attempt) {
  if (Status s = write_text(dir / "job.json", job_spec_to_json(spec).dump(2) + "\n"); !s.ok())
    return s;
  for (const fs::path& extra : extra_files) {
    std::error_code ec;
    fs::copy_file(extra, dir / extra.filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) return io_error("cannot copy " + extra.string() + " into the checkpoint", ec);
  }
  json trainer = {{"version", kTrainerStateVersion},
                  {"step", state.step},
                  {"data", {{"epoch", state.data.epoch}, {"index", state.data.index}}},
                  {"seed", state.seed},
                  {"optimizer_steps", optimizer_steps},
                  {"world", world}};
  if (attempt > 0) trainer["attempt"] = attempt;  // the service attempt that wrote it
  if (!state.placement.empty()) trainer["placement"] = state.placement;
  // Written last: its presence marks the folder as complete (checkpoint_list).
  return write_text(dir / "trainer_state.json", trainer.dump(2) + "\n");
}

// Moves the finished temp folder into place and applies retention.
Result<fs::path> publish(const fs::path& dir, const fs::path& tmp_dir, int64_t step, int keep,
                         const RunFence& fence) {
  const fs::path final_dir = dir / checkpoint_folder_name(step);
  std::error_code ec;
  if (Status s = fence.verify(); !s.ok()) {
    fs::remove_all(tmp_dir, ec);
    return s.error();
  }
  // A checkpoint of the same step from an earlier attempt is moved aside, not deleted, until
  // the new one is in place.
  const fs::path old_dir = dir / (".old-" + checkpoint_folder_name(step));
  fs::remove_all(old_dir, ec);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return io_error("cannot rename " + tmp_dir.string() + " to " + final_dir.string(), ec);
  if (Status s = sync_path(dir, true); !s.ok()) return s.error();  // the rename is durable
  fs::remove_all(old_dir, ec);
  std::vector<fs::path> all = checkpoint_list(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove_all(all[i], ec);
  return final_dir;
}

// The shard (0-based) holding each tensor of the model, from the spec and the placement.
std::map<std::string, std::string> weight_map(const ParamStore& rank0_params,
                                              const ModelSpec& model,
                                              const ExpertPlacement& placement,
                                              const std::string& stem, const std::string& suffix) {
  const int R = placement.world;
  std::map<std::string, std::string> map;
  for (const ParamInfo& p : rank0_params.all())
    if (p.replicated) map[p.name + suffix] = shard_file_name(stem, 0, R);
  for (int l = 0; l < model.layers; ++l) {
    const ExpertPlacement& layer = placement.layer(l);
    for (size_t e = 0; e < layer.owner.size(); ++e) {
      const std::string name = ffn_expert_name(model.ffn, l, static_cast<int>(e));
      const std::string file = shard_file_name(stem, layer.owner[e], R);
      for (const char* proj : {".gate_proj.weight", ".up_proj.weight", ".down_proj.weight"})
        map[name + proj + suffix] = file;
    }
  }
  return map;
}

// Bytes of every tensor of the model (the index's total_size).
int64_t model_bytes(const ParamStore& rank0_params, const ModelSpec& model) {
  int64_t floats = 0;
  for (const ParamInfo& p : rank0_params.all())
    if (p.replicated) floats += p.size;
  for (int e = 0; e < model.ffn.num_experts(); ++e)
    floats += int64_t{3} * model.d_model * model.ffn.expert_hidden_width(e) * model.layers;
  return floats * int64_t{sizeof(float)};
}

Result<fs::path> write_single(const fs::path& dir, Transformer& model, AdamW& optimizer,
                              const JobSpec& spec, const TrainerState& state, int keep,
                              const std::vector<fs::path>& extra_files, const RunFence& fence) {
  std::error_code ec;
  if (Status s = fence.verify(); !s.ok()) return s.error();
  const fs::path tmp_dir =
      dir / (".tmp-" + checkpoint_folder_name(state.step) + "-" + std::to_string(::getpid()));
  sweep_unpublished(dir);  // this process is the run's only writer
  fs::create_directories(tmp_dir, ec);
  if (ec) return io_error("cannot create " + tmp_dir.string(), ec);
  Backend& be = model.backend();
  ParamStore& params = model.params();
  const HostState h{to_host(be, params.data_arena(), params.total_size()),
                    to_host(be, optimizer.exp_avg(), params.total_size()),
                    to_host(be, optimizer.exp_avg_sq(), params.total_size())};
  SafetensorsWriter model_file, optim_file;
  add_tensors(
      params, h, [](const ParamInfo&) { return true; }, model_file, optim_file);
  model_file.set_metadata("mohge_spec", job_spec_to_json(spec).dump());
  model_file.set_metadata("step", std::to_string(state.step));
  model_file.set_metadata("format", "pt");
  optim_file.set_metadata("optimizer", "adamw");
  optim_file.set_metadata("steps_taken", std::to_string(optimizer.steps_taken()));
  if (Status s = model_file.write(tmp_dir / "model.safetensors"); !s.ok()) return s.error();
  if (Status s = optim_file.write(tmp_dir / "optimizer.safetensors"); !s.ok()) return s.error();
  if (Status s = write_metadata_files(tmp_dir, spec, state, optimizer.steps_taken(), 1, extra_files,
                                      fence.attempt);
      !s.ok())
    return s.error();
  return publish(dir, tmp_dir, state.step, keep, fence);
}

// Every rank writes its shard into the shared temp folder; rank 0 writes the indexes and the
// metadata files and publishes. Collective: all ranks return the same outcome.
Result<fs::path> write_sharded(const fs::path& dir, Transformer& model, AdamW& optimizer,
                               const JobSpec& spec, const TrainerState& state, int keep,
                               const std::vector<fs::path>& extra_files,
                               const ParallelContext& parallel, const RunFence& fence) {
  Communicator& comm = *parallel.comm;
  const int rank = parallel.rank(), R = parallel.world();
  const fs::path tmp_dir = dir / (".tmp-" + checkpoint_folder_name(state.step));
  std::error_code ec;
  std::string error;
  if (Status s = fence.verify(); rank == 0 && !s.ok()) {
    error = s.error().to_string();
  } else if (rank == 0) {
    sweep_unpublished(dir);  // rank 0 alone creates and publishes checkpoint folders
    fs::create_directories(tmp_dir, ec);
    if (ec) error = "cannot create " + tmp_dir.string() + ": " + ec.message();
  }
  // Agreement points: a failure on any rank fails the checkpoint on every rank.
  auto agree = [&](const std::string& what) -> Status {
    double failed = error.empty() ? 0.0 : 1.0;
    if (Status s = comm.all_reduce(&failed, 1, ReduceOp::kSum); !s.ok()) return s;
    if (failed == 0.0) return {};
    if (rank == 0) fs::remove_all(tmp_dir, ec);  // nothing half-written stays behind
    return Error{ErrorCode::kInternal,
                 error.empty() ? "checkpoint " + what + " failed on another rank" : error, ""};
  };
  if (Status s = agree("folder creation"); !s.ok()) return s.error();

  Backend& be = model.backend();
  ParamStore& params = model.params();
  const HostState h{to_host(be, params.data_arena(), params.total_size()),
                    to_host(be, optimizer.exp_avg(), params.total_size()),
                    to_host(be, optimizer.exp_avg_sq(), params.total_size())};
  SafetensorsWriter model_file, optim_file;
  add_tensors(
      params, h, [&](const ParamInfo& p) { return !p.replicated || rank == 0; }, model_file,
      optim_file);
  model_file.set_metadata("format", "pt");
  if (rank == 0) model_file.set_metadata("mohge_spec", job_spec_to_json(spec).dump());
  if (Status s = model_file.write(tmp_dir / shard_file_name("model", rank, R)); !s.ok())
    error = s.error().to_string();
  if (Status s = optim_file.write(tmp_dir / shard_file_name("optimizer", rank, R));
      error.empty() && !s.ok())
    error = s.error().to_string();
  if (Status s = agree("shard writing"); !s.ok()) return s.error();

  Result<fs::path> published = Error{ErrorCode::kInternal, "", ""};
  if (rank == 0) {
    const std::map<std::string, std::string> meta = {{"mohge_spec", job_spec_to_json(spec).dump()},
                                                     {"step", std::to_string(state.step)},
                                                     {"world", std::to_string(R)}};
    const int64_t bytes = model_bytes(params, spec.model);
    Status s = shard_index_write(tmp_dir / "model.safetensors.index.json",
                                 weight_map(params, spec.model, *parallel.placement, "model", ""),
                                 bytes, meta);
    if (s.ok()) {
      std::map<std::string, std::string> omap =
          weight_map(params, spec.model, *parallel.placement, "optimizer", ".exp_avg");
      for (auto& [k, v] :
           weight_map(params, spec.model, *parallel.placement, "optimizer", ".exp_avg_sq"))
        omap[k] = v;
      s = shard_index_write(
          tmp_dir / "optimizer.safetensors.index.json", omap, 2 * bytes,
          {{"optimizer", "adamw"}, {"steps_taken", std::to_string(optimizer.steps_taken())}});
    }
    if (s.ok())
      s = write_metadata_files(tmp_dir, spec, state, optimizer.steps_taken(), R, extra_files,
                               fence.attempt);
    if (s.ok()) {
      published = publish(dir, tmp_dir, state.step, keep, fence);
      if (!published.ok()) error = published.error().to_string();
    } else {
      error = s.error().to_string();
    }
  }
  if (Status s = agree("publishing"); !s.ok()) return s.error();
  return dir / checkpoint_folder_name(state.step);
}

}  // namespace

std::string checkpoint_folder_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

Result<fs::path> checkpoint_write(const fs::path& dir, Transformer& model, AdamW& optimizer,
                                  const JobSpec& spec, const TrainerState& state, int keep,
                                  const std::vector<fs::path>& extra_files,
                                  const ParallelContext& parallel, const RunFence& fence) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error("cannot create " + dir.string(), ec);
  if (parallel.distributed())
    return write_sharded(dir, model, optimizer, spec, state, keep, extra_files, parallel, fence);
  return write_single(dir, model, optimizer, spec, state, keep, extra_files, fence);
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
  Result<TensorSource> source = TensorSource::open(checkpoint, "model");
  if (!source.ok()) return source.error();
  const auto& meta = source.value().metadata();
  auto it = meta.find("mohge_spec");
  if (it == meta.end()) {
    return Error{ErrorCode::kDataLoss, checkpoint.string() + " has no mohge_spec metadata", ""};
  }
  try {
    return parse_job_spec(json::parse(it->second));
  } catch (const json::exception& e) {  // parse errors, and numbers that overflow
    return Error{ErrorCode::kDataLoss, "mohge_spec metadata is not JSON: " + std::string(e.what()),
                 ""};
  }
}

Status params_load(TensorSource& source, ParamStore& params, Backend& backend, bool require_all) {
  std::set<std::string> expected;
  std::vector<float> host;
  for (const ParamInfo& p : params.all()) {
    expected.insert(p.name);
    host.resize(static_cast<size_t>(p.size));
    if (Status s = source.read_f32(p.name, p.shape, host.data()); !s.ok()) return s;
    backend.copy_from_host(params.data_arena() + p.offset, host.data(),
                           sizeof(float) * host.size());
  }
  if (require_all) {
    for (const std::string& name : source.names()) {
      if (!expected.contains(name)) {
        return Error{ErrorCode::kInvalidArgument,
                     "the checkpoint holds tensor " + name +
                         " that this model does not have (does the job spec match?)",
                     ""};
      }
    }
  }
  return {};
}

Result<std::vector<std::vector<int>>> checkpoint_placement(const fs::path& checkpoint) {
  std::ifstream in(checkpoint / "trainer_state.json");
  try {
    const json j = json::parse(in);
    if (!j.contains("placement")) return std::vector<std::vector<int>>{};
    return j.at("placement").get<std::vector<std::vector<int>>>();
  } catch (const json::exception& e) {
    return Error{ErrorCode::kDataLoss,
                 (checkpoint / "trainer_state.json").string() + " is unreadable: " + e.what(), ""};
  }
}

Status checkpoint_load(const fs::path& checkpoint, Transformer& model, AdamW* optimizer,
                       TrainerState* state) {
  Result<TensorSource> weights = TensorSource::open(checkpoint, "model");
  if (!weights.ok()) return weights.error();
  // A model holding every expert must account for every tensor of the checkpoint.
  const bool complete = model.params().replicated_size() == model.params().total_size();
  if (Status s = params_load(weights.value(), model.params(), model.backend(), complete); !s.ok())
    return s;
  if (optimizer != nullptr) {
    Result<TensorSource> opt = TensorSource::open(checkpoint, "optimizer");
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
    try {
      const json j = json::parse(in);
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
