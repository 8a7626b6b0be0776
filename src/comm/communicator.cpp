#include "comm/communicator.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

namespace moe::comm {

struct Communicator::Shared {
  JobEnv env;
  // Destroyed bottom-up: the transport says goodbye before the store goes away.
  std::unique_ptr<StoreServer> server;
  std::unique_ptr<StoreClient> store;
  std::unique_ptr<Transport> transport;
  std::vector<std::string> host_names;  // per global rank
  TrafficCounters traffic;
};

namespace {

uint64_t mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::string host_id() {
  std::string h = env_str("MOE_HOST_ID", "");
  if (!h.empty()) return h;
  char buf[256] = {0};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

}  // namespace

CommOptions CommOptions::from_env() {
  CommOptions o;
  o.timeout_s = env_double("MOE_COMM_TIMEOUT", o.timeout_s);
  MOE_CHECK(o.timeout_s > 0, "comm", "MOE_COMM_TIMEOUT must be positive seconds");
  o.algo = env_str("MOE_COMM_ALGO", "");
  o.rhd_max_bytes = static_cast<uint64_t>(env_int("MOE_COMM_RHD_MAX", int64_t(o.rhd_max_bytes)));
  o.rd_max_bytes = static_cast<uint64_t>(env_int("MOE_COMM_RD_MAX", int64_t(o.rd_max_bytes)));
  o.piece_bytes = static_cast<uint64_t>(env_int("MOE_COMM_PIECE", int64_t(o.piece_bytes)));
  MOE_CHECK(o.piece_bytes >= 64, "comm", "MOE_COMM_PIECE must be at least 64 bytes");
  o.hier_min_bytes =
      static_cast<uint64_t>(env_int("MOE_COMM_HIER_MIN", int64_t(o.hier_min_bytes)));
  o.direct_min_bytes =
      static_cast<uint64_t>(env_int("MOE_COMM_DIRECT_MIN", int64_t(o.direct_min_bytes)));
  o.direct_max_bytes =
      static_cast<uint64_t>(env_int("MOE_COMM_DIRECT_MAX", int64_t(o.direct_max_bytes)));
  o.algo_a2a = env_str("MOE_COMM_ALGO_A2A", "");
  o.transport = env_str("MOE_COMM_TRANSPORT", "auto");
  MOE_CHECK(o.transport == "auto" || o.transport == "shm" || o.transport == "tcp", "comm",
            "MOE_COMM_TRANSPORT='", o.transport, "': use auto, shm or tcp");
  o.tcp = TcpOptions::from_env();
  o.shm = ShmOptions::from_env();
  return o;
}

std::shared_ptr<Communicator> Communicator::from_env() {
  return init(detect_env(), CommOptions::from_env());
}

std::shared_ptr<Communicator> Communicator::init(const JobEnv& env, const CommOptions& opt) {
  auto sh = std::make_shared<Shared>();
  sh->env = env;
  if (env.rank == 0 && env.token_is_derived)
    MOE_COMM_WARN("no MOE_JOB_TOKEN: connections prove a token derived from the job id, which "
                  "does not keep out others on this network; `moe launch` sets one, or export "
                  "MOE_JOB_TOKEN=$(openssl rand -hex 32) on every rank");
  if (env.rank == 0 && !env.store_external)
    sh->server = std::make_unique<StoreServer>("", env.master_port, env.token);
  sh->store = std::make_unique<StoreClient>(env.master_addr, env.master_port, env.token,
                                            opt.tcp.connect_timeout_s);
  // Host names are read before the mesh is connected: once it is, rank 0 may finish and take
  // the store down.
  const std::string prefix = "moe/";
  // Host name and transport choice of every rank: ranks on one host must agree on whether
  // they talk over shared memory, or each would wait for the other on another channel.
  sh->store->set(prefix + "host/" + std::to_string(env.rank), host_id() + "\n" + opt.transport);
  std::vector<std::string> modes;
  for (int r = 0; r < env.size; ++r) {
    const std::string v = sh->store->get(prefix + "host/" + std::to_string(r));
    const size_t nl = v.rfind('\n');
    sh->host_names.push_back(v.substr(0, nl));
    modes.push_back(v.substr(nl + 1));
    MOE_CHECK(modes[r] == opt.transport, "comm", "rank ", r, " has MOE_COMM_TRANSPORT=",
              modes[r], " but rank ", env.rank, " has ", opt.transport,
              ": set it the same on every rank");
  }
  // Shared memory between ranks of this host, unless disabled or every link is emulated
  // (the latency/bandwidth test hook lives in the TCP transport).
  std::vector<int> shm_group;
  const bool emulate_all = opt.tcp.emulating() && opt.tcp.emu_scope == "all";
  if (opt.transport != "tcp" && !emulate_all)
    for (int r = 0; r < env.size; ++r)
      if (sh->host_names[r] == sh->host_names[env.rank]) shm_group.push_back(r);
  if (emulate_all && opt.transport == "shm" && env.rank == 0)
    MOE_COMM_WARN("MOE_COMM_EMU_SCOPE=all emulates every link over TCP: shared memory is off");
  sh->transport = std::make_unique<Transport>(*sh->store, prefix, env.token, env.rank, env.size,
                                              opt.tcp, opt.shm, shm_group);

  std::shared_ptr<Communicator> c(new Communicator());
  c->shared_ = sh;
  c->opt_ = opt;
  c->algo_ = parse_algo(opt.algo);
  c->algo_a2a_ = parse_algo_a2a(opt.algo_a2a);
  for (int r = 0; r < env.size; ++r) c->ranks_.push_back(r);
  c->rank_ = env.rank;
  c->comm_id_ = mix(0x6d6f65);  // the world
  c->p2p_send_.assign(env.size, 0);
  c->p2p_recv_.assign(env.size, 0);
  // Topology: hosts numbered in order of their first rank.
  std::map<std::string, int> ids;
  for (int r : c->ranks_) {
    auto it = ids.try_emplace(sh->host_names[r], static_cast<int>(ids.size())).first;
    c->host_of_.push_back(it->second);
  }
  c->num_hosts_ = static_cast<int>(ids.size());
  std::vector<bool> local(env.size);
  for (int r = 0; r < env.size; ++r) local[r] = c->host_of_[r] == c->host_of_[env.rank];
  sh->transport->set_local_peers(local);
  if (opt.tcp.emulating()) {
    std::vector<bool> emulate(env.size);
    for (int r = 0; r < env.size; ++r)
      emulate[r] = opt.tcp.emu_scope == "all" || c->host_of_[r] != c->host_of_[env.rank];
    sh->transport->set_emulated_peers(emulate);
  }
  c->local_size_ = 0;
  for (int i = 0; i < c->size(); ++i) {
    if (c->host_of_[i] != c->host_of_[c->rank_]) continue;
    if (i == c->rank_) c->local_rank_ = c->local_size_;
    ++c->local_size_;
  }
  return c;
}

Communicator::~Communicator() {
  if (!worker_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(q_mu_);
    stopping_ = true;
  }
  q_cv_.notify_all();
  worker_.join();
}

void Work::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_; });
  if (error_) std::rethrow_exception(error_);
}

bool Work::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

WorkPtr Communicator::enqueue(std::function<void()> f) {
  auto w = std::make_shared<Work>();
  std::lock_guard<std::mutex> lock(q_mu_);
  if (!worker_.joinable()) {
    worker_ = std::thread([this] { worker_loop(); });
    worker_id_ = worker_.get_id();
  }
  queue_.emplace_back(std::move(f), w);
  q_cv_.notify_all();
  return w;
}

void Communicator::worker_loop() {
  std::unique_lock<std::mutex> lock(q_mu_);
  while (true) {
    q_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and everything queued has run
    auto [f, w] = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    std::exception_ptr err;
    try {
      f();
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> wl(w->mu_);
      w->done_ = true;
      w->error_ = err;
    }
    w->cv_.notify_all();
    lock.lock();
    busy_ = false;
    q_cv_.notify_all();
  }
}

void Communicator::sync_point() {
  if (!worker_.joinable() || std::this_thread::get_id() == worker_id_) return;
  std::unique_lock<std::mutex> lock(q_mu_);
  q_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

namespace {
// A compressed collective reduces f32 by sum or average.
void check_compression(Dtype t, ReduceOp op, Wire w, const char* where) {
  if (w == Wire::kAsIs) return;
  MOE_CHECK(t == Dtype::kF32, where, wire_name(w), " on the wire compresses f32 values, not ",
            comm_dtype_name(t));
  MOE_CHECK(op == ReduceOp::kSum || op == ReduceOp::kAvg, where, wire_name(w),
            " on the wire supports sum and avg, not ", reduce_op_name(op));
}
}  // namespace

WorkPtr Communicator::all_reduce_async(const void* in, void* out, size_t count, Dtype t,
                                       ReduceOp op, const Compression& z) {
  check_dtype_op(t, op, "comm.all_reduce");
  check_compression(t, op, z.wire, "comm.all_reduce");
  return enqueue([=, this] { all_reduce(in, out, count, t, op, z); });
}

WorkPtr Communicator::reduce_scatter_async(const void* in, void* out, size_t recv_count,
                                           Dtype t, ReduceOp op, const Compression& z) {
  check_dtype_op(t, op, "comm.reduce_scatter");
  check_compression(t, op, z.wire, "comm.reduce_scatter");
  return enqueue([=, this] { reduce_scatter(in, out, recv_count, t, op, z); });
}

WorkPtr Communicator::all_gather_async(const void* in, void* out, size_t send_count, Dtype t) {
  return enqueue([=, this] { all_gather(in, out, send_count, t); });
}

WorkPtr Communicator::broadcast_async(void* buf, size_t count, Dtype t, int root) {
  return enqueue([=, this] { broadcast(buf, count, t, root); });
}

WorkPtr Communicator::all_to_allv_async(const void* in, std::vector<size_t> send_counts,
                                        std::vector<size_t> send_displs, void* out,
                                        std::vector<size_t> recv_counts,
                                        std::vector<size_t> recv_displs, Dtype t, Wire wire) {
  check_compression(t, ReduceOp::kSum, wire, "comm.all_to_allv");
  return enqueue([=, this] {
    all_to_allv(in, send_counts, send_displs, out, recv_counts, recv_displs, t, wire);
  });
}

Communicator::Traffic Communicator::traffic() const {
  Traffic t;
  for (size_t k = 0; k < size_t(OpKind::kCount); ++k) {
    t.sent[k] = shared_->traffic.sent[k].load(std::memory_order_relaxed);
    t.inter_host[k] = shared_->traffic.inter_host[k].load(std::memory_order_relaxed);
  }
  return t;
}

void Communicator::set_algo(const std::string& algo) { algo_ = parse_algo(algo); }

void Communicator::set_algo_a2a(const std::string& algo) { algo_a2a_ = parse_algo_a2a(algo); }

std::string Communicator::transport_info() const { return shared_->transport->describe(); }

ShmStats Communicator::transport_stats() const { return shared_->transport->shm_stats(); }

CommBuffer Communicator::alloc(size_t bytes) {
  CommBuffer b;
  b.registry_ = shared_->transport->buffers();
  b.data_ = b.registry_->allocate(bytes).base;
  b.size_ = bytes;
  return b;
}

CommBuffer& CommBuffer::operator=(CommBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    registry_ = std::move(o.registry_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void CommBuffer::reset() {
  if (data_) registry_->release(data_);
  data_ = nullptr;
  size_ = 0;
  registry_.reset();
}

namespace {
// Several hosts, and more than one rank on at least one: where two-level algorithms help.
bool two_levels(const std::vector<int>& host_of, int num_hosts) {
  return num_hosts > 1 && int(host_of.size()) > num_hosts;
}
}  // namespace

Algo Communicator::all_reduce_algo(size_t bytes) const {
  if (algo_ != Algo::kAuto) return algo_;
  // Recursive doubling swaps whole vectors in log2(p) steps, halving-doubling halves in
  // 2 log2(p): rd wins while a step costs more than its bytes (2 or 4 ranks, TCP and shared
  // memory: up to 16-64 KiB), and with 2-3 ranks (p = 2) it sends the same bytes in one step
  // instead of two (bench/comm/README.md).
  if (bytes <= opt_.rhd_max_bytes)
    return bytes <= opt_.rd_max_bytes || size() < 4 ? Algo::kRecursiveDoubling
                                                   : Algo::kHalvingDoubling;
  if (bytes >= opt_.hier_min_bytes && two_levels(host_of_, num_hosts_)) return Algo::kHierarchical;
  // Same on every rank: sizes and hosts are, and single copy is on for all local pairs or none.
  if (bytes >= opt_.direct_min_bytes && bytes <= opt_.direct_max_bytes && size() >= 3 &&
      num_hosts_ == 1 && shared_->transport->single_copy_to(ranks_[(rank_ + 1) % size()]))
    return Algo::kDirect;
  return Algo::kRing;
}

// Pairwise also across hosts: on emulated hosts (scripts/emulate_cluster.sh --op all_to_all,
// tbf-capped links shared by every flow of a host) the two-level algorithm moved the same bytes
// over each link and came out at 0.70-1.06x of pairwise (2 x 4 and 4 x 2 ranks, 100 Mbit and
// 1 Gbit; src/comm/README.md). It stays available (MOE_COMM_ALGO_A2A=two_level) for many ranks
// per host on links where the number of messages costs more than their bytes, which we could
// not emulate here (no netem in this kernel).
Algo Communicator::all_to_all_algo() const {
  if (algo_a2a_ != Algo::kAuto) return algo_a2a_;
  return Algo::kPairwise;
}

OpLabel Communicator::label(const OpSig& sig, uint64_t seq) const {
  OpLabel l;
  l.sig = sig;
  l.seq = seq;
  l.rank = rank_;
  l.size = size();
  if (size() != shared_->env.size) l.global_rank = global_rank();
  return l;
}

template <class F>
void Communicator::run(OpKind kind, OpSig sig, F&& body) {
  sig.kind = kind;
  const uint64_t seq = ++seq_;
  Transport& t = *shared_->transport;
  const OpLabel what = label(sig, seq);
  MOE_CHECK(!t.failed(), "comm", what.str(), ": ", t.failure());
  t.begin_op(comm_id_, seq, sig);
  OpContext ctx(t, ranks_, host_of_, rank_, comm_id_, seq, sig, deadline_after(opt_.timeout_s),
                what, scratch_, &shared_->traffic);
  body(ctx);
  t.end_op(comm_id_);
}

void Communicator::all_reduce(const void* in, void* out, size_t count, Dtype t, ReduceOp op,
                              const Compression& z) {
  sync_point();
  check_dtype_op(t, op, "comm.all_reduce");
  check_compression(t, op, z.wire, "comm.all_reduce");
  if (z.wire != Wire::kAsIs && size() > 1) {
    OpSig sig{OpKind::kAllReduce, uint8_t(t), uint8_t(op), uint8_t(Algo::kDirect), -1, count,
              uint8_t(z.wire)};
    run(OpKind::kAllReduce, sig, [&](OpContext& c) {
      compressed_all_reduce(c, static_cast<const float*>(in), static_cast<float*>(out), count, op,
                            z);
    });
    return;
  }
  const size_t bytes = count * comm_dtype_size(t);
  const Algo a = all_reduce_algo(bytes);
  OpSig sig{OpKind::kAllReduce, uint8_t(t), uint8_t(op), uint8_t(a), -1, count};
  run(OpKind::kAllReduce, sig, [&](OpContext& c) {
    if (size() == 1) {
      if (in != out && bytes) std::memmove(out, in, bytes);
    } else if (a == Algo::kHalvingDoubling || a == Algo::kRecursiveDoubling) {
      halving_doubling_all_reduce(c, in, out, count, a == Algo::kHalvingDoubling);
    } else if (a == Algo::kHierarchical) {
      hierarchical_all_reduce(c, in, out, count, opt_.piece_bytes);
    } else if (a == Algo::kDirect) {
      direct_all_reduce(c, in, out, count);
    } else {
      ring_all_reduce(c, in, out, count, opt_.piece_bytes);
    }
    if (op == ReduceOp::kAvg) finish_avg(out, count, t, size());
  });
}

void Communicator::reduce_scatter(const void* in, void* out, size_t recv_count, Dtype t,
                                  ReduceOp op, const Compression& z) {
  sync_point();
  check_dtype_op(t, op, "comm.reduce_scatter");
  check_compression(t, op, z.wire, "comm.reduce_scatter");
  if (z.wire != Wire::kAsIs && size() > 1) {
    OpSig sig{OpKind::kReduceScatter, uint8_t(t), uint8_t(op), uint8_t(Algo::kDirect), -1,
              recv_count, uint8_t(z.wire)};
    run(OpKind::kReduceScatter, sig, [&](OpContext& c) {
      compressed_reduce_scatter(c, static_cast<const float*>(in), static_cast<float*>(out),
                                recv_count, z);
      if (op == ReduceOp::kAvg) finish_avg(out, recv_count, t, size());
    });
    return;
  }
  OpSig sig{OpKind::kReduceScatter, uint8_t(t), uint8_t(op), uint8_t(Algo::kRing), -1,
            recv_count};
  run(OpKind::kReduceScatter, sig, [&](OpContext& c) {
    if (size() == 1) {
      if (in != out && recv_count) std::memmove(out, in, recv_count * comm_dtype_size(t));
    } else {
      ring_reduce_scatter(c, in, out, recv_count, opt_.piece_bytes);
    }
    if (op == ReduceOp::kAvg) finish_avg(out, recv_count, t, size());
  });
}

void Communicator::all_gather(const void* in, void* out, size_t send_count, Dtype t) {
  sync_point();
  comm_dtype_size(t);
  OpSig sig{OpKind::kAllGather, uint8_t(t), 0, uint8_t(Algo::kRing), -1, send_count};
  run(OpKind::kAllGather, sig, [&](OpContext& c) {
    if (size() == 1) {
      if (in != out && send_count) std::memmove(out, in, send_count * comm_dtype_size(t));
    } else {
      ring_all_gather(c, in, out, send_count, opt_.piece_bytes);
    }
  });
}

void Communicator::broadcast(void* buf, size_t count, Dtype t, int root) {
  sync_point();
  comm_dtype_size(t);
  MOE_CHECK(root >= 0 && root < size(), "comm.broadcast", "root ", root, " is not a rank of ",
            "this communicator of ", size());
  OpSig sig{OpKind::kBroadcast, uint8_t(t), 0, uint8_t(Algo::kBinomial), root, count};
  run(OpKind::kBroadcast, sig, [&](OpContext& c) {
    if (size() > 1) binomial_broadcast(c, buf, count, root);
  });
}

void Communicator::all_to_all(const void* in, void* out, size_t count, Dtype t) {
  sync_point();
  comm_dtype_size(t);
  MOE_CHECK(in != out || count == 0, "comm.all_to_all", "in and out must differ");
  std::vector<size_t>& counts = a2a_counts_;  // reused: no allocation per call
  std::vector<size_t>& displs = a2a_displs_;
  counts.assign(size(), count);
  displs.resize(size());
  for (int i = 0; i < size(); ++i) displs[i] = count * i;
  const Algo a = all_to_all_algo();
  OpSig sig{OpKind::kAllToAll, uint8_t(t), 0, uint8_t(a), -1, count};
  run(OpKind::kAllToAll, sig, [&](OpContext& c) {
    if (a == Algo::kTwoLevel)
      two_level_all_to_allv(c, in, counts.data(), displs.data(), out, counts.data(),
                            displs.data());
    else
      pairwise_all_to_allv(c, in, counts.data(), displs.data(), out, counts.data(),
                           displs.data());
  });
}

void Communicator::all_to_allv(const void* in, const std::vector<size_t>& send_counts,
                               const std::vector<size_t>& send_displs, void* out,
                               const std::vector<size_t>& recv_counts,
                               const std::vector<size_t>& recv_displs, Dtype t, Wire wire) {
  sync_point();
  comm_dtype_size(t);
  check_compression(t, ReduceOp::kSum, wire, "comm.all_to_allv");
  const size_t n = size();
  MOE_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n &&
                recv_displs.size() == n,
            "comm.all_to_allv", "counts and displacements need one entry per rank (", n,
            "), got ", send_counts.size(), ", ", send_displs.size(), ", ", recv_counts.size(),
            ", ", recv_displs.size());
  // Ranks legitimately differ in counts: the size check is per message, not per signature.
  const Algo a = all_to_all_algo();
  OpSig sig{OpKind::kAllToAllv, uint8_t(t), 0, uint8_t(a), -1, 0, uint8_t(wire)};
  run(OpKind::kAllToAllv, sig, [&](OpContext& c) {
    if (wire != Wire::kAsIs)
      compressed_all_to_allv(c, static_cast<const float*>(in), send_counts.data(),
                             send_displs.data(), static_cast<float*>(out), recv_counts.data(),
                             recv_displs.data(), wire, a == Algo::kTwoLevel);
    else if (a == Algo::kTwoLevel)
      two_level_all_to_allv(c, in, send_counts.data(), send_displs.data(), out,
                            recv_counts.data(), recv_displs.data());
    else
      pairwise_all_to_allv(c, in, send_counts.data(), send_displs.data(), out,
                           recv_counts.data(), recv_displs.data());
  });
}

void Communicator::barrier() {
  sync_point();
  OpSig sig{OpKind::kBarrier, 0, 0, uint8_t(Algo::kDissemination), -1, 0};
  run(OpKind::kBarrier, sig, [&](OpContext& c) { dissemination_barrier(c); });
}

void Communicator::send(const void* buf, size_t count, Dtype t, int dst) {
  sync_point();
  MOE_CHECK(dst >= 0 && dst < size() && dst != rank_, "comm.send", "destination ", dst,
            " must be another rank of this communicator of ", size());
  OpSig sig{OpKind::kSendRecv, uint8_t(t), 0, 0, -1, count};
  const uint64_t seq = kP2pSeqBit | ++p2p_send_[dst];
  Transport& tr = *shared_->transport;
  OpLabel what{OpLabel::Kind::kSend, sig, p2p_send_[dst], rank_, size(), -1, dst};
  MOE_CHECK(!tr.failed(), "comm", what.str(), ": ", tr.failure());
  const size_t bytes = count * comm_dtype_size(t);
  shared_->traffic.sent[size_t(OpKind::kSendRecv)] += bytes;
  if (host_of_[dst] != host_of_[rank_]) shared_->traffic.inter_host[size_t(OpKind::kSendRecv)] += bytes;
  Handle h = tr.isend(ranks_[dst], MsgKey{comm_id_, seq, 0}, sig, buf, bytes);
  tr.wait(*h, deadline_after(opt_.timeout_s), what);
}

void Communicator::recv(void* buf, size_t count, Dtype t, int src) {
  sync_point();
  MOE_CHECK(src >= 0 && src < size() && src != rank_, "comm.recv", "source ", src,
            " must be another rank of this communicator of ", size());
  OpSig sig{OpKind::kSendRecv, uint8_t(t), 0, 0, -1, count};
  const uint64_t seq = kP2pSeqBit | ++p2p_recv_[src];
  Transport& tr = *shared_->transport;
  OpLabel what{OpLabel::Kind::kRecv, sig, p2p_recv_[src], rank_, size(), -1, src};
  MOE_CHECK(!tr.failed(), "comm", what.str(), ": ", tr.failure());
  Handle h = tr.irecv(ranks_[src], MsgKey{comm_id_, seq, 0}, sig, buf, count * comm_dtype_size(t));
  tr.wait(*h, deadline_after(opt_.timeout_s), what);
}

std::shared_ptr<Communicator> Communicator::split(int color, int key) {
  sync_point();
  const int n = size();
  std::vector<int64_t> mine{color, key}, all(2 * n);
  OpSig sig{OpKind::kSplit, uint8_t(Dtype::kI64), 0, uint8_t(Algo::kRing), -1, 2};
  run(OpKind::kSplit, sig, [&](OpContext& c) {
    if (n == 1) std::memcpy(all.data(), mine.data(), 16);
    else ring_all_gather(c, mine.data(), all.data(), 2, opt_.piece_bytes);
  });
  const uint64_t split_no = ++splits_;
  if (color < 0) return nullptr;
  std::vector<std::pair<int64_t, int>> members;  // (key, parent rank)
  for (int i = 0; i < n; ++i)
    if (all[2 * i] == color) members.emplace_back(all[2 * i + 1], i);
  std::sort(members.begin(), members.end());
  std::shared_ptr<Communicator> c(new Communicator());
  c->shared_ = shared_;
  c->opt_ = opt_;
  c->algo_ = algo_;
  c->algo_a2a_ = algo_a2a_;
  c->comm_id_ = mix(comm_id_ ^ mix(split_no * 0x10001 + uint64_t(uint32_t(color))));
  std::map<int, int> hosts;
  for (size_t i = 0; i < members.size(); ++i) {
    const int parent = members[i].second;
    if (parent == rank_) c->rank_ = static_cast<int>(i);
    c->ranks_.push_back(ranks_[parent]);
    auto it = hosts.try_emplace(host_of_[parent], static_cast<int>(hosts.size())).first;
    c->host_of_.push_back(it->second);
  }
  c->num_hosts_ = static_cast<int>(hosts.size());
  c->local_size_ = 0;
  for (int i = 0; i < c->size(); ++i) {
    if (c->host_of_[i] != c->host_of_[c->rank_]) continue;
    if (i == c->rank_) c->local_rank_ = c->local_size_;
    ++c->local_size_;
  }
  c->p2p_send_.assign(c->size(), 0);
  c->p2p_recv_.assign(c->size(), 0);
  return c;
}

}  // namespace moe::comm
