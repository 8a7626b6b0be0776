#include "plan/cluster.h"

#include <toml++/toml.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace moe::plan {

namespace {

constexpr const char* kOp = "plan";

std::string where(const std::string& origin, const toml::source_region& s) {
  std::ostringstream os;
  os << origin << ":" << s.begin.line;
  return os.str();
}

// The allowed layout of a cluster file: section -> keys. Anything else is an error.
struct KeySpec {
  const char* section;
  const char* key;
  const char* allowed;  // shown in errors
};
const KeySpec kKeys[] = {
    {"", "name", "a string"},
    {"device", "peak_tflops_fp32", "a number > 0 (TFLOP/s)"},
    {"device", "peak_tflops_bf16", "a number > 0 (TFLOP/s, dense)"},
    {"device", "peak_tflops_fp8", "a number >= 0 (TFLOP/s, dense; 0 = no fp8)"},
    {"device", "peak_tops_int8", "a number >= 0 (TOP/s; 0 = no int8)"},
    {"device", "memory_gib", "a number > 0 (GiB)"},
    {"device", "memory_bandwidth_gbs", "a number > 0 (GB/s)"},
    {"node", "devices", "an integer >= 1"},
    {"network", "intra_bandwidth_gbs", "a number > 0 (GB/s per device per direction)"},
    {"network", "intra_latency_us", "a number >= 0 (microseconds)"},
    {"network", "inter_bandwidth_gbs", "a number > 0 (GB/s per device per direction)"},
    {"network", "inter_link_gbit",
     "a number > 0 (Gbit/s per direction of the node's one "
     "link, shared by its devices; instead of inter_bandwidth_gbs)"},
    {"network", "inter_latency_us", "a number >= 0 (microseconds)"},
    {"network", "inter_cpu_ns_per_byte",
     "a number >= 0 (ns of a device's compute time per byte "
     "it sends or receives across nodes; 0 = offloaded)"},
    {"efficiency", "gemm", "a fraction in (0, 1]"},
    {"efficiency", "grouped_gemm", "a fraction in (0, 1]"},
    {"efficiency", "fp8_gemm", "a fraction in (0, 1]"},
    {"efficiency", "fp8_grouped_gemm", "a fraction in (0, 1]"},
    {"efficiency", "attention", "a fraction in (0, 1]"},
    {"efficiency", "memory", "a fraction in (0, 1]"},
    {"efficiency", "optimizer", "a fraction in (0, 1] (AdamW; default: memory)"},
    {"efficiency", "intra_comm", "a fraction in (0, 1]"},
    {"efficiency", "inter_comm", "a fraction in (0, 1]"},
    {"efficiency", "overlap_compute_share", "a fraction in [0, 1)"},
    {"efficiency", "grouped_gemm_rows",
     "an array of rows per expert, ascending, each >= 1 "
     "(e.g. [16, 64, 256, 1024])"},
    {"efficiency", "grouped_gemm_curve",
     "an array of fractions in (0, 1], one per "
     "grouped_gemm_rows entry"},
};

std::string keys_of(const std::string& section) {
  std::string s;
  for (const auto& k : kKeys)
    if (section == k.section) s += (s.empty() ? "" : ", ") + std::string(k.key);
  return s;
}

const KeySpec* find_key(const std::string& section, const std::string& key) {
  for (const auto& k : kKeys)
    if (section == k.section && key == k.key) return &k;
  return nullptr;
}

void check_known(const toml::table& root, const std::string& origin) {
  for (const auto& [k, v] : root) {
    const std::string key(k.str());
    if (v.is_table()) {
      const std::string sec = key;
      const std::string allowed = keys_of(sec);
      MOE_CHECK(!allowed.empty(), kOp, where(origin, v.source()), ": unknown section [", sec,
                "]; allowed sections: [device], [node], [network], [efficiency]");
      for (const auto& [k2, v2] : *v.as_table()) {
        MOE_CHECK(find_key(sec, std::string(k2.str())) != nullptr, kOp, where(origin, v2.source()),
                  ": unknown key '", k2.str(), "' in [", sec, "]; allowed keys: ", allowed);
      }
    } else {
      MOE_CHECK(find_key("", key) != nullptr, kOp, where(origin, v.source()),
                ": unknown top-level key '", key,
                "'; allowed: name, [device], [node], "
                "[network], [efficiency]");
    }
  }
}

// Reads section.key as a number; `required` keys must exist. lo/hi bound the value
// (lo_open: lo excluded).
double get_num(const toml::table& root, const std::string& origin, const char* section,
               const char* key, bool required, double def, double lo, bool lo_open, double hi) {
  const KeySpec* spec = find_key(section, key);
  const toml::node* sec = root.get(section);
  const toml::node* n = sec && sec->is_table() ? sec->as_table()->get(key) : nullptr;
  if (!n) {
    MOE_CHECK(!required, kOp, origin, ": missing key '", key, "' in [", section, "]; expected ",
              spec->allowed, ", e.g. ", key, " = ", def);
    return def;
  }
  const auto v = n->value<double>();  // integers convert too
  MOE_CHECK(v.has_value(), kOp, where(origin, n->source()), ": key '", key, "' in [", section,
            "] has the wrong type; allowed: ", spec->allowed);
  const double x = *v;
  const bool ok = std::isfinite(x) && (lo_open ? x > lo : x >= lo) && x <= hi;
  MOE_CHECK(ok, kOp, where(origin, n->source()), ": key '", key, "' in [", section, "] = ", x,
            " is out of range; allowed: ", spec->allowed);
  return x;
}

// section.key as an array of numbers (absent: empty), each within [lo, hi] (lo excluded when
// lo_open).
std::vector<double> get_array(const toml::table& root, const std::string& origin,
                              const char* section, const char* key, double lo, bool lo_open,
                              double hi) {
  const KeySpec* spec = find_key(section, key);
  const toml::node* sec = root.get(section);
  const toml::node* n = sec && sec->is_table() ? sec->as_table()->get(key) : nullptr;
  std::vector<double> out;
  if (!n) return out;
  const toml::array* arr = n->as_array();
  MOE_CHECK(arr != nullptr, kOp, where(origin, n->source()), ": key '", key, "' in [", section,
            "] must be an array; allowed: ", spec->allowed);
  for (const toml::node& el : *arr) {
    const auto v = el.value<double>();
    const bool ok =
        v.has_value() && std::isfinite(*v) && (lo_open ? *v > lo : *v >= lo) && *v <= hi;
    MOE_CHECK(ok, kOp, where(origin, el.source()), ": an entry of '", key, "' in [", section,
              "] is not allowed; allowed: ", spec->allowed);
    out.push_back(*v);
  }
  return out;
}

}  // namespace

double Efficiency::grouped_at(double rows) const {
  const auto& r = grouped_gemm_rows;
  const auto& e = grouped_gemm_curve;
  if (r.empty() || r.size() != e.size()) return grouped_gemm;
  if (rows <= r.front()) return e.front();
  if (rows >= r.back()) return e.back();
  size_t i = 1;
  while (r[i] < rows) ++i;
  const double t = std::log(rows / r[i - 1]) / std::log(r[i] / r[i - 1]);
  return e[i - 1] + t * (e[i] - e[i - 1]);
}

const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::kFp32:
      return "fp32";
    case Dtype::kBf16:
      return "bf16";
    case Dtype::kFp8:
      return "fp8";
  }
  return "?";
}

double Cluster::peak(Dtype d) const {
  switch (d) {
    case Dtype::kFp32:
      return peak_fp32;
    case Dtype::kBf16:
      return peak_bf16;
    case Dtype::kFp8:
      return peak_fp8;
  }
  return 0;
}

Cluster parse_cluster(const std::string& text, const std::string& origin) {
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    MOE_FAIL(kOp, origin, ":", e.source().begin.line, ": TOML syntax error: ", e.description(),
             "; fix the line (keys look like memory_gib = 80)");
  }
  check_known(root, origin);
  constexpr double kInf = 1e30;
  Cluster c;
  c.path = origin;
  if (const auto* n = root.get("name")) {
    const auto s = n->value<std::string>();
    MOE_CHECK(s.has_value(), kOp, where(origin, n->source()), ": key 'name' must be a string");
    c.name = *s;
  }
  const double T = 1e12, G = 1e9;
  c.peak_bf16 = get_num(root, origin, "device", "peak_tflops_bf16", true, 989, 0, true, kInf) * T;
  c.peak_fp32 =
      get_num(root, origin, "device", "peak_tflops_fp32", false, c.peak_bf16 / T, 0, true, kInf) *
      T;
  c.peak_fp8 = get_num(root, origin, "device", "peak_tflops_fp8", false, 0, 0, false, kInf) * T;
  c.peak_int8 = get_num(root, origin, "device", "peak_tops_int8", false, 0, 0, false, kInf) * T;
  c.memory_bytes = get_num(root, origin, "device", "memory_gib", true, 80, 0, true, kInf) * 1024.0 *
                   1024.0 * 1024.0;
  c.memory_bandwidth =
      get_num(root, origin, "device", "memory_bandwidth_gbs", true, 3350, 0, true, kInf) * G;
  {
    const toml::node* sec = root.get("node");
    const toml::node* n = sec && sec->is_table() ? sec->as_table()->get("devices") : nullptr;
    MOE_CHECK(n != nullptr, kOp, origin,
              ": missing key 'devices' in [node]; expected an "
              "integer >= 1, e.g. devices = 8");
    const auto v = n->value_exact<int64_t>();
    MOE_CHECK(v.has_value() && *v >= 1, kOp, where(origin, n->source()),
              ": key 'devices' in [node] must be an integer >= 1, e.g. devices = 8");
    c.devices_per_node = *v;
  }
  c.intra_bandwidth =
      get_num(root, origin, "network", "intra_bandwidth_gbs", true, 160, 0, true, kInf) * G;
  c.intra_latency =
      get_num(root, origin, "network", "intra_latency_us", false, 5, 0, false, kInf) * 1e-6;
  // Either each device's share directly, or one link per node that its devices share:
  // share = link Gbit/s * 1e9 / 8 / devices per node (an emulated host's capped veth).
  const toml::node* net = root.get("network");
  const bool has_link = net && net->is_table() && net->as_table()->get("inter_link_gbit");
  const bool has_share = net && net->is_table() && net->as_table()->get("inter_bandwidth_gbs");
  MOE_CHECK(!(has_link && has_share), kOp, origin,
            ": [network] has both inter_bandwidth_gbs and "
            "inter_link_gbit; keep one (the link is shared by the node's devices)");
  if (has_link)
    c.inter_bandwidth =
        get_num(root, origin, "network", "inter_link_gbit", true, 1, 0, true, kInf) * 1e9 / 8.0 /
        static_cast<double>(c.devices_per_node);
  else
    c.inter_bandwidth =
        get_num(root, origin, "network", "inter_bandwidth_gbs", true, 50, 0, true, kInf) * G;
  c.inter_latency =
      get_num(root, origin, "network", "inter_latency_us", false, 10, 0, false, kInf) * 1e-6;
  c.inter_cpu_per_byte =
      get_num(root, origin, "network", "inter_cpu_ns_per_byte", false, 0, 0, false, kInf) * 1e-9;
  Efficiency& e = c.eff;
  const Efficiency d;
  e.gemm = get_num(root, origin, "efficiency", "gemm", true, d.gemm, 0, true, 1);
  e.grouped_gemm = get_num(root, origin, "efficiency", "grouped_gemm", false, e.gemm, 0, true, 1);
  e.fp8_gemm = get_num(root, origin, "efficiency", "fp8_gemm", false, d.fp8_gemm, 0, true, 1);
  e.fp8_grouped_gemm =
      get_num(root, origin, "efficiency", "fp8_grouped_gemm", false, e.fp8_gemm, 0, true, 1);
  e.attention = get_num(root, origin, "efficiency", "attention", true, d.attention, 0, true, 1);
  e.memory = get_num(root, origin, "efficiency", "memory", true, d.memory, 0, true, 1);
  e.optimizer = get_num(root, origin, "efficiency", "optimizer", false, e.memory, 0, true, 1);
  e.intra_comm = get_num(root, origin, "efficiency", "intra_comm", false, d.intra_comm, 0, true, 1);
  e.inter_comm = get_num(root, origin, "efficiency", "inter_comm", false, d.inter_comm, 0, true, 1);
  e.overlap_compute_share =
      get_num(root, origin, "efficiency", "overlap_compute_share", false, 0.0, 0, false, 0.99);
  e.grouped_gemm_rows = get_array(root, origin, "efficiency", "grouped_gemm_rows", 1, false, kInf);
  e.grouped_gemm_curve = get_array(root, origin, "efficiency", "grouped_gemm_curve", 0, true, 1);
  MOE_CHECK(e.grouped_gemm_rows.size() == e.grouped_gemm_curve.size(), kOp, origin,
            ": [efficiency] grouped_gemm_rows has ", e.grouped_gemm_rows.size(),
            " entries but grouped_gemm_curve has ", e.grouped_gemm_curve.size(),
            "; give one efficiency per row count (or neither)");
  for (size_t i = 1; i < e.grouped_gemm_rows.size(); ++i)
    MOE_CHECK(e.grouped_gemm_rows[i] > e.grouped_gemm_rows[i - 1], kOp, origin,
              ": [efficiency] grouped_gemm_rows must be strictly ascending; entry ", i + 1, " (",
              e.grouped_gemm_rows[i], ") follows ", e.grouped_gemm_rows[i - 1]);
  return c;
}

Cluster load_cluster(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), kOp, "cannot read cluster file ", path,
            "; pass a TOML file such as configs/clusters/h800.toml");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_cluster(ss.str(), path);
}

std::string cluster_to_toml(const Cluster& c, const std::string& comment) {
  std::ostringstream os;
  os.precision(6);
  os << comment;
  os << "name = \"" << c.name << "\"\n\n[device]\n"
     << "peak_tflops_fp32 = " << c.peak_fp32 / 1e12 << "\n"
     << "peak_tflops_bf16 = " << c.peak_bf16 / 1e12 << "\n"
     << "peak_tflops_fp8 = " << c.peak_fp8 / 1e12 << "\n"
     << "peak_tops_int8 = " << c.peak_int8 / 1e12 << "\n"
     << "memory_gib = " << c.memory_bytes / (1024.0 * 1024.0 * 1024.0) << "\n"
     << "memory_bandwidth_gbs = " << c.memory_bandwidth / 1e9 << "\n\n[node]\n"
     << "devices = " << c.devices_per_node << "\n\n[network]\n"
     << "intra_bandwidth_gbs = " << c.intra_bandwidth / 1e9 << "\n"
     << "intra_latency_us = " << c.intra_latency * 1e6 << "\n"
     << "inter_bandwidth_gbs = " << c.inter_bandwidth / 1e9 << "\n"
     << "inter_latency_us = " << c.inter_latency * 1e6 << "\n"
     << "inter_cpu_ns_per_byte = " << c.inter_cpu_per_byte * 1e9 << "\n\n[efficiency]\n"
     << "gemm = " << c.eff.gemm << "\n"
     << "grouped_gemm = " << c.eff.grouped_gemm << "\n"
     << "fp8_gemm = " << c.eff.fp8_gemm << "\n"
     << "fp8_grouped_gemm = " << c.eff.fp8_grouped_gemm << "\n"
     << "attention = " << c.eff.attention << "\n"
     << "memory = " << c.eff.memory << "\n"
     << "optimizer = " << c.eff.optimizer << "\n"
     << "intra_comm = " << c.eff.intra_comm << "\n"
     << "inter_comm = " << c.eff.inter_comm << "\n"
     << "overlap_compute_share = " << c.eff.overlap_compute_share << "\n";
  if (!c.eff.grouped_gemm_rows.empty()) {
    const auto list = [&os](const std::vector<double>& v) {
      os << "[";
      for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
      os << "]\n";
    };
    os << "grouped_gemm_rows = ";
    list(c.eff.grouped_gemm_rows);
    os << "grouped_gemm_curve = ";
    list(c.eff.grouped_gemm_curve);
  }
  return os.str();
}

}  // namespace moe::plan
