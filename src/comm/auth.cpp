#include "comm/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <cstring>

#include "comm/socket.h"

namespace moe::comm {

namespace {

constexpr uint32_t kAuthMagic = 0x41454f4d;  // "MOEA"
constexpr uint32_t kAuthVersion = 1;
using Nonce = std::array<unsigned char, 32>;
using Mac = std::array<unsigned char, 32>;

struct Hello {
  uint32_t magic;
  uint32_t version;
  Nonce nonce;
};

Nonce fresh_nonce() {
  Nonce n;
  MOE_CHECK(RAND_bytes(n.data(), n.size()) == 1, "comm.auth", "no random bytes from OpenSSL");
  return n;
}

Mac mac_of(const std::string& token, const char* role, const Nonce& a, const Nonce& b) {
  unsigned char msg[3 + 64];
  std::memcpy(msg, role, 3);
  std::memcpy(msg + 3, a.data(), 32);
  std::memcpy(msg + 35, b.data(), 32);
  Mac out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()), msg, sizeof msg, out.data(),
       &len);
  return out;
}

}  // namespace

void auth_connect(int fd, const std::string& token, Deadline deadline, const std::string& what) {
  const Hello mine{kAuthMagic, kAuthVersion, fresh_nonce()};
  write_all(fd, &mine, sizeof mine, deadline, what);
  Hello theirs{};
  Mac their_mac{};
  read_all(fd, &theirs, sizeof theirs, deadline, what);
  MOE_CHECK(theirs.magic == kAuthMagic && theirs.version == kAuthVersion, "comm.auth", what,
            " does not speak the moe.cpp protocol (is something else on that port?)");
  read_all(fd, their_mac.data(), their_mac.size(), deadline, what);
  const Mac expect = mac_of(token, "acc", mine.nonce, theirs.nonce);
  MOE_CHECK(CRYPTO_memcmp(expect.data(), their_mac.data(), 32) == 0, "comm.auth", what,
            " does not hold this job's token: check MOE_JOB_TOKEN is the same on every rank");
  const Mac answer = mac_of(token, "con", theirs.nonce, mine.nonce);
  write_all(fd, answer.data(), answer.size(), deadline, what);
  unsigned char verdict = 0;
  read_all(fd, &verdict, 1, deadline, what);
  MOE_CHECK(verdict == 1, "comm.auth", what, " refused our job token");
}

bool auth_accept(int fd, const std::string& token, Deadline deadline, std::string* why) {
  try {
    Hello theirs{};
    read_all(fd, &theirs, sizeof theirs, deadline, "connecting peer");
    if (theirs.magic != kAuthMagic || theirs.version != kAuthVersion) {
      *why = "it does not speak the moe.cpp protocol";
      return false;
    }
    const Hello mine{kAuthMagic, kAuthVersion, fresh_nonce()};
    const Mac proof = mac_of(token, "acc", theirs.nonce, mine.nonce);
    write_all(fd, &mine, sizeof mine, deadline, "connecting peer");
    write_all(fd, proof.data(), proof.size(), deadline, "connecting peer");
    Mac their_mac{};
    read_all(fd, their_mac.data(), their_mac.size(), deadline, "connecting peer");
    const Mac expect = mac_of(token, "con", mine.nonce, theirs.nonce);
    const unsigned char ok = CRYPTO_memcmp(expect.data(), their_mac.data(), 32) == 0 ? 1 : 0;
    write_all(fd, &ok, 1, deadline, "connecting peer");
    if (!ok) *why = "it does not hold the job token";
    return ok == 1;
  } catch (const Error& e) {
    *why = std::string("it did not complete the token handshake: ") + e.what();
    return false;
  }
}

}  // namespace moe::comm
