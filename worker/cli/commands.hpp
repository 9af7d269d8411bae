// Subcommands of the `mohge` CLI. Each registers its flags on the app and returns the
// callback's exit code through `exit_code`: 0 success, 1 runtime failure, 2 bad input.
#pragma once

#include <CLI/CLI.hpp>

#include "api/result.hpp"

namespace mohge::cli {

void add_prepare_data(CLI::App& app, int& exit_code);
void add_train(CLI::App& app, int& exit_code);
void add_eval(CLI::App& app, int& exit_code);
void add_generate(CLI::App& app, int& exit_code);
void add_bench(CLI::App& app, int& exit_code);
/// submit, jobs, job, logs, cancel, checkpoints, download (the coordinator's REST API).
void add_client(CLI::App& app, int& exit_code);
/// experiment submit|show|list|cancel (experiments through the REST API).
void add_experiment(CLI::App& app, int& exit_code);

/// Prints "error: <field>: <message>" to stderr; returns 2 for bad input, 1 otherwise.
int report(const Error& error);

}  // namespace mohge::cli
