#include "coordinator/metrics_sink.hpp"

#include "coordinator/metric_rows.hpp"

#include <spdlog/spdlog.h>

#include "api/protocol.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"
#include "coordinator/worker_registry.hpp"

namespace mohge::coord {

using nlohmann::json;

MetricsSink::MetricsSink(boost::asio::io_context& io, Hub& hub)
    : Actor(io.get_executor()), hub_(hub), timer_(strand_) {}

void MetricsSink::start() {
  post([this] { schedule_flush(); });
}

void MetricsSink::on_log(const std::string& worker, int64_t job, int rank,
                         std::optional<int64_t> seq, proto::LogReport log) {
  post([this, worker, job, rank, seq, log = std::move(log)] {
    JobBatch& b = batches_[job];
    if (seq) b.acks[worker].push_back(*seq);
    const double at = log.at.value_or(hub_.now());
    for (const std::string& line : log.lines) b.logs.push_back({0, job, at, rank, line});
  });
}

void MetricsSink::on_metrics(const std::string& worker, int64_t job, int attempt,
                             std::optional<int64_t> seq, json records) {
  post([this, worker, job, attempt, seq, records = std::move(records)] {
    JobBatch& b = batches_[job];
    if (seq) b.acks[worker].push_back(*seq);
    for (const json& rec : records) {
      std::vector<db::MetricRow> rows = metric_rows_from_record(job, rec);
      json progress = rec;
      progress.erase("layers");
      if (rec.contains("layers")) {
        const int64_t step = rec["step"].get<int64_t>();  // checked by check_metric_record
        if (!b.routing || step >= b.routing->first) b.routing = std::make_pair(step, rec);
        for (const db::MetricRow& r : rows)
          if (r.name == "imbalance") progress["imbalance"] = r.value;
      }
      buffered_rows_ += rows.size();
      b.rows.insert(b.rows.end(), rows.begin(), rows.end());
      hub_.scheduler->progress(job, attempt, progress);
    }
    if (buffered_rows_ > 20000) flush();
  });
}

void MetricsSink::flush() {
  for (auto& [job, batch] : batches_) {
    if (batch.empty()) continue;
    auto out = std::make_shared<JobBatch>(std::move(batch));
    hub_.store->write(
        "reports of a job",
        [job = job, out](db::Repository& r) {
          return r.store_job_reports(job, out->rows, out->logs, out->routing);
        },
        [this, job = job, out](const Status& s) {
          post([this, job, out, s] { written(job, std::move(*out), s); });
        });
  }
  batches_.clear();
  buffered_rows_ = 0;
}

void MetricsSink::written(int64_t job, JobBatch batch, const Status& status) {
  if (status.ok()) {
    for (auto& [worker, seqs] : batch.acks)
      hub_.registry->send(worker, {{"type", proto::kAck}, {"seqs", seqs}});
    return;
  }
  if (status.error().code == ErrorCode::kNotFound) {
    spdlog::warn("metrics of job {} dropped: {}", job, status.error().to_string());
    return;
  }
  if (++batch.failures >= kMaxWriteFailures) {
    spdlog::error(
        "{} metric rows and {} log lines of job {} not stored after {} attempts ({}); "
        "the workers keep them unacknowledged and send them again when they reconnect",
        batch.rows.size(), batch.logs.size(), job, batch.failures, status.error().to_string());
    return;
  }
  // Back into the buffer, before what arrived meanwhile, for the next flush.
  JobBatch& next = batches_[job];
  batch.rows.insert(batch.rows.end(), next.rows.begin(), next.rows.end());
  batch.logs.insert(batch.logs.end(), next.logs.begin(), next.logs.end());
  if (next.routing && (!batch.routing || next.routing->first >= batch.routing->first))
    batch.routing = std::move(next.routing);
  for (auto& [worker, seqs] : next.acks)
    batch.acks[worker].insert(batch.acks[worker].end(), seqs.begin(), seqs.end());
  buffered_rows_ += batch.rows.size() - next.rows.size();
  next = std::move(batch);
}

void MetricsSink::flush_then(std::function<void()> done) {
  post([this, done = std::move(done)]() mutable {
    flush();
    hub_.store->post(std::move(done));  // after the writes flush() queued
  });
}

void MetricsSink::schedule_flush() {
  timer_.expires_after(std::chrono::milliseconds(200));
  timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    flush();
    schedule_flush();
  });
}

}  // namespace mohge::coord
