// The UCX communicator and the TCP rendezvous between real processes on localhost: payloads
// encode (source rank, destination, row) so routing is checked exactly; all-reduce values are
// checked against the formula and for bit-identical results on every rank; dead and silent
// peers are named within the deadline.
#include <utility>  // before Asio: its awaitable.hpp uses std::exchange

#include <gtest/gtest.h>
#include <boost/asio.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>

#include "worker/comm/nccl_communicator.hpp"
#include "worker/comm/rendezvous.hpp"
#include "worker/comm/ucx_communicator.hpp"
#include "worker/dist/local_ranks.hpp"

namespace mohge {
namespace {

#define CHILD_CHECK(cond, ...)                                                         \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "rank %d: %s:%d: %s %s\n", rank, __FILE__, __LINE__, #cond, \
                   std::string(__VA_ARGS__).c_str());                                  \
      return 1;                                                                        \
    }                                                                                  \
  } while (0)

// Everything one rank needs: the rendezvous (rank 0 also hosts it) and a UCX communicator.
struct RankEnv {
  std::unique_ptr<RendezvousServer> server;
  std::unique_ptr<Rendezvous> rv;
  std::unique_ptr<Communicator> comm;
  std::string error;

  RankEnv(int rank, int world, int port, double timeout_s = 20.0, bool no_shared_memory = false) {
    const std::string addr = "127.0.0.1:" + std::to_string(port);
    if (rank == 0) {
      auto s = RendezvousServer::start(addr, world, "test", "test-secret");
      if (!s.ok()) {
        error = s.error().to_string();
        return;
      }
      server = std::move(s).value();
    }
    auto r = rendezvous_connect(addr, rank, world, "test", "test-secret", 20.0);
    if (!r.ok()) {
      error = r.error().to_string();
      return;
    }
    rv = std::move(r).value();
    auto c = make_ucx_communicator(*rv, {.timeout_s = timeout_s,
                                         .peer_names = {},
                                         .no_shared_memory = no_shared_memory,
                                         .unreachable = nullptr});
    if (!c.ok()) {
      error = c.error().to_string();
      return;
    }
    comm = std::move(c).value();
  }

  // The orderly end of a rank: finalize, leave the rendezvous, and on rank 0 keep the service
  // up until every rank is done.
  bool finish() {
    const bool ok = comm->finalize().ok();
    if (ok) rv->leave();
    if (server) server->wait_done(20.0);
    return ok;
  }
};

// Rows that rank s sends to rank d: 0 to 3 of them, some pairs empty.
int64_t rows_between(int s, int d) {
  return (s * 3 + d * 2) % 4;
}
constexpr int64_t kWidth = 5;
float payload(int s, int d, int64_t row, int64_t c) {
  return static_cast<float>(s * 1000 + d * 100 + row * 10 + c);
}

int all_to_all_rank(int rank, int world, int port) {
  RankEnv env(rank, world, port);
  CHILD_CHECK(env.comm != nullptr, env.error);
  for (int round = 0; round < 3; ++round) {  // repeated: sequence numbers keep rounds apart
    std::vector<int64_t> send_bytes(world), recv_bytes(world);
    std::vector<float> send, recv;
    for (int d = 0; d < world; ++d) {
      send_bytes[d] = rows_between(rank, d) * kWidth * 4;
      recv_bytes[d] = rows_between(d, rank) * kWidth * 4;
      for (int64_t row = 0; row < rows_between(rank, d); ++row)
        for (int64_t c = 0; c < kWidth; ++c) send.push_back(payload(rank, d, row, c) + round);
    }
    int64_t total = 0;
    for (int64_t b : recv_bytes) total += b / 4;
    recv.assign(static_cast<size_t>(total), -1.0f);
    Status s =
        env.comm->all_to_all_v(send.data(), send_bytes.data(), recv.data(), recv_bytes.data());
    CHILD_CHECK(s.ok(), s.ok() ? "" : s.error().to_string());
    size_t k = 0;
    for (int src = 0; src < world; ++src)
      for (int64_t row = 0; row < rows_between(src, rank); ++row)
        for (int64_t c = 0; c < kWidth; ++c, ++k)
          CHILD_CHECK(recv[k] == payload(src, rank, row, c) + round,
                      "from rank " + std::to_string(src) + " row " + std::to_string(row));
  }
  CHILD_CHECK(env.finish());
  return 0;
}

template <class T>
int all_reduce_rank(int rank, int world, int port) {
  RankEnv env(rank, world, port);
  CHILD_CHECK(env.comm != nullptr, env.error);
  for (int64_t count : {int64_t{1}, int64_t{3}, int64_t{1000}, int64_t{100003}}) {
    std::vector<T> v(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) v[i] = static_cast<T>(rank * 0.1 + i * 0.001);
    std::vector<T> avg = v;
    CHILD_CHECK(env.comm->all_reduce(v.data(), count, ReduceOp::kSum).ok());
    CHILD_CHECK(env.comm->all_reduce(avg.data(), count, ReduceOp::kAverage).ok());
    for (int64_t i = 0; i < count; ++i) {
      const double expected = 0.1 * world * (world - 1) / 2 + world * i * 0.001;
      CHILD_CHECK(std::abs(v[i] - expected) <= 1e-5 * (1 + std::abs(expected)),
                  "sum at " + std::to_string(i));
      CHILD_CHECK(std::abs(avg[i] - expected / world) <= 1e-5 * (1 + std::abs(expected)),
                  "average at " + std::to_string(i));
    }
    // Every rank must hold the same bits: broadcast rank 0's result and compare.
    std::vector<T> root = v;
    CHILD_CHECK(env.comm->broadcast(root.data(), count * int64_t{sizeof(T)}, 0).ok());
    CHILD_CHECK(std::memcmp(root.data(), v.data(), root.size() * sizeof(T)) == 0,
                "all-reduce results differ between ranks");
  }
  CHILD_CHECK(env.comm->barrier().ok());
  CHILD_CHECK(env.finish());
  return 0;
}

int broadcast_rank(int rank, int world, int port) {
  RankEnv env(rank, world, port);
  CHILD_CHECK(env.comm != nullptr, env.error);
  const int root = world - 1;
  std::string msg(300000, '?');
  if (rank == root)
    for (size_t i = 0; i < msg.size(); ++i) msg[i] = static_cast<char>('a' + i % 26);
  CHILD_CHECK(env.comm->broadcast(msg.data(), static_cast<int64_t>(msg.size()), root).ok());
  for (size_t i = 0; i < msg.size(); ++i) CHILD_CHECK(msg[i] == static_cast<char>('a' + i % 26));
  CHILD_CHECK(env.finish());
  return 0;
}

void expect_all_ok(const std::vector<RankExit>& exits) {
  for (size_t r = 0; r < exits.size(); ++r) EXPECT_EQ(exits[r].code, 0) << "rank " << r;
}

class CommTest : public ::testing::TestWithParam<int> {};

TEST_P(CommTest, AllToAllVRoutesEveryRowIncludingEmptyAndUnevenBlocks) {
  const int world = GetParam(), port = free_local_port();
  expect_all_ok(run_local_ranks(world, [&](int r) { return all_to_all_rank(r, world, port); }));
}

TEST_P(CommTest, AllReduceSumAndAverageAreExactAndIdenticalOnEveryRank) {
  const int world = GetParam(), port = free_local_port();
  expect_all_ok(
      run_local_ranks(world, [&](int r) { return all_reduce_rank<float>(r, world, port); }));
  const int port2 = free_local_port();
  expect_all_ok(
      run_local_ranks(world, [&](int r) { return all_reduce_rank<double>(r, world, port2); }));
}

TEST_P(CommTest, BroadcastFromTheLastRank) {
  const int world = GetParam(), port = free_local_port();
  expect_all_ok(run_local_ranks(world, [&](int r) { return broadcast_rank(r, world, port); }));
}

INSTANTIATE_TEST_SUITE_P(Worlds, CommTest, ::testing::Values(2, 4), [](const auto& param_info) {
  return "world" + std::to_string(param_info.param);
});

TEST(CommTransports, KindsOfUcxTransportNames) {
  EXPECT_EQ(transport_kinds("tcp/eth0"), "tcp");
  EXPECT_EQ(transport_kinds("posix/memory+cma/memory"), "shm");
  EXPECT_EQ(transport_kinds("sysv/memory+tcp/eth0"), "shm+tcp");
  EXPECT_EQ(transport_kinds("rc_mlx5/mlx5_0:1+ud_verbs/mlx5_0:1"), "rdma");
  EXPECT_EQ(transport_kinds("self"), "self");
  EXPECT_EQ(transport_kinds("nccl"), "nccl");
  EXPECT_EQ(transport_kinds("cuda_ipc/cuda"), "other");
  EXPECT_EQ(transport_kinds(""), "unknown");
}

// Each rank reads what its endpoints use: shared memory between processes of one host, and
// TCP when shared memory is left out (ranks of one job on different hosts).
TEST(CommTransports, PeersOnOneHostUseSharedMemoryUnlessItIsLeftOut) {
  for (const bool no_shm : {false, true}) {
    const int world = 2, port = free_local_port();
    expect_all_ok(run_local_ranks(world, [&](int rank) {
      RankEnv env(rank, world, port, 20.0, no_shm);
      CHILD_CHECK(env.comm != nullptr, env.error);
      const std::vector<std::string> t = env.comm->peer_transports();
      CHILD_CHECK(t.size() == 2u, "one entry per rank");
      CHILD_CHECK(t[static_cast<size_t>(rank)] == "self", t[static_cast<size_t>(rank)]);
      const std::string peer = transport_kinds(t[static_cast<size_t>(1 - rank)]);
      CHILD_CHECK(peer == (no_shm ? "tcp" : "shm"), t[static_cast<size_t>(1 - rank)]);
      CHILD_CHECK(env.finish());
      return 0;
    }));
  }
}

// A rank whose process dies: the others fail fast, naming it (via the rendezvous).
TEST(CommFailure, DeadPeerIsNamedByTheOthers) {
  const int world = 3, port = free_local_port();
  const auto exits = run_local_ranks(world, [&](int rank) {
    const auto t0 = std::chrono::steady_clock::now();
    RankEnv env(rank, world, port, /*timeout_s=*/30.0);
    if (rank == 2) {
      if (env.comm == nullptr) return 1;
      ::_exit(7);  // dies without a word
    }
    if (env.comm == nullptr) {
      // Rank 2 may die while the others still finish the set-up barrier: they must name it
      // there too.
      CHILD_CHECK(env.error.find("rank 2") != std::string::npos, env.error);
      return 0;
    }
    float x = 1.0f;
    Status s = env.comm->all_reduce(&x, 1, ReduceOp::kSum);
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHILD_CHECK(!s.ok(), "all_reduce succeeded without rank 2");
    CHILD_CHECK(s.error().message.find("rank 2") != std::string::npos, s.error().message);
    CHILD_CHECK(waited < 10.0, "took " + std::to_string(waited) + " s");
    std::fprintf(stderr, "rank %d saw: %s\n", rank, s.error().message.c_str());
    return 0;
  });
  EXPECT_EQ(exits[0].code, 0);
  EXPECT_EQ(exits[1].code, 0);
  EXPECT_EQ(exits[2].code, 7);
}

// A rank that fails in an orderly way (an error, not a crash): the others get its reason at
// once, not a deadline later.
TEST(CommFailure, AFailedPeersReasonReachesTheOthers) {
  const int world = 3, port = free_local_port();
  const auto exits = run_local_ranks(world, [&](int rank) {
    RankEnv env(rank, world, port, /*timeout_s=*/30.0);
    const std::string reason = "rank 1 failed: data.train: disk on fire";
    // Rank 1 may fail while a peer is still finishing the set-up collective
    // (its sends complete before the peer has consumed them): the reason must
    // reach that peer there just the same.
    if (rank != 1 && env.comm == nullptr) {
      CHILD_CHECK(env.error.find(reason) != std::string::npos, env.error);
      return 0;
    }
    CHILD_CHECK(env.comm != nullptr, env.error);
    if (rank == 1) {
      env.rv->fail(reason);
      return 3;  // destructors run: an orderly exit
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<float> x(100, 1.0f);
    Status s = env.comm->all_reduce(x.data(), 100, ReduceOp::kSum);
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHILD_CHECK(!s.ok());
    CHILD_CHECK(s.error().message.find(reason) != std::string::npos, s.error().message);
    CHILD_CHECK(waited < 10.0, "took " + std::to_string(waited) + " s");
    return 0;
  });
  EXPECT_EQ(exits[0].code, 0);
  EXPECT_EQ(exits[1].code, 3);
  EXPECT_EQ(exits[2].code, 0);
}

// A rank that is alive but never joins the collective: the deadline names it.
TEST(CommFailure, SilentPeerIsNamedWithinTheDeadline) {
  const int world = 2, port = free_local_port();
  const auto exits = run_local_ranks(world, [&](int rank) {
    RankEnv env(rank, world, port, /*timeout_s=*/2.0);
    CHILD_CHECK(env.comm != nullptr, env.error);
    if (rank == 1) {
      std::this_thread::sleep_for(std::chrono::seconds(6));
      return 0;
    }
    std::vector<float> x(1000, 1.0f);
    const auto t0 = std::chrono::steady_clock::now();
    Status s = env.comm->all_reduce(x.data(), 1000, ReduceOp::kSum);
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHILD_CHECK(!s.ok());
    CHILD_CHECK(s.error().message.find("rank 1") != std::string::npos, s.error().message);
    CHILD_CHECK(waited >= 1.9 && waited < 5.0, "took " + std::to_string(waited) + " s");
    // The network's error, naming the peer (a job recovers from it elsewhere).
    CHILD_CHECK(s.error().code == ErrorCode::kUnreachable, error_code_name(s.error().code));
    CHILD_CHECK(env.comm->unreachable_peers() == std::vector<int>{1}, "unreachable_peers");
    return 0;
  });
  EXPECT_EQ(exits[0].code, 0);
}

TEST(Rendezvous, RefusesAWrongJobAndAnOutOfRangeRank) {
  const int port = free_local_port();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  auto server = RendezvousServer::start(addr, 2, "job-a", "secret-a");
  ASSERT_TRUE(server.ok()) << server.error().to_string();
  auto wrong_job = rendezvous_connect(addr, 0, 2, "job-b", "secret-a", 5.0);
  ASSERT_FALSE(wrong_job.ok());
  EXPECT_NE(wrong_job.error().message.find("job-a"), std::string::npos)
      << wrong_job.error().message;
  auto bad_rank = rendezvous_connect(addr, 2, 2, "job-a", "secret-a", 5.0);
  ASSERT_FALSE(bad_rank.ok());
  EXPECT_EQ(bad_rank.error().field, "--rank");
  EXPECT_EQ(parse_host_port("nohost", "--rendezvous").error().field, "--rendezvous");
  auto unreachable = rendezvous_connect("127.0.0.1:" + std::to_string(free_local_port()), 0, 1,
                                        "job", "secret", 0.3);
  ASSERT_FALSE(unreachable.ok());
  EXPECT_NE(unreachable.error().message.find("could not reach"), std::string::npos);
  EXPECT_FALSE(RendezvousServer::start("127.0.0.1:0", 2, "job-a", "").ok());  // no secret
}

// A stranger on the network cannot join a job's rendezvous: without the job's secret it is
// refused and closed, a frame announcing 64 MiB before joining costs nothing, and the job's
// real ranks still meet.
TEST(Rendezvous, StrangersWithoutTheSecretAreRefusedAndTheJobStillForms) {
  const int port = free_local_port();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  auto server = RendezvousServer::start(addr, 2, "job", "the-secret");
  ASSERT_TRUE(server.ok()) << server.error().to_string();
  for (const std::string& guess : {std::string("wrong"), std::string(), std::string("the-secre")}) {
    auto r = rendezvous_connect(addr, 0, 2, "job", guess, 5.0);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("secret"), std::string::npos) << r.error().message;
  }
  {
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket s(io);
    s.connect({boost::asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
    const unsigned char claim[4] = {0, 0, 0, 4};  // 64 MiB, little-endian
    boost::asio::write(s, boost::asio::buffer(claim, 4));
    char byte;
    boost::system::error_code ec;
    s.read_some(boost::asio::buffer(&byte, 1), ec);  // closed by the service
    EXPECT_TRUE(ec) << "the connection stayed open";
  }
  std::vector<std::unique_ptr<Rendezvous>> ranks(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      auto c = rendezvous_connect(addr, r, 2, "job", "the-secret", 10.0);
      if (c.ok()) ranks[static_cast<size_t>(r)] = std::move(c).value();
    });
  for (auto& t : threads) t.join();
  ASSERT_TRUE(ranks[0] && ranks[1]);
  std::vector<std::thread> ex;
  std::vector<std::vector<std::string>> got(2);
  for (int r = 0; r < 2; ++r)
    ex.emplace_back([&, r] {
      auto all = ranks[static_cast<size_t>(r)]->exchange("blob-" + std::to_string(r), 10.0);
      if (all.ok()) got[static_cast<size_t>(r)] = all.value();
    });
  for (auto& t : ex) t.join();
  EXPECT_EQ(got[0], (std::vector<std::string>{"blob-0", "blob-1"}));
  EXPECT_EQ(got[1], got[0]);
  for (auto& r : ranks) r->leave();
}

// On a GPU host: a one-rank NCCL communicator comes up and runs a collective (barrier, an
// all-reduce on its device scratch). Without a GPU it skips with the reason.
TEST(Nccl, OneRankCommunicatorRunsACollective) {
  std::string why;
  if (!nccl_available(&why)) GTEST_SKIP() << "NCCL communicator not testable here: " << why;
  const std::string addr = "127.0.0.1:" + std::to_string(free_local_port());
  auto server = RendezvousServer::start(addr, 1, "nccl", "nccl-secret");
  ASSERT_TRUE(server.ok());
  auto rv = rendezvous_connect(addr, 0, 1, "nccl", "nccl-secret", 10.0);
  ASSERT_TRUE(rv.ok());
  auto comm = make_nccl_communicator(
      *rv.value(),
      {.timeout_s = 30.0, .peer_names = {}, .no_shared_memory = false, .unreachable = nullptr}, 0);
  ASSERT_TRUE(comm.ok()) << comm.error().to_string();
  EXPECT_TRUE(comm.value()->barrier().ok());
  EXPECT_TRUE(comm.value()->finalize().ok());
}

}  // namespace
}  // namespace mohge
