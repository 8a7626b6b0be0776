#include "comm/algorithms/algorithms.h"

namespace moe::comm {

const char* algo_name(Algo a) {
  switch (a) {
    case Algo::kAuto: return "auto";
    case Algo::kRing: return "ring";
    case Algo::kHalvingDoubling: return "rhd";
    case Algo::kBinomial: return "binomial";
    case Algo::kPairwise: return "pairwise";
    case Algo::kDissemination: return "dissemination";
  }
  return "unknown";
}

Algo parse_algo(const std::string& s) {
  if (s.empty() || s == "auto") return Algo::kAuto;
  if (s == "ring") return Algo::kRing;
  if (s == "rhd" || s == "halving_doubling") return Algo::kHalvingDoubling;
  MOE_FAIL("comm", "unknown algorithm '", s, "' (MOE_COMM_ALGO / --algo): use auto, ring or rhd");
}

}  // namespace moe::comm
