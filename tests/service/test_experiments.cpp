// Experiments end to end through the real coordinator and workers: a grid becomes one job per
// point, at most max_parallel run at once, the comparison table averages the finished seeds'
// own figures, a bad point creates nothing, re-submits are idempotent, cancel stops them all,
// and another user sees none of it.
#include <cmath>
#include <set>

#include "api/job_spec.hpp"
#include "tests/service/service_fixture.hpp"

namespace mohge::testing {
namespace {

/// Two variants (MoHGE and a dense model) × two seeds of the tiny service job.
json small_experiment(int steps, int max_parallel) {
  json base = service_job(1, steps, 0, 1);
  base.erase("name");
  base["train"]["eval_every"] = steps / 2;
  return {{"name", "svc-exp"},
          {"base", base},
          {"max_parallel", max_parallel},
          {"variants",
           {{{"name", "mohge"}},
            {{"name", "dense"}, {"set", {{"model.ffn", {{"kind", "dense"}, {"width", 24}}}}}}}},
          {"grid", {{"train.seed", {1, 2}}}}};
}

class Experiments : public LocalCluster {
 protected:
  /// The jobs' run intervals (STARTING … SUCCEEDED, from their events) do not overlap.
  void expect_runs_one_at_a_time(const json& jobs) {
    std::vector<std::pair<double, double>> spans;
    for (const json& j : jobs) {
      double from = 0, to = 0;
      // (The response is kept: a loop over a member of a temporary would read freed memory.)
      const HttpResult events =
          get("/api/v1/jobs/" + std::to_string(j["id"].get<int64_t>()) + "/events");
      for (const json& e : events.body["events"]) {
        if (e["to"] == "STARTING") from = e["at"];
        if (e["to"] == "SUCCEEDED") to = e["at"];
      }
      spans.push_back({from, to});
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) EXPECT_LE(spans[i - 1].second, spans[i].first);
  }
  double final_val(int64_t job) {
    const HttpResult m = get("/api/v1/jobs/" + std::to_string(job) + "/metrics?names=val_loss");
    return m.body["metrics"]["val_loss"]["values"].back().get<double>();
  }
};

TEST_F(Experiments, AGridRunsAsJobsAtMostMaxParallelAtOnceAndIsComparedOverSeeds) {
  start_coordinator();
  start_worker("w1");
  start_worker("w2");
  wait_workers_online(2);

  const json req = small_experiment(8, 1);
  const HttpResult sub = post("/api/v1/experiments", req, {{"Idempotency-Key", "exp-a"}});
  ASSERT_EQ(sub.status, 201) << sub.text;
  const int64_t id = sub.body["id"];
  EXPECT_EQ(sub.body["num_jobs"], 4);
  ASSERT_EQ(sub.body["jobs"].size(), 4u);
  std::vector<int64_t> ids;
  std::set<std::string> names;
  for (const json& j : sub.body["jobs"]) {
    ids.push_back(j["id"]);
    names.insert(j["name"].get<std::string>());
    EXPECT_EQ(j["experiment"]["id"], id);
  }
  EXPECT_EQ(names, (std::set<std::string>{"svc-exp/mohge/seed=1", "svc-exp/mohge/seed=2",
                                          "svc-exp/dense/seed=1", "svc-exp/dense/seed=2"}));
  // The same request and key: the same experiment, nothing new; another request: refused.
  const HttpResult again = post("/api/v1/experiments", req, {{"Idempotency-Key", "exp-a"}});
  EXPECT_EQ(again.status, 200) << again.text;
  EXPECT_EQ(again.body["id"], id);
  json other = req;
  other["max_parallel"] = 2;
  const HttpResult clash = post("/api/v1/experiments", other, {{"Idempotency-Key", "exp-a"}});
  EXPECT_EQ(clash.status, 409) << clash.text;
  EXPECT_EQ(clash.body["error"]["field"], "Idempotency-Key");
  EXPECT_EQ(get("/api/v1/jobs").body["total"], 4);

  // Two workers are online, but max_parallel is 1: never two placed jobs, and the waiting ones
  // say why.
  int max_placed = 0;
  bool saw_reason = false;
  json view;
  ASSERT_TRUE(wait_for(
      [&] {
        view = get("/api/v1/experiments/" + std::to_string(id)).body;
        int placed = 0;
        for (const json& j : view["jobs"]) {
          const std::string s = j.value("state", "");
          placed += s == "STARTING" || s == "RUNNING" || s == "RECOVERING";
          if (j.value("pending_reason", "").find("max_parallel") != std::string::npos)
            saw_reason = true;
        }
        max_placed = std::max(max_placed, placed);
        return view.value("state", "") == "SUCCEEDED" && view["groups"][0]["val_loss"]["n"] == 2 &&
               view["groups"][1]["val_loss"]["n"] == 2;
      },
      240.0))
      << view.dump();
  EXPECT_EQ(max_placed, 1);
  EXPECT_TRUE(saw_reason);
  expect_runs_one_at_a_time(view["jobs"]);

  // The table: each group's mean and sample std are those of its own jobs' last val_loss.
  ASSERT_EQ(view["groups"].size(), 2u);
  for (const json& g : view["groups"]) {
    EXPECT_EQ(g["seeds"], 2);
    EXPECT_EQ(g["seeds_finished"], 2);
    const double a = final_val(g["jobs"][0]), b = final_val(g["jobs"][1]);
    EXPECT_NEAR(g["val_loss"]["mean"].get<double>(), (a + b) / 2, 1e-9);
    EXPECT_NEAR(g["val_loss"]["std"].get<double>(), std::abs(a - b) / std::sqrt(2.0), 1e-9);
    EXPECT_NE(a, b) << "two seeds gave the same loss: the seed axis did not reach the jobs";
    EXPECT_GT(g["tokens_per_s"]["mean"].get<double>(), 0);
    EXPECT_EQ(g["val_curve"]["steps"], json::array({4, 8}));
    EXPECT_EQ(g["val_curve"]["n"], json::array({2, 2}));
  }
  // Each job's windowed figures were summed incrementally over the many polls above: they
  // must equal a full read of its series (tokens/s after step 8/10 = 0, activated FFN
  // parameters after step 8·9/10 = 7).
  for (const json& j : view["jobs"]) {
    const std::string base = "/api/v1/jobs/" + std::to_string(j["id"].get<int64_t>());
    const json m =
        get(base + "/metrics?names=tokens_per_s,activated_expert_params&max_points=100000").body;
    auto mean_after = [&](const char* name, int64_t after) {
      double sum = 0;
      int n = 0;
      const json& series = m["metrics"][name];
      for (size_t i = 0; i < series["steps"].size(); ++i) {
        if (series["steps"][i].get<int64_t>() <= after) continue;
        sum += series["values"][i].get<double>();
        ++n;
      }
      return sum / n;
    };
    EXPECT_NEAR(j["figures"]["tokens_per_s"].get<double>(), mean_after("tokens_per_s", 0),
                1e-6 * mean_after("tokens_per_s", 0));
    EXPECT_NEAR(j["figures"]["activated_expert_params"].get<double>(),
                mean_after("activated_expert_params", 7), 1e-6);
  }
  const json& mohge = view["groups"][0];
  const json& dense = view["groups"][1];
  EXPECT_EQ(mohge["group"], "mohge");
  // Parameters from the spec, as the model counts them.
  JobSpec spec = parse_job_spec([&] {
                   json s = service_job(1, 8);
                   return s;
                 }())
                     .value();
  EXPECT_EQ(mohge["params_total"]["mean"].get<double>(),
            static_cast<double>(model_param_counts(spec.model).total));
  // MoHGE activates part of its experts; the dense model all of its FFN.
  EXPECT_LT(mohge["activated_params"]["mean"].get<double>(),
            mohge["params_total"]["mean"].get<double>());
  EXPECT_NEAR(dense["activated_params"]["mean"].get<double>(),
              dense["params_total"]["mean"].get<double>(), 1e-6);
  // Difficulty routing for the grouped model only, 4 frequency buckets × 4 groups.
  ASSERT_TRUE(mohge.contains("difficulty")) << mohge.dump();
  EXPECT_EQ(mohge["difficulty"]["frequency"].size(), 4u);
  EXPECT_EQ(mohge["difficulty"]["frequency"][0].size(), 4u);
  EXPECT_FALSE(dense.contains("difficulty"));

  // The list shows it, finished.
  const HttpResult list = get("/api/v1/experiments");
  ASSERT_EQ(list.status, 200) << list.text;
  EXPECT_EQ(list.body["total"], 1);
  EXPECT_EQ(list.body["experiments"][0]["state"], "SUCCEEDED");
  EXPECT_EQ(list.body["experiments"][0]["states"]["SUCCEEDED"], 4);
}

TEST_F(Experiments, ABadPointCreatesNothingAndIsNamedByItsCoordinates) {
  start_coordinator();
  json req = small_experiment(8, 1);
  req["variants"][1]["set"]["model.ffn"]["width"] = -3;
  const HttpResult r = post("/api/v1/experiments", req);
  EXPECT_EQ(r.status, 400) << r.text;
  EXPECT_EQ(r.body["error"]["field"], "model.ffn.width");
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("variant \"dense\", train.seed=1"),
            std::string::npos)
      << r.text;
  EXPECT_EQ(get("/api/v1/jobs").body["total"], 0);
  EXPECT_EQ(get("/api/v1/experiments").body["total"], 0);
  // The request's own fields, non-objects, and ids that are not ids.
  EXPECT_EQ(post("/api/v1/experiments", json::array()).status, 400);
  json no_base = small_experiment(8, 1);
  no_base.erase("base");
  const HttpResult nb = post("/api/v1/experiments", no_base);
  EXPECT_EQ(nb.status, 400);
  EXPECT_EQ(nb.body["error"]["field"], "base");
  EXPECT_EQ(get("/api/v1/experiments/abc").status, 404);
  EXPECT_EQ(get("/api/v1/experiments/999").status, 404);
  EXPECT_EQ(request("DELETE", "/api/v1/experiments/1").status, 405);
  EXPECT_EQ(get("/api/v1/experiments/1/nothing").status, 404);
  EXPECT_EQ(get("/api/v1/healthz").status, 200);
}

TEST_F(Experiments, CancelStopsEveryJobAndAnotherUserSeesNothing) {
  start_coordinator();
  start_worker("w1");
  wait_workers_online(1);
  const HttpResult alice = post("/api/v1/users", {{"name", "alice"}});
  const HttpResult bob = post("/api/v1/users", {{"name", "bob"}, {"max_workers", 1}});
  ASSERT_EQ(alice.status, 201);
  ASSERT_EQ(bob.status, 201);
  auto token_for = [&](const HttpResult& u) {
    return post("/api/v1/users/" + std::to_string(u.body["id"].get<int64_t>()) + "/tokens",
                json::object())
        .body["token"]
        .get<std::string>();
  };
  const std::string ta = token_for(alice), tb = token_for(bob);
  token_ = ta;
  // Long enough that no machine finishes a job before the cancel below.
  const HttpResult sub = post("/api/v1/experiments", small_experiment(1000000, 1));
  ASSERT_EQ(sub.status, 201) << sub.text;
  const std::string path = "/api/v1/experiments/" + std::to_string(sub.body["id"].get<int64_t>());
  ASSERT_TRUE(wait_for([&] { return get(path).body.value("state", "") == "RUNNING"; }, 60.0));

  token_ = tb;
  // Bob's quota is one worker: an experiment with a two-worker point is refused whole.
  json big = small_experiment(8, 1);
  big["grid"]["resources.workers"] = {1, 2};
  const HttpResult refused = post("/api/v1/experiments", big);
  EXPECT_EQ(refused.status, 422) << refused.text;
  EXPECT_EQ(refused.body["error"]["field"], "resources.workers");
  EXPECT_NE(refused.text.find("svc-exp/mohge,resources.workers=2/seed=1"), std::string::npos)
      << refused.text;
  EXPECT_EQ(get("/api/v1/jobs").body["total"], 0);
  EXPECT_EQ(get(path).status, 404);
  EXPECT_EQ(post(path + "/cancel", json::object()).status, 404);
  EXPECT_EQ(get("/api/v1/experiments").body["total"], 0);
  EXPECT_EQ(get("/api/v1/experiments?user=alice").status, 403);
  token_ = admin_token_;
  EXPECT_EQ(get(path).status, 200);  // admin sees everything
  EXPECT_EQ(get("/api/v1/experiments?user=alice").body["total"], 1);

  token_ = ta;
  const HttpResult c = post(path + "/cancel", json::object());
  ASSERT_EQ(c.status, 200) << c.text;
  EXPECT_EQ(c.body["canceled"].size(), 4u);
  ASSERT_TRUE(wait_for([&] { return get(path).body.value("state", "") == "CANCELED"; }, 60.0))
      << get(path).text;
  const HttpResult canceled = get(path);
  for (const json& j : canceled.body["jobs"]) EXPECT_EQ(j["state"], "CANCELED");
  EXPECT_EQ(get(path).body["states"]["CANCELED"], 4);
}

// A coordinator killed while an experiment waits comes back with it: its jobs, their points
// and its max_parallel (read from SQLite at start-up) still hold.
TEST_F(Experiments, ACoordinatorRestartKeepsTheExperimentAndItsLimit) {
  start_coordinator();
  const HttpResult sub = post("/api/v1/experiments", small_experiment(8, 1));
  ASSERT_EQ(sub.status, 201) << sub.text;
  const std::string path = "/api/v1/experiments/" + std::to_string(sub.body["id"].get<int64_t>());
  kill9(coordinator_);
  start_coordinator();
  start_worker("w1");
  start_worker("w2");
  int max_placed = 0;
  json view;
  ASSERT_TRUE(wait_for(
      [&] {
        view = get(path).body;
        int placed = 0;
        for (const json& j : view["jobs"]) {
          const std::string st = j.value("state", "");
          placed += st == "STARTING" || st == "RUNNING" || st == "RECOVERING";
        }
        max_placed = std::max(max_placed, placed);
        return view.value("state", "") == "SUCCEEDED" && view["groups"][1]["val_loss"]["n"] == 2;
      },
      240.0))
      << view.dump();
  EXPECT_EQ(max_placed, 1);
  expect_runs_one_at_a_time(view["jobs"]);
  EXPECT_EQ(view["jobs"][3]["experiment"]["group"], "dense");
  EXPECT_EQ(view["groups"][0]["seeds_finished"], 2);
}

TEST_F(Experiments, TheCliSubmitsShowsFollowsListsAndCancels) {
  start_coordinator();
  start_worker("w1");
  start_worker("w2");
  wait_workers_online(2);
  const fs::path file = root_ / "experiment.json";
  std::ofstream(file) << small_experiment(8, 2).dump();
  const std::string env = "MOHGE_URL=" + url() + " MOHGE_TOKEN=" + token_ + " ";
  auto run = [&](const std::string& args, int* code) {
    std::string out;
    FILE* p = ::popen((env + bin("mohge") + " " + args + " 2>&1").c_str(), "r");
    char buf[4096];
    while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
    *code = WEXITSTATUS(::pclose(p));
    return out;
  };
  int code = 0;
  std::string out = run("experiment submit " + file.string() + " --idempotency-key e1", &code);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("experiment 1 submitted: 4 jobs"), std::string::npos) << out;
  out = run("experiment submit " + file.string() + " --idempotency-key e1", &code);
  EXPECT_NE(out.find("already submitted"), std::string::npos) << out;
  // Follows until every job has finished; exits 0 because all succeeded.
  out = run("experiment show 1 --follow --interval 1", &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("experiment 1 svc-exp (admin): SUCCEEDED"), std::string::npos) << out;
  ASSERT_TRUE(wait_for(
      [&] {
        out = run("experiment show 1", &code);
        return out.find(" 2/2 ") != std::string::npos && out.find("dense") != std::string::npos &&
               out.find("± ") != std::string::npos;
      },
      20.0))
      << out;
  EXPECT_NE(out.find("VARIANT"), std::string::npos) << out;
  EXPECT_NE(out.find("mohge: group share (%) by token frequency"), std::string::npos) << out;
  EXPECT_NE(out.find("svc-exp/dense/seed=2"), std::string::npos) << out;
  out = run("experiment show 1 --json", &code);
  EXPECT_EQ(json::parse(out)["groups"].size(), 2u);
  out = run("experiment list", &code);
  EXPECT_NE(out.find("svc-exp"), std::string::npos) << out;
  EXPECT_NE(out.find("SUCCEEDED 4"), std::string::npos) << out;
  out = run("experiment cancel 1", &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("canceled 0 jobs"), std::string::npos) << out;
  // Bad input: a missing file, invalid JSON, an unknown experiment.
  out = run("experiment submit " + (root_ / "nope.json").string(), &code);
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("cannot read"), std::string::npos) << out;
  std::ofstream(root_ / "bad.json") << "{not json";
  out = run("experiment submit " + (root_ / "bad.json").string(), &code);
  EXPECT_EQ(code, 2) << out;
  out = run("experiment show 99", &code);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("404"), std::string::npos) << out;
}

}  // namespace
}  // namespace mohge::testing
