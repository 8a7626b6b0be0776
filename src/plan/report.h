// Text and JSON output of the planner (the CLI only parses options and calls these).
#pragma once

#include <string>
#include <vector>

#include "plan/search.h"

namespace moe::plan {

std::string header_text(const PlanModel& m, const Cluster& c, const Job& job);
std::string table_text(const std::vector<Candidate>& rows, const Job& job);
// Every term of one layout: memory, per-micro-batch stage times, step split and rates.
std::string explain_text(const PlanModel& m, const Cluster& c, const Job& job, const Candidate& x);
std::string candidates_json(const PlanModel& m, const Cluster& c, const Job& job,
                            const std::vector<Candidate>& rows);

}  // namespace moe::plan
