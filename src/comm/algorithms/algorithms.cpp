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
    case Algo::kHierarchical: return "hier";
    case Algo::kTwoLevel: return "two_level";
    case Algo::kDirect: return "direct";
    case Algo::kRecursiveDoubling: return "rd";
  }
  return "unknown";
}

Algo parse_algo(const std::string& s) {
  if (s.empty() || s == "auto") return Algo::kAuto;
  if (s == "ring") return Algo::kRing;
  if (s == "rhd" || s == "halving_doubling") return Algo::kHalvingDoubling;
  if (s == "rd" || s == "recursive_doubling") return Algo::kRecursiveDoubling;
  if (s == "hier" || s == "hierarchical") return Algo::kHierarchical;
  if (s == "direct") return Algo::kDirect;
  MOE_FAIL("comm", "unknown all_reduce algorithm '", s,
           "' (MOE_COMM_ALGO / --algo): use auto, ring, rd, rhd, hier or direct");
}

Algo parse_algo_a2a(const std::string& s) {
  if (s.empty() || s == "auto") return Algo::kAuto;
  if (s == "pairwise") return Algo::kPairwise;
  if (s == "two_level" || s == "2level") return Algo::kTwoLevel;
  MOE_FAIL("comm", "unknown all_to_all algorithm '", s,
           "' (MOE_COMM_ALGO_A2A / --algo-a2a): use auto, pairwise or two_level");
}

}  // namespace moe::comm
