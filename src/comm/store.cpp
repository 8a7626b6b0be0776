#include "comm/store.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "comm/auth.h"

namespace moe::comm {

namespace {

struct Response {
  uint8_t status;
  uint8_t pad[7];
  uint64_t len;
};
static_assert(sizeof(Response) == 16);

constexpr uint8_t kOk = 0;
constexpr uint8_t kMissing = 1;

// A GET carries its wait budget in milliseconds as an 8-byte value.
std::string encode_i64(int64_t v) { return std::string(reinterpret_cast<char*>(&v), 8); }
int64_t decode_i64(const std::string& s) {
  int64_t v = 0;
  std::memcpy(&v, s.data(), std::min<size_t>(8, s.size()));
  return v;
}

}  // namespace

std::string check_store_request(const StoreRequestHeader& h) {
  if (h.cmd < 1 || h.cmd > 5) return "unknown command " + std::to_string(h.cmd);
  if (h.key_len == 0 || h.key_len > kStoreMaxKey)
    return "key length " + std::to_string(h.key_len) + " outside 1.." +
           std::to_string(kStoreMaxKey);
  if (h.value_len > kStoreMaxValue) return "value of " + std::to_string(h.value_len) + " bytes";
  const auto cmd = static_cast<StoreCmd>(h.cmd);
  if ((cmd == StoreCmd::kGet || cmd == StoreCmd::kAdd) && h.value_len != 8)
    return "get/add need an 8-byte value";
  return "";
}

StoreServer::StoreServer(const std::string& host, int port, std::string token)
    : token_(std::move(token)) {
  listen_fd_ = listen_tcp(host, port, &port_);
  acceptor_ = std::thread([this] { accept_loop(); });
}

StoreServer::~StoreServer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);
  }
  cv_.notify_all();
  ::shutdown(listen_fd_.get(), SHUT_RDWR);
  acceptor_.join();
  for (auto& t : threads_) t.join();
}

int StoreServer::refused_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return refused_;
}

void StoreServer::accept_loop() {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    std::string peer;
    Fd fd;
    try {
      fd = accept_tcp(listen_fd_.get(), deadline_after(0.2), &peer);
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stop_) MOE_COMM_WARN("store: ", e.what());
      return;
    }
    if (!fd) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    const int raw = fd.release();
    client_fds_.push_back(raw);
    threads_.emplace_back([this, raw, peer] { serve(raw, peer); });
  }
}

void StoreServer::serve(int fd, std::string peer) {
  std::string why;
  bool ok = auth_accept(fd, token_, deadline_after(10), &why);
  if (!ok) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_) {
      ++refused_;
      MOE_COMM_WARN("store: refused a connection from ", peer, ": ", why);
    }
  }
  while (ok) {
    StoreRequestHeader h{};
    std::string key, value;
    try {
      // Clients may stay idle for a whole job: the read waits as long as the store lives.
      read_all(fd, &h, sizeof h, Clock::time_point::max(), "store client");
      const std::string bad = check_store_request(h);
      if (!bad.empty()) {
        MOE_COMM_WARN("store: dropped client ", peer, ": malformed request (", bad, ")");
        break;
      }
      key.resize(h.key_len);
      value.resize(h.value_len);
      read_all(fd, key.data(), key.size(), deadline_after(60), "store client");
      read_all(fd, value.data(), value.size(), deadline_after(60), "store client");
      if (!handle(fd, h, key, value)) break;
    } catch (const Error&) {
      break;  // the client went away; that is how connections end
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& c : client_fds_)
    if (c == fd) c = -1;
  ::close(fd);
}

bool StoreServer::handle(int fd, const StoreRequestHeader& h, const std::string& key,
                         const std::string& value) {
  Response r{};
  std::string payload;
  {
    std::unique_lock<std::mutex> lock(mu_);
    switch (static_cast<StoreCmd>(h.cmd)) {
      case StoreCmd::kSet:
        data_[key] = value;
        cv_.notify_all();
        break;
      case StoreCmd::kGet: {
        const auto until = deadline_after(double(decode_i64(value)) / 1e3);
        cv_.wait_until(lock, until, [&] { return stop_ || data_.count(key); });
        if (stop_) return false;
        auto it = data_.find(key);
        if (it == data_.end()) r.status = kMissing;
        else payload = it->second;
        break;
      }
      case StoreCmd::kAdd: {
        auto& slot = data_[key];
        const int64_t v = decode_i64(slot) + decode_i64(value);
        slot = encode_i64(v);
        payload = slot;
        cv_.notify_all();
        break;
      }
      case StoreCmd::kCheck:
        r.status = data_.count(key) ? kOk : kMissing;
        break;
      case StoreCmd::kDelete:
        r.status = data_.erase(key) ? kOk : kMissing;
        break;
    }
  }
  r.len = payload.size();
  write_all(fd, &r, sizeof r, deadline_after(60), "store client");
  write_all(fd, payload.data(), payload.size(), deadline_after(60), "store client");
  return true;
}

StoreClient::StoreClient(const std::string& host, int port, const std::string& token,
                         double timeout_s)
    : timeout_s_(timeout_s) {
  address_ = host + ":" + std::to_string(port);
  const std::string what = "the rendezvous store " + address_;
  fd_ = connect_tcp(host, port, deadline_after(timeout_s), what);
  set_nodelay(fd_.get());
  auth_connect(fd_.get(), token, deadline_after(std::min(timeout_s, 30.0)), what);
}

std::string StoreClient::call(StoreCmd cmd, const std::string& key, const std::string& value,
                              uint8_t* status) {
  std::lock_guard<std::mutex> lock(mu_);
  StoreRequestHeader h{};
  h.cmd = static_cast<uint8_t>(cmd);
  h.key_len = static_cast<uint32_t>(key.size());
  h.value_len = value.size();
  const std::string bad = check_store_request(h);
  MOE_CHECK(bad.empty(), "comm.store", "bad request for key '", key, "': ", bad);
  const std::string what = "the rendezvous store " + address_;
  const Deadline d = deadline_after(timeout_s_ + 5);
  write_all(fd_.get(), &h, sizeof h, d, what);
  write_all(fd_.get(), key.data(), key.size(), d, what);
  write_all(fd_.get(), value.data(), value.size(), d, what);
  Response r{};
  read_all(fd_.get(), &r, sizeof r, d, what);
  MOE_CHECK(r.len <= kStoreMaxValue, "comm.store", what, " sent a malformed response");
  std::string out(r.len, '\0');
  read_all(fd_.get(), out.data(), out.size(), d, what);
  *status = r.status;
  return out;
}

void StoreClient::set(const std::string& key, const std::string& value) {
  uint8_t st = 0;
  call(StoreCmd::kSet, key, value, &st);
}

std::string StoreClient::get(const std::string& key) {
  uint8_t st = 0;
  std::string v =
      call(StoreCmd::kGet, key, encode_i64(static_cast<int64_t>(timeout_s_ * 1e3)), &st);
  MOE_CHECK(st == kOk, "comm.store", "key '", key, "' did not appear in the store ", address_,
            " within ", timeout_s_, " s: a rank did not start or failed before rendezvous");
  return v;
}

int64_t StoreClient::add(const std::string& key, int64_t delta) {
  uint8_t st = 0;
  return decode_i64(call(StoreCmd::kAdd, key, encode_i64(delta), &st));
}

bool StoreClient::check(const std::string& key) {
  uint8_t st = 0;
  call(StoreCmd::kCheck, key, "", &st);
  return st == kOk;
}

bool StoreClient::del(const std::string& key) {
  uint8_t st = 0;
  call(StoreCmd::kDelete, key, "", &st);
  return st == kOk;
}

void StoreClient::wait(const std::vector<std::string>& keys) {
  for (const auto& k : keys) get(k);
}

}  // namespace moe::comm
