// `mohge bench api`: REST requests/s and latency of GET /jobs/{id} against an in-process
// coordinator holding `jobs` jobs, and metrics ingestion rows/s into SQLite.
#pragma once

#include <cstdint>

#include "api/result.hpp"

namespace mohge {

struct ApiBenchOptions {
  int jobs = 1000;         // jobs in the database
  int connections = 4;     // concurrent keep-alive client connections
  double seconds = 5.0;    // measuring time
  int server_threads = 2;  // the REST thread pool (the coordinator's default on 2 cores)
  int64_t metric_rows = 500000;
};

struct ApiBenchResult {
  int jobs = 0;
  int64_t requests = 0, errors = 0;
  double requests_per_s = 0, p50_ms = 0, p99_ms = 0;
  double healthz_requests_per_s = 0;  // the REST server alone, same run: the ceiling
  double metric_rows_per_s = 0;
};

Result<ApiBenchResult> bench_api(const ApiBenchOptions& options);

}  // namespace mohge
