// Rendezvous: a TCP key-value store (set, get, wait, add, delete, check) hosted by rank 0 or by
// the launcher. Every client connection proves the job token first (comm/auth.h); a bad one is
// refused and logged and the store keeps serving the others.
//
// Wire format (host byte order; every rank of a job runs on the same architecture):
//   request : u8 cmd, u8 pad[3], u32 key_len, u64 value_len, key bytes, value bytes
//   response: u8 status, u8 pad[7], u64 len, payload
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/common.h"
#include "comm/socket.h"

namespace moe::comm {

enum class StoreCmd : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kCheck = 4, kDelete = 5 };

struct StoreRequestHeader {
  uint8_t cmd;
  uint8_t pad[3];
  uint32_t key_len;
  uint64_t value_len;
};
static_assert(sizeof(StoreRequestHeader) == 16);

constexpr uint32_t kStoreMaxKey = 4096;
constexpr uint64_t kStoreMaxValue = 64ull << 20;

// Validates a request header from the wire; returns "" if it is well formed, else why not.
// (The fuzz harness feeds this arbitrary bytes.)
std::string check_store_request(const StoreRequestHeader& h);

class StoreServer {
 public:
  // Listens on host:port (port 0 = any free port; see port()).
  StoreServer(const std::string& host, int port, std::string token);
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;
  int port() const { return port_; }
  int refused_connections() const;

 private:
  void accept_loop();
  void serve(int fd, std::string peer);
  bool handle(int fd, const StoreRequestHeader& h, const std::string& key,
              const std::string& value);

  std::string token_;
  Fd listen_fd_;
  int port_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> data_;
  bool stop_ = false;
  int refused_ = 0;
  std::vector<int> client_fds_;
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

class StoreClient {
 public:
  StoreClient(const std::string& host, int port, const std::string& token, double timeout_s);
  void set(const std::string& key, const std::string& value);
  // Waits until the key exists (until the client's timeout), then returns its value.
  std::string get(const std::string& key);
  int64_t add(const std::string& key, int64_t delta);
  bool check(const std::string& key);
  bool del(const std::string& key);
  void wait(const std::vector<std::string>& keys);
  const std::string& address() const { return address_; }
  int fd() const { return fd_.get(); }

 private:
  std::string call(StoreCmd cmd, const std::string& key, const std::string& value,
                   uint8_t* status);
  std::mutex mu_;
  Fd fd_;
  std::string address_;
  double timeout_s_;
};

}  // namespace moe::comm
