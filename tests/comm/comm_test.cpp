// moe::comm tests. The multi-process ones start real comm_worker processes through the
// library's launcher (no mocks): correctness against closed forms, failures (kill -9, wrong
// token, mismatched collectives, stalls) and the launcher's own contract.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "comm/common.h"
#include "comm/env.h"
#include "comm/launcher.h"
#include "comm/socket.h"
#include "comm/store.h"
#include "comm/transport/buffers.h"
#include "comm/transport/message.h"

using namespace moe::comm;

namespace {

struct Run {
  LaunchResult res;
  std::mutex mu;
  std::vector<std::string> lines[64];  // per rank, stdout and stderr together
  std::string all(int r) {
    std::string s;
    for (auto& l : lines[r]) s += l + "\n";
    return s;
  }
};

// `ranks_per_host` > 0 makes fake hosts of that many consecutive ranks (MOE_HOST_ID).
std::unique_ptr<Run> run_workers(int n, std::vector<std::string> args,
                                 std::vector<std::pair<std::string, std::string>> env = {},
                                 LaunchOptions opt = {}, int ranks_per_host = 0) {
  auto run = std::make_unique<Run>();
  opt.nproc_per_node = n;
  if (ranks_per_host > 0) {
    std::string cmd =
        "MOE_HOST_ID=h$((MOE_RANK / " + std::to_string(ranks_per_host) + ")) exec " COMM_WORKER;
    for (auto& a : args) cmd += " " + a;
    opt.cmd = {"/bin/sh", "-c", cmd};
  } else {
    opt.cmd = {COMM_WORKER};
    for (auto& a : args) opt.cmd.push_back(a);
  }
  opt.env = env;
  opt.env.emplace_back("MOE_COMM_CONNECT_TIMEOUT", "30");
  auto user = opt.on_line;
  opt.on_line = [&run = *run, user](int r, const std::string& line, bool) {
    {
      std::lock_guard<std::mutex> lock(run.mu);
      run.lines[r].push_back(line);
    }
    if (user) user(r, line, false);
  };
  run->res = launch(opt);
  return run;
}

// Runs `shell` (sh -c) as `n` ranks that are not stopped when one fails, and returns every
// rank's exit code; `all` gets every output line.
LaunchResult launch_shell(int n, const std::string& shell,
                          std::vector<std::pair<std::string, std::string>> env, std::string* all) {
  LaunchOptions opt;
  opt.stop_others_on_failure = false;
  opt.nproc_per_node = n;
  opt.cmd = {"/bin/sh", "-c", shell};
  opt.env = std::move(env);
  std::mutex mu;
  opt.on_line = [&](int, const std::string& l, bool) {
    std::lock_guard<std::mutex> lock(mu);
    *all += l + "\n";
  };
  return launch(opt);
}

int free_port() {
  int port = 0;
  Fd fd = listen_tcp("", 0, &port);
  return port;
}

}  // namespace

// ---- single-process: env, parsers, store -------------------------------------------------

TEST(CommEnv, ReadsEachLauncherFamily) {
  std::map<std::string, std::string> vars;
  auto get = [&](const char* n) -> const char* {
    auto it = vars.find(n);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
  vars = {{"RANK", "3"},
          {"WORLD_SIZE", "8"},
          {"LOCAL_RANK", "1"},
          {"LOCAL_WORLD_SIZE", "2"},
          {"MASTER_ADDR", "10.0.0.1"},
          {"MASTER_PORT", "29500"},
          {"TORCHELASTIC_USE_AGENT_STORE", "True"}};
  JobEnv e = detect_env(get);
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "10.0.0.1");
  EXPECT_EQ(e.master_port, 29501);  // torchrun's agent holds 29500
  EXPECT_TRUE(e.token_is_derived);

  vars = {{"OMPI_COMM_WORLD_RANK", "2"},
          {"OMPI_COMM_WORLD_SIZE", "4"},
          {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
          {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
          {"MOE_JOB_TOKEN", "s3cret"}};
  e = detect_env(get);
  EXPECT_EQ(e.source, "openmpi");
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.token, "s3cret");
  EXPECT_FALSE(e.token_is_derived);
  // Without MOE_JOB_TOKEN the token comes from the job id, which Open MPI 4.1's mpirun puts
  // in OMPI_MCA_ess_base_jobid: two jobs differ, the ranks of one agree.
  vars.erase("MOE_JOB_TOKEN");
  vars["OMPI_MCA_ess_base_jobid"] = "851509249";
  e = detect_env(get);
  EXPECT_TRUE(e.token_is_derived);
  EXPECT_NE(e.token.find(":openmpi:851509249:"), std::string::npos) << e.token;
  // No port given: derived from the job id, the same on every rank, another for another job.
  const int port = e.master_port;
  EXPECT_GE(port, 29401);
  EXPECT_LE(port, 31400);
  EXPECT_EQ(detect_env(get).master_port, port);
  vars["OMPI_MCA_ess_base_jobid"] = "851509250";
  EXPECT_NE(detect_env(get).master_port, port);
  vars["MOE_MASTER_PORT"] = "29517";  // an explicit port wins
  EXPECT_EQ(detect_env(get).master_port, 29517);
  vars.erase("MOE_MASTER_PORT");

  vars = {{"SLURM_PROCID", "5"},
          {"SLURM_NTASKS", "8"},
          {"SLURM_LOCALID", "1"},
          {"SLURM_NTASKS_PER_NODE", "4(x2)"},
          {"SLURM_JOB_NODELIST", "node[07-08]"}};
  e = detect_env(get);
  EXPECT_EQ(e.source, "slurm");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.local_size, 4);
  EXPECT_EQ(e.master_addr, "node07");

  vars = {{"MOE_RANK", "1"},   {"MOE_WORLD_SIZE", "2"},     {"RANK", "0"},
          {"WORLD_SIZE", "9"}, {"MOE_MASTER_PORT", "1234"}, {"MOE_STORE_EXTERNAL", "1"}};
  e = detect_env(get);
  EXPECT_EQ(e.source, "moe");  // our names win
  EXPECT_EQ(e.size, 2);
  EXPECT_EQ(e.master_port, 1234);
  EXPECT_TRUE(e.store_external);

  vars = {{"MOE_RANK", "2"}, {"MOE_WORLD_SIZE", "2"}};
  EXPECT_THROW(detect_env(get), moe::Error);
  vars = {{"MOE_RANK", "0"}, {"MOE_WORLD_SIZE", "4"}, {"MOE_LOCAL_WORLD_SIZE", "2"}};
  EXPECT_THROW(detect_env(get), moe::Error);  // two hosts and no address for the store
}

TEST(CommEnv, SlurmNodeList) {
  EXPECT_EQ(slurm_first_host("node[03-05,9],gpu1"), "node03");
  EXPECT_EQ(slurm_first_host("a1,b2"), "a1");
  EXPECT_EQ(slurm_first_host("single"), "single");
}

// copy_block's streaming path (non-temporal stores after an unaligned head, a tail under 64
// bytes) against memmove, at every alignment of source and destination and lengths around
// each boundary; bytes around the destination stay untouched, and overlapping ranges are
// copied as memmove copies them.
TEST(CommCopy, StreamingCopyMatchesMemmoveAtEveryAlignmentAndLength) {
  const size_t kGuard = 64;
  std::mt19937 rng(7);
  for (size_t n : {size_t(0), size_t(1), size_t(15), size_t(16), size_t(17), size_t(63),
                   size_t(64), size_t(65), size_t(1000), size_t(1 << 20) + 77}) {
    std::vector<unsigned char> src(n + 32), dst(n + 32 + 2 * kGuard), want;
    for (auto& b : src) b = static_cast<unsigned char>(rng());
    for (size_t so : {0, 1, 8, 15}) {
      for (size_t d_off : {0, 3, 16, 31}) {
        std::fill(dst.begin(), dst.end(), 0xAB);
        want = dst;
        std::memmove(want.data() + kGuard + d_off, src.data() + so, n);
        copy_block(dst.data() + kGuard + d_off, src.data() + so, n, /*stream_min=*/1);
        ASSERT_EQ(dst, want) << "n " << n << " source offset " << so << " destination offset "
                             << d_off;
      }
    }
  }
  std::vector<unsigned char> buf(5000), want(5000);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<unsigned char>(i * 7);
  want = buf;
  std::memmove(want.data() + 3, want.data(), 4000);
  copy_block(buf.data() + 3, buf.data(), 4000, /*stream_min=*/1);
  EXPECT_EQ(buf, want);
}

// Communicator::alloc's registry: page-rounded zeroed memory that lookups find only when a
// whole range lies inside one buffer, ids never reused, and releases checked.
TEST(CommBuffers, RegistryFindsWholeRangesInsideOneBufferOnly) {
  BufferRegistry reg;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  SharedRegion a = reg.allocate(1000), b = reg.allocate(3 * page + 1);
  EXPECT_EQ(a.bytes, page);
  EXPECT_EQ(b.bytes, 4 * page);
  EXPECT_NE(a.id, b.id);
  EXPECT_GE(a.fd, 0);
  EXPECT_EQ(reg.live(), 2u);
  for (uint64_t i = 0; i < b.bytes; ++i) ASSERT_EQ(b.base[i], 0) << i;
  SharedRegion got;
  ASSERT_TRUE(reg.find(b.base + 10, 100, &got));
  EXPECT_EQ(got.id, b.id);
  EXPECT_TRUE(reg.find(b.base, b.bytes, &got));
  EXPECT_FALSE(reg.find(b.base + 1, b.bytes, &got));  // runs past the end
  EXPECT_FALSE(reg.find(b.base - 1, 2, &got));        // starts before it
  int here = 0;
  EXPECT_FALSE(reg.find(&here, sizeof here, &got));
  int released = 0;
  reg.set_release_hook([&] { ++released; });
  reg.release(a.base);
  EXPECT_EQ(released, 1);
  EXPECT_FALSE(reg.find(a.base, 1, &got));
  EXPECT_THROW(reg.release(a.base), moe::Error);
  SharedRegion c = reg.allocate(10);
  EXPECT_GT(c.id, b.id);
  reg.set_release_hook(nullptr);
  reg.release(b.base);
  reg.release(c.base);
  EXPECT_EQ(released, 1);
  EXPECT_EQ(reg.live(), 0u);
}

TEST(CommParsers, RandomBytesNeverCrashTheHeaderChecks) {
  std::mt19937_64 rng(1);
  int accepted = 0;
  for (int i = 0; i < 200000; ++i) {
    MsgHeader h;
    StoreRequestHeader s;
    auto* p = reinterpret_cast<uint64_t*>(&h);
    for (size_t j = 0; j < sizeof h / 8; ++j) p[j] = rng();
    if (i % 2) h.magic = kMsgMagic;  // get past the first check half the time
    if (i % 4 == 1)
      h.kind = uint8_t(1 + rng() % 9), h.redop = 0, h.total &= 0xffff, h.offset &= 0xff,
      h.chunk_len &= 0xff, h.flags = 0;
    std::memcpy(&s, p, sizeof s);
    accepted += check_header(h).empty();
    check_store_request(s);
  }
  EXPECT_GT(accepted, 0);
  // The single-copy flags: only where the transport allows them, and never with a payload.
  MsgHeader f{};
  f.magic = kMsgMagic;
  f.kind = 1;
  f.total = 1 << 20;
  f.flags = kFlagCmaOffer;
  EXPECT_NE(check_header(f), "");  // TCP does not know them
  EXPECT_EQ(check_header(f, kFlagCmaOffer | kFlagCmaDone), "");
  f.flags = kFlagCmaOffer | kFlagCmaDone;
  EXPECT_NE(check_header(f, kFlagCmaOffer | kFlagCmaDone), "");
  f.flags = kFlagCmaDone;
  f.chunk_len = 64;
  EXPECT_NE(check_header(f, kFlagCmaOffer | kFlagCmaDone), "");
  f.chunk_len = 0;
  f.flags = 4;
  EXPECT_NE(check_header(f, kFlagCmaOffer | kFlagCmaDone), "");
  MsgHeader h{};
  h.magic = kMsgMagic;
  h.kind = 1;
  h.total = 100;
  h.offset = 90;
  h.chunk_len = 11;
  EXPECT_NE(check_header(h), "");  // runs past the end of its message
  h.chunk_len = 10;
  EXPECT_EQ(check_header(h), "");
}

TEST(CommStore, SetGetAddWaitDeleteAndRefusesBadToken) {
  StoreServer server("127.0.0.1", 0, "right");
  StoreClient a("127.0.0.1", server.port(), "right", 5);
  StoreClient b("127.0.0.1", server.port(), "right", 5);
  a.set("k", "v1");
  EXPECT_EQ(b.get("k"), "v1");
  EXPECT_EQ(a.add("n", 2), 2);
  EXPECT_EQ(b.add("n", 5), 7);
  EXPECT_TRUE(a.check("k"));
  EXPECT_FALSE(a.check("nope"));
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    b.set("late", "x");
  });
  a.wait({"k", "late"});  // blocks until b sets it
  later.join();
  EXPECT_TRUE(a.del("k"));
  EXPECT_FALSE(a.check("k"));
  EXPECT_THROW(StoreClient("127.0.0.1", server.port(), "wrong", 5), moe::Error);
  for (int i = 0; i < 200 && server.refused_connections() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the server logs it after
  EXPECT_EQ(server.refused_connections(), 1);
  EXPECT_EQ(a.get("late"), "x");  // the store kept serving
  StoreClient impatient("127.0.0.1", server.port(), "right", 0.2);
  EXPECT_THROW(impatient.get("never"), moe::Error);
}

// ---- multi-process ---------------------------------------------------------------------

// The closed-form sweep over each transport:
//   tcp    one host, MOE_COMM_TRANSPORT=tcp: every pair over TCP
//   shm    one host, MOE_COMM_TRANSPORT=shm: every pair over shared memory (messages from
//          64 KiB by single copy where the host allows it, smaller ones through the rings)
//   copy   the same with MOE_COMM_SHM_CMA=0: every message through the rings
//   hosts  fake hosts of two ranks: shared memory inside a host, TCP between hosts, and the
//          hierarchical all_reduce and two-level all_to_allv beside the flat algorithms
//   reg    shm with every buffer from Communicator::alloc: single-copy messages are copied
//          from, and reduced straight from, mapped peer buffers
//   nomap  the same with MOE_COMM_SHM_MAP=0: those buffers read by process_vm_readv instead
struct SweepCase {
  std::string mode;
  int n;
};
void PrintTo(const SweepCase& c, std::ostream* os) { *os << c.mode << " x " << c.n; }
class CommSweep : public ::testing::TestWithParam<SweepCase> {};

TEST_P(CommSweep, EveryCollectiveDtypeOpAlgorithmAndSize) {
  const auto [mode, n] = GetParam();
  // One big f32 case (ring with several pipelined pieces); smaller for larger oversubscription.
  const std::string big = std::to_string(n <= 4 ? (1 << 20) + 3 : (1 << 18) + 3);
  // A 64 MiB all_reduce with every algorithm, on 4 ranks.
  const std::string huge = n == 4 ? std::to_string(64 << 20) : "0";
  std::vector<std::pair<std::string, std::string>> env;
  if (mode != "hosts")
    env.emplace_back("MOE_COMM_TRANSPORT",
                     mode == "copy" || mode == "reg" || mode == "nomap" ? "shm" : mode);
  if (mode == "copy") env.emplace_back("MOE_COMM_SHM_CMA", "0");
  if (mode == "reg" || mode == "nomap") env.emplace_back("MOE_TEST_REGISTERED", "1");
  if (mode == "nomap") env.emplace_back("MOE_COMM_SHM_MAP", "0");
  auto run = run_workers(n, {"sweep", big, huge}, env, {}, mode == "hosts" ? 2 : 0);
  for (int r = 0; r < n; ++r)
    EXPECT_EQ(run->res.codes[r], 0) << "rank " << r << ":\n" << run->all(r);
  const std::string out = run->all(0);
  EXPECT_NE(out.find(" 0 failures"), std::string::npos) << out;
  // Rank 0 reaches its peers over the transport the mode asks for.
  const int shm = mode == "tcp" ? 0 : mode == "hosts" ? std::min(1, n - 1) : n - 1;
  EXPECT_NE(out.find("transport shm to " + std::to_string(shm) + " ranks, tcp to " +
                     std::to_string(n - 1 - shm) + " ranks"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(", hosts " + std::to_string(mode == "hosts" ? (n + 1) / 2 : 1)),
            std::string::npos)
      << out;
  if (mode == "copy") {
    EXPECT_EQ(out.find("single copy"), std::string::npos) << out;
  }
  if (mode == "reg" || mode == "nomap") {
    if (out.find("(shm: single copy") == std::string::npos)
      GTEST_SKIP() << "no single copy on this host (process_vm_readv forbidden):\n" << out;
    for (int r = 0; r < n; ++r)
      if (run->all(r).find("cannot map rank") != std::string::npos)
        GTEST_SKIP() << "this host refuses pidfd_getfd between ranks:\n" << run->all(r);
    // Every rank copied and reduced from its peers' mapped buffers.
    for (int r = 0; r < n; ++r) {
      const std::string o = run->all(r);
      const auto at = o.find("sweep: rank " + std::to_string(r) + " offers read: ");
      ASSERT_NE(at, std::string::npos) << o;
      unsigned long long cma = 0, reads = 0, reduces = 0;
      ASSERT_EQ(std::sscanf(o.c_str() + at,
                            "sweep: rank %*d offers read: %llu by cma, "
                            "%llu mapped, %llu reduced from mapped",
                            &cma, &reads, &reduces),
                3)
          << o;
      if (mode == "reg") {
        EXPECT_GT(reads, 0u) << o;
        EXPECT_GT(reduces, 0u) << o;
      } else {  // the same buffers, read by process_vm_readv
        EXPECT_EQ(reads + reduces, 0u) << o;
        EXPECT_GT(cma, 0u) << o;
      }
    }
  }
}
std::vector<SweepCase> sweep_cases() {
  std::vector<SweepCase> v;
  for (const char* mode : {"tcp", "shm", "hosts"})
    for (int n = 1; n <= 8; ++n) v.push_back({mode, n});
  for (int n : {2, 3, 8}) v.push_back({"copy", n});
  for (int n : {2, 3, 4}) v.push_back({"reg", n});
  v.push_back({"nomap", 3});
  return v;
}
INSTANTIATE_TEST_SUITE_P(World, CommSweep, ::testing::ValuesIn(sweep_cases()),
                         [](const ::testing::TestParamInfo<SweepCase>& i) {
                           return i.param.mode + std::to_string(i.param.n);
                         });

// Messages from 64 KiB between local ranks are read straight from the sender's memory
// (process_vm_readv). MOE_COMM_SHM_CMA=1 insists on it: a host whose ptrace policy or seccomp
// profile forbids it fails at start with the reason, and then this test skips.
TEST(CommMulti, SingleCopyBetweenLocalRanksWhereAllowed) {
  auto run = run_workers(3, {"sweep", std::to_string((1 << 20) + 3), "0"},
                         {{"MOE_COMM_TRANSPORT", "shm"}, {"MOE_COMM_SHM_CMA", "1"}});
  const std::string out = run->all(0);
  if (out.find("single-copy reads between local ranks are not possible") != std::string::npos)
    GTEST_SKIP() << "this host forbids process_vm_readv between ranks:\n" << out;
  for (int r = 0; r < 3; ++r)
    EXPECT_EQ(run->res.codes[r], 0) << "rank " << r << ":\n" << run->all(r);
  EXPECT_NE(out.find("(shm: single copy from 64 KiB)"), std::string::npos) << out;
  EXPECT_NE(out.find(" 0 failures"), std::string::npos) << out;
}

// A rank in its own pid namespace cannot be read with process_vm_readv, nor read the others:
// the start-up probe sees it, every rank copies through the rings instead, and the job is
// still right. With MOE_COMM_SHM_CMA=1 the job stops at start and says why.
TEST(CommMulti, SingleCopyFallsBackWhereAPeerCannotBeRead) {
  if (std::system("unshare --pid --fork true >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "unshare --pid --fork does not work here (it needs root and pid namespaces)";
  for (const std::string cma : {"-1", "1"}) {
    std::string all;
    const LaunchResult res =
        launch_shell(3,
                     std::string("[ $MOE_RANK = 1 ] && P='unshare --pid --fork'; exec $P ") +
                         COMM_WORKER + " sweep 65539 0",
                     {{"MOE_COMM_TRANSPORT", "shm"},
                      {"MOE_COMM_SHM_CMA", cma},
                      {"MOE_COMM_CONNECT_TIMEOUT", "20"}},
                     &all);
    if (cma == "-1") {
      for (int r = 0; r < 3; ++r) EXPECT_EQ(res.codes[r], 0) << all;
      EXPECT_NE(all.find("transport shm to 2 ranks, tcp to 0 ranks, hosts 1"), std::string::npos)
          << all;  // and not "(shm: single copy ...)"
      EXPECT_NE(all.find(" 0 failures"), std::string::npos) << all;
    } else {
      for (int r = 0; r < 3; ++r) EXPECT_NE(res.codes[r], 0) << all;
      EXPECT_NE(all.find("single-copy reads between local ranks are not possible"),
                std::string::npos)
          << all;
    }
  }
}

TEST(CommMulti, SplitGivesIndependentGroups) {
  for (int n : {4, 5}) {
    auto run = run_workers(n, {"split"});
    for (int r = 0; r < n; ++r) EXPECT_EQ(run->res.codes[r], 0) << run->all(r);
  }
}

TEST(CommMulti, SendRecvRing) {
  auto run = run_workers(3, {"p2p"});
  for (int r = 0; r < 3; ++r) EXPECT_EQ(run->res.codes[r], 0) << run->all(r);
  EXPECT_NE(run->all(0).find("p2p ok"), std::string::npos);
}

TEST(CommMulti, AReceivePostedWhileItsMessageArrivesGetsEveryByte) {
  for (const char* transport : {"tcp", "shm"}) {
    auto run = run_workers(2, {"late_recv"}, {{"MOE_COMM_TRANSPORT", transport}});
    for (int r = 0; r < 2; ++r) EXPECT_EQ(run->res.codes[r], 0) << transport << "\n" << run->all(r);
    EXPECT_NE(run->all(1).find("late_recv ok"), std::string::npos) << transport;
  }
}

// bf16, fp8 and int8 on the wire: reduce_scatter, all_reduce and all_to_allv within the
// stated error bounds of exact sums, traffic counters equal to the encoded bytes, identical
// all_reduce results on every rank, error feedback over 100 steps (compressed_worker.cpp).
// Three ranks on one host, and two fake hosts of two (pairs across hosts go over TCP; the
// all_to_allv there also runs the two-level algorithm on encoded bytes).
TEST(CommMulti, CompressedCollectivesStayWithinTheirErrorBounds) {
  struct Case {
    int n, per_host;
    const char* a2a;
  };
  for (const Case& k : {Case{3, 0, "pairwise"}, Case{4, 2, "two_level"}}) {
    auto run = run_workers(k.n, {"compressed"}, {{"MOE_COMM_ALGO_A2A", k.a2a}}, {}, k.per_host);
    for (int r = 0; r < k.n; ++r) {
      EXPECT_EQ(run->res.codes[r], 0) << run->all(r);
      EXPECT_NE(run->all(r).find("compressed ok"), std::string::npos) << run->all(r);
    }
    std::printf("%d ranks (%s):\n%s", k.n, k.a2a, run->all(0).c_str());
  }
}

TEST(CommMulti, AsyncOperationsKeepCallOrder) {
  auto run = run_workers(3, {"async"});
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(run->res.codes[r], 0) << run->all(r);
    EXPECT_NE(run->all(r).find("async ok"), std::string::npos) << run->all(r);
  }
}

TEST(CommMulti, HostTopologyAndEmulatedSlowLinks) {
  // Two "hosts" of two ranks (MOE_HOST_ID), 30 ms of emulated latency between hosts only.
  LaunchOptions opt;
  auto run = std::make_unique<::Run>();
  opt.nproc_per_node = 4;
  opt.cmd = {"/bin/sh", "-c",
             std::string("MOE_HOST_ID=h$((MOE_RANK / 2)) exec ") + COMM_WORKER + " topology"};
  opt.env = {{"MOE_COMM_EMU_LATENCY_US", "30000"}, {"MOE_COMM_EMU_SCOPE", "remote"}};
  opt.on_line = [&](int r, const std::string& l, bool) {
    std::lock_guard<std::mutex> lock(run->mu);
    run->lines[r].push_back(l);
  };
  run->res = launch(opt);
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(run->res.codes[r], 0) << run->all(r);
    const std::string out = run->all(r);
    double ms = 0;
    int hosts = 0, local = -1, lsize = 0;
    ASSERT_EQ(std::sscanf(out.c_str(), "topology rank %*d: hosts %d, local %d of %d, barrier %lf",
                          &hosts, &local, &lsize, &ms),
              4)
        << out;
    EXPECT_EQ(hosts, 2);
    EXPECT_EQ(local, r % 2);
    EXPECT_EQ(lsize, 2);
    EXPECT_GE(ms, 30.0) << "a 4-rank barrier crosses the slow link at least once";
  }
}

TEST(CommMulti, HierarchicalBeatsFlatRingAcrossSlowLinks) {
  // Two fake hosts of two ranks; links between them get 5 ms of latency and 50 MB/s. In the
  // flat ring (0 1 | 2 3) rank 1 sends all its 2(n-1)/n x 8 MiB = 12 MiB over the slow link
  // to rank 2 (>= 252 ms). In the hierarchical one each slow link carries one 4 MiB segment
  // (2 MiB in each of two steps: >= 2 x (5 + 42) ms), about a third.
  auto run = run_workers(4, {"hier_vs_ring", std::to_string(8 << 20)},
                         {{"MOE_COMM_EMU_LATENCY_US", "5000"},
                          {"MOE_COMM_EMU_BW_MBPS", "50"},
                          {"MOE_COMM_EMU_SCOPE", "remote"}},
                         {}, 2);
  for (int r = 0; r < 4; ++r) ASSERT_EQ(run->res.codes[r], 0) << run->all(r);
  const std::string out = run->all(0);
  double ring = 0, hier = 0;
  int hosts = 0;
  ASSERT_EQ(std::sscanf(out.c_str() + out.find("hier_vs_ring:"),
                        "hier_vs_ring: hosts %d, ring %lf ms, hier %lf ms", &hosts, &ring, &hier),
            3)
      << out;
  EXPECT_EQ(hosts, 2);
  std::printf("ring %.1f ms, hier %.1f ms\n", ring, hier);
  // What the emulation guarantees (this shows the bandwidth cap applies, per link).
  const double mib_ms = 1.048576 / 50 * 1000;  // one MiB through a 50 MB/s link
  EXPECT_GE(ring, 12 * mib_ms) << out;
  EXPECT_GE(hier, 2 * (5 + 2 * mib_ms)) << out;
  // The ordering, with a wide margin (about 2.5x expected).
  EXPECT_LT(hier * 1.5, ring) << out;
}

TEST(CommMulti, SeveralSocketsPerPeer) {
  auto run =
      run_workers(3, {"sweep", "70001"}, {{"MOE_COMM_SOCKETS", "3"}, {"MOE_COMM_CHUNK", "4096"}});
  for (int r = 0; r < 3; ++r) EXPECT_EQ(run->res.codes[r], 0) << run->all(r);
}

// The sockets between ranks use the congestion control asked for, as the kernel reports it
// back: by default reno to ranks on this host and the host's default to other (here fake)
// hosts; a name, or "system", for every peer. A name the host refuses stops every rank at
// start, saying what the host allows.
TEST(CommMulti, TcpCongestionControlIsTheOneAsked) {
  std::string host_default;
  std::ifstream("/proc/sys/net/ipv4/tcp_congestion_control") >> host_default;
  if (host_default.empty()) GTEST_SKIP() << "/proc/sys/net/ipv4/tcp_congestion_control unreadable";
  const std::string mixed =
      host_default == "reno" ? "reno" : "reno on this host, " + host_default + " to other hosts";
  struct Case {
    std::string asked;
    int ranks_per_host;
    std::string rank0, rank2;  // what ranks 0 and 2 report
  };
  std::vector<Case> cases = {{"", 0, "reno", "reno"},
                             {"", 2, mixed, host_default},
                             {"system", 0, host_default, host_default}};
  const std::string allowed = " " + allowed_congestion_controls() + " ";
  if (allowed.find(" cubic ") != std::string::npos) cases.push_back({"cubic", 2, "cubic", "cubic"});
  for (const Case& k : cases) {
    std::vector<std::pair<std::string, std::string>> env = {{"MOE_COMM_TRANSPORT", "tcp"}};
    if (!k.asked.empty()) env.emplace_back("MOE_COMM_TCP_CONGESTION", k.asked);
    auto run = run_workers(3, {"hello"}, env, {}, k.ranks_per_host);
    for (int r = 0; r < 3; ++r) EXPECT_EQ(run->res.codes[r], 0) << run->all(r);
    EXPECT_NE(run->all(0).find("tcp to 2 ranks (tcp: " + k.rank0 + ")"), std::string::npos)
        << "asked '" << k.asked << "':\n"
        << run->all(0);
    EXPECT_NE(run->all(2).find("tcp to 2 ranks (tcp: " + k.rank2 + ")"), std::string::npos)
        << "asked '" << k.asked << "':\n"
        << run->all(2);
  }
  LaunchOptions opt;
  opt.stop_others_on_failure = false;
  auto run = run_workers(2, {"hello"}, {{"MOE_COMM_TCP_CONGESTION", "no_such_cc"}}, opt);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(run->res.codes[r], 0) << run->all(r);
    EXPECT_NE(run->all(r).find("MOE_COMM_TCP_CONGESTION=no_such_cc: the kernel refused it"),
              std::string::npos)
        << run->all(r);
    EXPECT_NE(run->all(r).find("this host allows: "), std::string::npos) << run->all(r);
  }
}

// kill -9 one rank during a 64 MiB all_reduce: every other rank exits non-zero within 10 s
// with a message naming it, whether the data moves over TCP or shared memory, from heap
// memory or from Communicator::alloc buffers the peers map (and keep mapped after the kill).
class CommKill : public ::testing::TestWithParam<std::string> {};

TEST_P(CommKill, DuringA64MiBAllReduceEveryRankNamesTheVictimWithin10s) {
  const int n = 4, victim = 2;
  std::atomic<pid_t> pids[8];
  std::atomic<double> killed_at{0};
  std::thread killer;
  std::atomic<bool> started{false};
  const auto t0 = std::chrono::steady_clock::now();
  LaunchOptions opt;
  opt.stop_others_on_failure = false;
  opt.on_spawn = [&](int r, pid_t p) { pids[r] = p; };
  opt.on_line = [&](int r, const std::string& line, bool) {
    if (r == 0 && line == "loop started" && !started.exchange(true)) {
      killer = std::thread([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        killed_at = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        kill(pids[victim], SIGKILL);
      });
    }
  };
  const bool shm = GetParam() != "tcp";
  auto run = run_workers(n, {"loop", std::to_string(64 << 20)},
                         {{"MOE_COMM_TIMEOUT", "60"},
                          {"MOE_COMM_TRANSPORT", shm ? "shm" : "tcp"},
                          {"MOE_TEST_REGISTERED", GetParam() == "registered" ? "1" : "0"}},
                         opt);
  if (killer.joinable()) killer.join();
  ASSERT_TRUE(started.load()) << run->all(0);
  EXPECT_NE(run->all(0).find("transport " + std::string(shm ? "shm to 3" : "shm to 0")),
            std::string::npos)
      << run->all(0);
  EXPECT_EQ(run->res.codes[victim], 128 + SIGKILL);
  for (int r = 0; r < n; ++r) {
    if (r == victim) continue;
    const std::string out = run->all(r);
    EXPECT_NE(run->res.codes[r], 0) << out;
    EXPECT_NE(out.find("rank " + std::to_string(victim) + " closed its connection"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find("all_reduce #"), std::string::npos) << out;
    EXPECT_LT(run->res.exit_seconds[r] - killed_at, 10.0) << "rank " << r;
  }
}
INSTANTIATE_TEST_SUITE_P(Transport, CommKill, ::testing::Values("tcp", "shm", "registered"));

// Buffers that come and go, often at the same address: every all_reduce reads the new one
// (a mapping is per buffer id, never per address), and a buffer a peer released is unmapped
// here the next time that peer offers one, so churn does not pin memory (without that, the
// per-peer cap of 32 mappings is reached).
TEST(CommMulti, AllocBuffersThatComeAndGoAreReadFreshAndUnmapped) {
  auto run = run_workers(3, {"churn"}, {{"MOE_COMM_TRANSPORT", "shm"}});
  for (int r = 0; r < 3; ++r) {
    const std::string o = run->all(r);
    EXPECT_EQ(run->res.codes[r], 0) << o;
    int maps = -1, wrong = -1;
    unsigned long long reduces = 0;
    const auto at = o.find("churn: rank ");
    ASSERT_NE(at, std::string::npos) << o;
    ASSERT_EQ(std::sscanf(o.c_str() + at,
                          "churn: rank %*d maps %d alloc buffers after 40, %llu mapped reduces, "
                          "%d wrong",
                          &maps, &reduces, &wrong),
              3)
        << o;
    EXPECT_EQ(wrong, 0) << o;
    if (o.find("cannot map rank") != std::string::npos || reduces == 0) {
      EXPECT_EQ(maps, 0) << o;  // nothing mapped: single copy by process_vm_readv or rings
      continue;
    }
    EXPECT_LE(maps, 2) << o;  // the peers' last buffers at most
  }
}

TEST(CommFailure, WrongTokenIsRefusedWhileTheJobCompletes) {
  const int port = free_port();
  LaunchOptions opt;
  opt.master_port = port;
  std::string impostor_out;
  int impostor_code = -1;
  std::thread impostor;
  opt.on_spawn = [&](int r, pid_t) {
    if (r != 0) return;
    impostor = std::thread([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      const std::string cmd =
          "MOE_RANK=1 MOE_WORLD_SIZE=3 MOE_MASTER_ADDR=127.0.0.1 "
          "MOE_MASTER_PORT=" +
          std::to_string(port) +
          " MOE_STORE_EXTERNAL=1 MOE_JOB_TOKEN=guess "
          "MOE_COMM_CONNECT_TIMEOUT=5 " COMM_WORKER " hello 2>&1";
      FILE* f = popen(cmd.c_str(), "r");
      char buf[4096];
      size_t k;
      while ((k = fread(buf, 1, sizeof buf, f)) > 0) impostor_out.append(buf, k);
      impostor_code = WEXITSTATUS(pclose(f));
    });
  };
  // The real job waits (rank 1 sleeps 2 s) so the impostor knocks while it runs.
  auto run = run_workers(3, {"stall", "2"}, {}, opt);
  impostor.join();
  for (int r = 0; r < 3; ++r) EXPECT_EQ(run->res.codes[r], 0) << run->all(r);
  EXPECT_EQ(impostor_code, 3) << impostor_out;
  EXPECT_NE(impostor_out.find("job's token"), std::string::npos) << impostor_out;
}

class CommMismatch : public ::testing::TestWithParam<std::string> {};

TEST_P(CommMismatch, MismatchedCollectivesAreReportedNotHung) {
  for (const char* kind : {"kind", "size"}) {
    LaunchOptions opt;
    opt.stop_others_on_failure = false;
    const auto t0 = std::chrono::steady_clock::now();
    auto run = run_workers(3, {"mismatch", kind},
                           {{"MOE_COMM_TIMEOUT", "60"}, {"MOE_COMM_TRANSPORT", GetParam()}}, opt);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(secs, 30);
    std::string everything;
    for (int r = 0; r < 3; ++r) {
      EXPECT_NE(run->res.codes[r], 0) << run->all(r);
      everything += run->all(r);
    }
    EXPECT_NE(everything.find("mismatched collectives"), std::string::npos) << everything;
    if (std::string(kind) == "kind")
      EXPECT_NE(everything.find("all_gather"), std::string::npos) << everything;
    else
      EXPECT_NE(everything.find("2048 x float"), std::string::npos) << everything;
  }
}

TEST_P(CommMismatch, StalledRankHitsTheDeadline) {
  LaunchOptions opt;
  opt.stop_others_on_failure = false;
  auto run = run_workers(2, {"stall", "3"},
                         {{"MOE_COMM_TIMEOUT", "1"}, {"MOE_COMM_TRANSPORT", GetParam()}}, opt);
  EXPECT_EQ(run->res.codes[0], 3);
  EXPECT_NE(run->all(0).find("timed out waiting for rank 1"), std::string::npos) << run->all(0);
}
INSTANTIATE_TEST_SUITE_P(Transport, CommMismatch, ::testing::Values("tcp", "shm"));

TEST(CommFailure, TransportChoiceMustAgree) {
  // Rank 1 asks for TCP, the others for shared memory: refused at start, not hung later.
  std::string all;
  const LaunchResult res =
      launch_shell(3,
                   std::string("[ $MOE_RANK = 1 ] && export MOE_COMM_TRANSPORT=tcp; exec ") +
                       COMM_WORKER + " hello",
                   {{"MOE_COMM_TRANSPORT", "shm"}, {"MOE_COMM_CONNECT_TIMEOUT", "10"}}, &all);
  for (int r = 0; r < 3; ++r) EXPECT_NE(res.codes[r], 0) << all;
  EXPECT_NE(all.find("has MOE_COMM_TRANSPORT=tcp"), std::string::npos) << all;
}

TEST(CommLauncher, FirstFailureStopsTheJobWithItsCode) {
  LaunchOptions opt;
  opt.nproc_per_node = 3;
  opt.cmd = {"/bin/sh", "-c",
             "echo up $MOE_RANK/$MOE_WORLD_SIZE; "
             "if [ $MOE_RANK = 1 ]; then sleep 0.5; exit 7; fi; sleep 30"};
  std::mutex mu;
  std::vector<std::string> seen;
  opt.on_line = [&](int r, const std::string& l, bool) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(std::to_string(r) + ":" + l);
  };
  const auto t0 = std::chrono::steady_clock::now();
  const LaunchResult res = launch(opt);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(res.exit_code, 7);
  EXPECT_EQ(res.failed_rank, 1);
  EXPECT_LT(secs, 10);
  EXPECT_NE(std::find(seen.begin(), seen.end(), "2:up 2/3"), seen.end());
}
