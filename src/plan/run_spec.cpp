#include "plan/run_spec.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <toml++/toml.h>
#include <vector>

#include "core/error.h"
#include "parallel/parallel.h"
#include "train/trainer.h"

namespace moe::plan {

namespace {

constexpr const char* kOp = "plan";
namespace fs = std::filesystem;

std::string where(const std::string& origin, const toml::node& n) {
  std::ostringstream os;
  os << origin << ":" << n.source().begin.line;
  return os.str();
}

const toml::table* section(const toml::table& root, const char* name) {
  const toml::node* n = root.get(name);
  return n && n->is_table() ? n->as_table() : nullptr;
}

int64_t get_int(const toml::table* sec, const std::string& origin, const char* sname,
                const char* key, int64_t def, int64_t lo) {
  const toml::node* n = sec ? sec->get(key) : nullptr;
  if (!n) return def;
  const auto v = n->value_exact<int64_t>();
  MOE_CHECK(v.has_value() && *v >= lo, kOp, where(origin, *n), ": [", sname, "] ", key,
            " must be an integer >= ", lo, ", e.g. ", key, " = ", def);
  return *v;
}

std::string get_str(const toml::table* sec, const std::string& origin, const char* sname,
                    const char* key, const std::string& def) {
  const toml::node* n = sec ? sec->get(key) : nullptr;
  if (!n) return def;
  const auto v = n->value_exact<std::string>();
  MOE_CHECK(v.has_value(), kOp, where(origin, *n), ": [", sname, "] ", key,
            " must be a string, e.g. ", key, " = \"", def, "\"");
  return *v;
}

nlohmann::json to_json(const toml::node& v, const std::string& origin, const std::string& key) {
  if (const auto i = v.value_exact<int64_t>()) return *i;
  if (const auto d = v.value_exact<double>()) return *d;
  if (const auto b = v.value_exact<bool>()) return *b;
  if (const auto s = v.value_exact<std::string>()) return *s;
  MOE_FAIL(kOp, where(origin, v), ": [model] ", key, " must be a number, boolean or string");
}

// [model] as config.json text: `config = "file.json"` (relative to the run config) first, then
// the inline keys over it. No [model]: the engine's default sizes (the trainer's tiny model).
std::string model_json(const toml::table* sec, const std::string& origin) {
  nlohmann::json j = nlohmann::json::object();
  if (!sec) return j.dump();
  if (const toml::node* c = sec->get("config")) {
    const auto rel = c->value_exact<std::string>();
    MOE_CHECK(rel.has_value(), kOp, where(origin, *c),
              ": [model] config must be a path string to a config.json");
    const fs::path p = fs::path(*rel).is_absolute() ? fs::path(*rel)
                                                    : fs::path(origin).parent_path() / *rel;
    std::ifstream in(p, std::ios::binary);
    MOE_CHECK(in.good(), kOp, where(origin, *c), ": cannot read [model] config ", p.string());
    std::ostringstream ss;
    ss << in.rdbuf();
    j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    MOE_CHECK(!j.is_discarded() && j.is_object(), kOp, p.string(),
              " is not a JSON object of config keys; fix the syntax");
  }
  for (const auto& [k, v] : *sec) {
    const std::string key(k.str());
    if (key != "config") j[key] = to_json(v, origin, key);
  }
  return j.dump();
}

// [parallel] as layout items. The trainer's keys map one to one: ep, overlap, grad_comm_dtype
// -> gradcomm, dispatch_dtype -> dispatch, combine_dtype -> combine, mode = "diloco" ->
// diloco = inner_steps, diloco_group -> dilocogroup, outer_comm_dtype -> outercomm.
std::string parallel_items(const toml::table* sec, const std::string& origin, int64_t* ranks) {
  const ParallelConfig d;
  const char* s = "parallel";
  const int64_t dp = get_int(sec, origin, s, "dp", d.dp, 0);
  const int64_t ep = get_int(sec, origin, s, "ep", d.ep, 1);
  *ranks = dp > 0 ? dp * ep : 0;
  std::string items = "ep=" + std::to_string(ep);
  if (const toml::node* n = sec ? sec->get("overlap") : nullptr) {
    const auto v = n->value_exact<bool>();
    MOE_CHECK(v.has_value(), kOp, where(origin, *n), ": [parallel] overlap must be true or false");
    items += std::string(",overlap=") + (*v ? "1" : "0");
  }
  const struct {
    const char* key;
    const char* item;
    std::string def;
    std::vector<std::string> allowed;
  } wires[] = {{"grad_comm_dtype", "gradcomm", d.grad_comm_dtype, {"fp32", "bf16", "int8"}},
               {"dispatch_dtype", "dispatch", d.dispatch_dtype, {"fp32", "bf16", "fp8"}},
               {"combine_dtype", "combine", d.combine_dtype, {"fp32", "bf16"}},
               {"outer_comm_dtype", "outercomm", d.outer_comm_dtype, {"fp32", "int8"}}};
  for (const auto& w : wires) {
    const std::string v = get_str(sec, origin, s, w.key, w.def);
    std::string list;
    for (const auto& a : w.allowed) list += (list.empty() ? "" : ", ") + a;
    MOE_CHECK(std::find(w.allowed.begin(), w.allowed.end(), v) != w.allowed.end(), kOp, origin,
              ": [parallel] ", w.key, " = \"", v, "\": allowed ", list);
    if (v != "fp32") items += std::string(",") + w.item + "=" + v;  // fp32 = the planner's auto
  }
  const std::string mode = get_str(sec, origin, s, "mode", d.mode);
  MOE_CHECK(mode == "sync" || mode == "diloco", kOp, origin, ": [parallel] mode = \"", mode,
            "\": allowed sync, diloco");
  if (mode == "diloco") {
    items += ",diloco=" + std::to_string(get_int(sec, origin, s, "inner_steps", d.inner_steps, 1));
    items += ",dilocogroup=" +
             std::to_string(get_int(sec, origin, s, "diloco_group", d.diloco_group, 0));
  }
  return items;
}

}  // namespace

bool is_run_config(const std::string& path) {
  return fs::path(path).extension() == ".toml";
}

RunSpec parse_run_spec(const std::string& text, const std::string& origin,
                       const std::string& model_set) {
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    MOE_FAIL(kOp, origin, ":", e.source().begin.line, ": TOML syntax error: ", e.description());
  }
  RunSpec r;
  r.origin = origin;
  const std::string mo = model_set.empty() ? origin + " [model]"
                                           : origin + " [model] + --model-set " + model_set;
  r.model = parse_plan_model(apply_model_set(model_json(section(root, "model"), origin),
                                             model_set, mo),
                             mo);
  if (r.model.x.name.empty()) r.model.x.name = origin;
  const TrainConfig t;
  const toml::table* train = section(root, "train");
  r.batch = get_int(train, origin, "train", "batch", t.batch, 1);
  r.accum = get_int(train, origin, "train", "accum", t.accum, 1);
  r.seq_len = get_int(train, origin, "train", "seq_len", t.seq_len, 1);
  r.layout = parallel_items(section(root, "parallel"), origin, &r.ranks);
  return r;
}

RunSpec load_run_spec(const std::string& path, const std::string& model_set) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), kOp, "cannot read run config ", path,
            "; pass a run config such as configs/small.toml");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_run_spec(ss.str(), path, model_set);
}

std::string run_layout(const RunSpec& r, int64_t devices, int64_t global_batch) {
  const int64_t gb = global_batch > 0 ? global_batch : r.batch * r.accum;
  MOE_CHECK(gb % r.accum == 0, kOp, "a global batch of ", gb, " sequences is not ", r.accum,
            " micro-batches ([train] accum in ", r.origin, ")");
  const int64_t batch = gb / r.accum;  // the trainer's [train] batch
  MOE_CHECK(devices >= 1 && batch % devices == 0, kOp, r.origin, ": [train] batch = ", batch,
            " sequences per micro-batch cannot be split evenly over ", devices,
            " ranks; use a multiple of ", devices, " (each rank reads batch / ranks)");
  return "dtype=fp32,zero=1,mb=" + std::to_string(batch / devices) + "," + r.layout;
}

}  // namespace moe::plan
