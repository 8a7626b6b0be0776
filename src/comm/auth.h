// Mutual HMAC-SHA256 challenge-response over a fresh connection: both sides prove they hold the
// job token without sending it. Used for the store and for every rank-to-rank socket.
//
//   connector -> acceptor : "MOEA" version nonce_c(32)
//   acceptor  -> connector: "MOEA" version nonce_s(32) HMAC(token, "acc" nonce_c nonce_s)
//   connector -> acceptor : HMAC(token, "con" nonce_s nonce_c)
//   acceptor  -> connector: 1 byte verdict (1 = accepted)
//
// Role strings stop a reflected answer from counting; fresh nonces stop replays.
#pragma once

#include <string>

#include "comm/common.h"

namespace moe::comm {

// Both return normally when the peer proved the token; otherwise throw (connector) or return
// false with the reason in *why (acceptor: the caller logs it, closes, and keeps serving).
void auth_connect(int fd, const std::string& token, Deadline deadline, const std::string& what);
bool auth_accept(int fd, const std::string& token, Deadline deadline, std::string* why);

}  // namespace moe::comm
