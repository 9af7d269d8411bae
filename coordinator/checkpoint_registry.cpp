#include "coordinator/checkpoint_registry.hpp"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "api/paths.hpp"
#include "api/protocol.hpp"
#include "coordinator/store.hpp"
#include "coordinator/worker_registry.hpp"

namespace mohge::coord {

namespace fs = std::filesystem;
using nlohmann::json;

CheckpointRegistry::CheckpointRegistry(boost::asio::io_context& io, Hub& hub)
    : Actor(io.get_executor()), hub_(hub) {}

bool CheckpointRegistry::inside_checkpoints(const fs::path& root, const std::string& run_dir,
                                            const std::string& path) {
  if (!path_is_confined(run_dir) || !path_is_confined(path)) return false;
  std::error_code ec;
  const fs::path base = fs::weakly_canonical(root / run_dir / "checkpoints", ec);
  if (ec) return false;
  const fs::path target = fs::weakly_canonical(root / path, ec);
  if (ec) return false;
  const fs::path rel = target.lexically_relative(base);
  return !rel.empty() && rel != "." && *rel.begin() != "..";
}

void CheckpointRegistry::on_report(const std::string& worker, std::optional<int64_t> seq,
                                   int64_t job, int rank, std::string run_dir,
                                   proto::CheckpointWritten report) {
  post([this, worker, seq, job, rank, run_dir = std::move(run_dir),
        report = std::move(report)]() mutable {
    // The Scheduler checked that the folder is inside run_dir/checkpoints.
    // Forget what never completed (a rank died between its report and the others').
    const double now = hub_.now();
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (now - it->second.first_at > kPendingTtlS)
        it = pending_.erase(it);
      else
        ++it;
    }
    const auto key = std::make_pair(job, report.step);
    if (!pending_.count(key) && pending_.size() >= kMaxPending) {
      spdlog::warn("job {}: checkpoint step {} not tracked: {} incomplete checkpoints pending", job,
                   report.step, pending_.size());
      return;
    }
    PendingCheckpoint& p = pending_[key];
    if (p.first_at == 0) {
      p.first_at = now;
      p.run_dir = run_dir;
      p.world = report.world;
      p.keep = report.keep;
      p.path = report.path;
    }
    if (p.world != report.world || p.path != report.path) {
      spdlog::warn(
          "job {}: checkpoint step {}: rank {} reports world {} and \"{}\", the first "
          "report said {} and \"{}\"; ignored",
          job, report.step, rank, report.world, report.path, p.world, p.path);
      return;
    }
    if (seq) p.acks[worker].push_back(*seq);
    if (!p.ranks.insert(rank).second) return;
    for (proto::FileEntry& f : report.files)
      p.files.push_back({std::move(f.name), f.bytes, std::move(f.sha256)});
    if (static_cast<int>(p.ranks.size()) < p.world) return;
    PendingCheckpoint done = std::move(p);
    pending_.erase(key);
    complete(job, report.step, std::move(done));
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
      return ack(p.acks);  // sending these again would not help
    }
    row.bytes += f.bytes;
    if (f.name == "model.safetensors.index.json" || f.name == "model.safetensors") has_index = true;
  }
  if (!has_index) {
    spdlog::error("job {}: checkpoint step {} not registered: no model index in the reports", job,
                  step);
    return ack(p.acks);
  }
  row.files = std::move(p.files);
  auto acks = std::make_shared<std::map<std::string, std::vector<int64_t>>>(std::move(p.acks));
  hub_.store->write(
      "register checkpoint",
      [row, keep = p.keep, run_dir = p.run_dir, root = hub_.options.storage](db::Repository& r) {
        Result<db::CheckpointRow> inserted = r.insert_checkpoint(row);
        if (!inserted.ok() && inserted.error().code != ErrorCode::kAlreadyExists)
          return Status(inserted.error());
        Result<std::vector<db::CheckpointRow>> all = r.list_checkpoints(row.job_id);
        if (!all.ok()) return Status(all.error());
        const auto& list = all.value();  // oldest first
        for (size_t i = 0; keep > 0 && i + static_cast<size_t>(keep) < list.size(); ++i) {
          std::error_code ec;
          // Never outside the job's own checkpoints, whatever a row says.
          if (inside_checkpoints(root, run_dir, list[i].path))
            fs::remove_all(root / list[i].path, ec);  // files first, then the row
          if (!ec) {
            fs::remove(
                root / "downloads" / ("checkpoint-" + std::to_string(list[i].id) + ".safetensors"),
                ec);
            ec.clear();  // the consolidated copy exists only if someone downloaded it
          }
          if (ec)
            return Status(Error{ErrorCode::kInternal,
                                "cannot delete " + list[i].path + ": " + ec.message(), ""});
          if (Status s = r.mark_checkpoint_deleted(list[i].id); !s.ok()) return s;
        }
        spdlog::info("job {}: checkpoint step {} complete ({} files, {} bytes)", row.job_id,
                     row.step, row.files.size(), row.bytes);
        return Status();
      },
      [this, acks](const Status& s) {
        // Unacknowledged on failure: the ranks' workers keep the reports and send them again.
        if (s.ok()) post([this, acks] { ack(*acks); });
      });
}

void CheckpointRegistry::ack(const std::map<std::string, std::vector<int64_t>>& acks) {
  for (const auto& [worker, seqs] : acks)
    hub_.registry->send(worker, {{"type", proto::kAck}, {"seqs", seqs}});
}

}  // namespace mohge::coord
