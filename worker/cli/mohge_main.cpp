// mohge: the command-line tool (DESIGN.md §3). Training in one process, evaluation,
// generation, data preparation, benchmarks, and the service client (submit, jobs, …).
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>

#include "worker/cli/commands.hpp"
#include "worker/comm/ucx_communicator.hpp"

int main(int argc, char** argv) {
  mohge::ucx_process_defaults();  // before any thread
  CLI::App app{"mohge: train and evaluate Mixture-of-Heterogeneous-Grouped-Experts models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mohge 0.1.0");
  // Logs and progress go to stderr; stdout carries only results (eval JSON, generated text).
  spdlog::set_default_logger(spdlog::stderr_color_mt("mohge"));
  spdlog::set_pattern("[mohge %H:%M:%S] %v");
  int exit_code = 0;
  mohge::cli::add_prepare_data(app, exit_code);
  mohge::cli::add_train(app, exit_code);
  mohge::cli::add_eval(app, exit_code);
  mohge::cli::add_generate(app, exit_code);
  mohge::cli::add_bench(app, exit_code);
  mohge::cli::add_client(app, exit_code);
  mohge::cli::add_experiment(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return exit_code;
}
