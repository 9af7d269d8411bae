#include "coordinator/checkpoint_registry.hpp"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "coordinator/store.hpp"

namespace mohge::coord {

namespace fs = std::filesystem;
using nlohmann::json;

CheckpointRegistry::CheckpointRegistry(boost::asio::io_context& io, Hub& hub)
    : Actor(io.get_executor()), hub_(hub) {}

void CheckpointRegistry::on_report(const json& m) {
  post([this, m] {
    const int64_t job = m.value("job", int64_t{0});
    const int64_t step = m.value("step", int64_t{0});
    const int rank = m.value("rank", -1);
    const std::string path = m.value("path", "");
    // Paths are relative to the storage root and stay inside it.
    if (path.empty() || fs::path(path).is_absolute() || path.find("..") != std::string::npos) {
      spdlog::warn("job {}: checkpoint report with a bad path \"{}\" ignored", job, path);
      return;
    }
    PendingCheckpoint& p = pending_[{job, step}];
    p.world = m.value("world", 1);
    p.keep = m.value("keep", 3);
    p.path = path;
    if (!p.ranks.insert(rank).second) return;
    for (const json& f : m.value("files", json::array()))
      p.files.push_back({f.value("name", ""), f.value("bytes", int64_t{0}), f.value("sha256", "")});
    if (static_cast<int>(p.ranks.size()) < p.world) return;
    PendingCheckpoint done = std::move(p);
    pending_.erase({job, step});
    complete(job, step, std::move(done));
  });
}

void CheckpointRegistry::complete(int64_t job, int64_t step, PendingCheckpoint p) {
  const fs::path dir = hub_.options.storage / p.path;
  db::CheckpointRow row;
  row.job_id = job;
  row.step = step;
  row.path = p.path;
  row.state = "complete";
  row.created_at = hub_.now();
  bool has_index = false;
  for (const db::CheckpointFile& f : p.files) {
    std::error_code ec;
    const auto size = fs::file_size(dir / f.name, ec);
    if (ec || static_cast<int64_t>(size) != f.bytes || f.sha256.size() != 64) {
      spdlog::error("job {}: checkpoint step {} not registered: {} is missing or not {} bytes", job,
                    step, (dir / f.name).string(), f.bytes);
      return;
    }
    row.bytes += f.bytes;
    if (f.name == "model.safetensors.index.json" || f.name == "model.safetensors") has_index = true;
  }
  if (!has_index) {
    spdlog::error("job {}: checkpoint step {} not registered: no model index in the reports", job,
                  step);
    return;
  }
  row.files = std::move(p.files);
  hub_.store->write("register checkpoint", [row, keep = p.keep,
                                            root = hub_.options.storage](db::Repository& r) {
    Result<db::CheckpointRow> inserted = r.insert_checkpoint(row);
    if (!inserted.ok() && inserted.error().code != ErrorCode::kAlreadyExists)
      return Status(inserted.error());
    Result<std::vector<db::CheckpointRow>> all = r.list_checkpoints(row.job_id);
    if (!all.ok()) return Status(all.error());
    const auto& list = all.value();  // oldest first
    for (size_t i = 0; keep > 0 && i + static_cast<size_t>(keep) < list.size(); ++i) {
      std::error_code ec;
      fs::remove_all(root / list[i].path, ec);  // files first, then the row
      if (!ec) {
        fs::remove(
            root / "downloads" / ("checkpoint-" + std::to_string(list[i].id) + ".safetensors"), ec);
        ec.clear();  // the consolidated copy exists only if someone downloaded it
      }
      if (ec)
        return Status(
            Error{ErrorCode::kInternal, "cannot delete " + list[i].path + ": " + ec.message(), ""});
      if (Status s = r.mark_checkpoint_deleted(list[i].id); !s.ok()) return s;
    }
    spdlog::info("job {}: checkpoint step {} complete ({} files, {} bytes)", row.job_id, row.step,
                 row.files.size(), row.bytes);
    return Status();
  });
}

}  // namespace mohge::coord
