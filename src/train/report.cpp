#include "train/report.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/format.h"
#include "core/safetensors.h"
#include "train/svg_chart.h"

namespace moe {

namespace {

using nlohmann::json;
using svg::xml_escape;

// ---- reading metrics.jsonl ----

// Where a record came from, for messages: "runs/x/metrics.jsonl:7".
struct Where {
  const std::string& path;
  int64_t line;
  template <class... Args>
  [[noreturn]] void fail(Args&&... args) const {
    MOE_FAIL("report", path, ":", line, ": ", std::forward<Args>(args)...);
  }
};

// printf("%g") writes NaN and infinity as bare words, which JSON does not allow; quote them so
// the line still parses and the value reads as non-finite.
std::string quote_bare_nonfinite(const std::string& s) {
  std::string out;
  bool in_str = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_str) {
      out += c;
      if (c == '\\' && i + 1 < s.size())
        out += s[++i];
      else if (c == '"')
        in_str = false;
      continue;
    }
    if (c == '"') {
      in_str = true;
      out += c;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '-' || c == '+') {
      size_t e = i + 1;
      while (e < s.size() && std::isalpha(static_cast<unsigned char>(s[e]))) ++e;
      std::string word = s.substr(i, e - i);
      std::string low = word;
      for (auto& ch : low) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (low == "nan" || low == "-nan" || low == "+nan" || low == "inf" || low == "+inf" ||
          low == "-inf" || low == "infinity" || low == "+infinity" || low == "-infinity") {
        out += '"' + low + '"';
        i = e - 1;
        continue;
      }
    }
    out += c;
  }
  return out;
}

Metric get_metric(const json& j, const char* key, const Where& w) {
  const auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  if (it->is_number()) return it->get<double>();
  if (it->is_null()) return NAN;
  if (it->is_string()) {
    std::string s = it->get<std::string>();
    for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (s == "nan" || s == "-nan" || s == "+nan") return NAN;
    if (s == "inf" || s == "+inf" || s == "infinity" || s == "+infinity") return INFINITY;
    if (s == "-inf" || s == "-infinity") return -INFINITY;
  }
  w.fail("field \"", key, "\" is ", it->dump(), ", expected a number (or null, \"nan\", \"inf\")");
}

int64_t get_int(const json& j, const char* key, const char* kind, const Where& w) {
  const auto it = j.find(key);
  if (it == j.end()) w.fail("a \"", kind, "\" record needs an integer \"", key, "\"");
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 9e15)
      return static_cast<int64_t>(v);
  }
  w.fail("field \"", key, "\" is ", it->dump(), ", expected an integer");
}

std::vector<double> get_array(const json& j, const char* key, const Where& w) {
  std::vector<double> out;
  const auto it = j.find(key);
  if (it == j.end()) return out;
  if (!it->is_array())
    w.fail("field \"", key, "\" is ", it->dump(), ", expected an array of numbers");
  for (const auto& v : *it) {
    if (v.is_number())
      out.push_back(v.get<double>());
    else if (v.is_null())
      out.push_back(NAN);
    else
      w.fail("field \"", key, "\" holds ", v.dump(), ", expected numbers");
  }
  return out;
}

std::string get_string(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

// layer -> (experts, first step), to check that a layer's records agree.
using ExpertCounts = std::map<int64_t, std::pair<size_t, int64_t>>;

void read_record(const json& j, const Where& w, RunMetrics& m, ExpertCounts& experts) {
  if (!j.is_object()) w.fail("expected a JSON object, got ", j.type_name());
  const auto k = j.find("kind");
  if (k == j.end() || !k->is_string()) w.fail("the record has no string \"kind\"");
  const std::string kind = k->get<std::string>();
  if (kind == "run") {
    m.run = j;
  } else if (kind == "train") {
    TrainRecord r;
    r.step = get_int(j, "step", "train", w);
    r.loss = get_metric(j, "loss", w);
    r.ce = get_metric(j, "ce", w);
    r.lr = get_metric(j, "lr", w);
    r.grad_norm = get_metric(j, "grad_norm", w);
    r.tokens_per_s = get_metric(j, "tokens_per_s", w);
    r.mfu = get_metric(j, "mfu", w);
    r.tokens = get_metric(j, "tokens", w);
    r.time_s = get_metric(j, "time_s", w);
    m.train.push_back(r);
  } else if (kind == "val") {
    ValRecord r;
    r.step = get_int(j, "step", "val", w);
    r.loss = get_metric(j, "loss", w);
    r.ppl = get_metric(j, "ppl", w);
    m.val.push_back(r);
  } else if (kind == "moe") {
    MoeRecord r;
    r.step = get_int(j, "step", "moe", w);
    r.layer = get_int(j, "layer", "moe", w);
    if (!j.contains("load"))
      w.fail("a \"moe\" record needs \"load\", an array with one count per expert");
    r.load = get_array(j, "load", w);
    if (r.load.empty()) w.fail("\"load\" is empty; it needs one count per expert");
    const auto [it, fresh] = experts.try_emplace(r.layer, r.load.size(), r.step);
    if (!fresh && it->second.first != r.load.size())
      w.fail("layer ", r.layer, " has ", r.load.size(), " experts in \"load\" here but ",
             it->second.first, " at step ", it->second.second,
             "; every record of a layer needs the same count");
    r.max_over_mean = get_metric(j, "max_over_mean", w);
    r.min_over_mean = get_metric(j, "min_over_mean", w);
    r.router_entropy = get_metric(j, "router_entropy", w);
    r.dropped_frac = get_metric(j, "dropped_frac", w);
    r.bias = get_array(j, "bias", w);
    m.moe.push_back(std::move(r));
  } else if (kind == "event") {
    EventRecord r;
    r.step = get_int(j, "step", "event", w);
    r.event = get_string(j, "event");
    r.detail = get_string(j, "detail");
    if (r.event.empty()) w.fail("an \"event\" record needs a string \"event\"");
    m.events.push_back(std::move(r));
  } else {
    ++m.unknown_kinds;
  }
}

}  // namespace

RunMetrics read_metrics(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f.good(), "report", "cannot read '", path,
            "': point `moe report` at a run folder that holds metrics.jsonl (the trainer writes it "
            "when the run has an output folder)");
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  RunMetrics m;
  m.path = path;
  size_t pos = 0;
  int64_t line_no = 0;
  ExpertCounts experts;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    const bool terminated = nl != std::string::npos;
    std::string line = text.substr(pos, terminated ? nl - pos : std::string::npos);
    pos = terminated ? nl + 1 : text.size();
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const Where w{path, line_no};
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) j = json::parse(quote_bare_nonfinite(line), nullptr, false);
    if (j.is_discarded()) {
      if (!terminated) {  // a record the trainer is still writing
        m.partial_last_line = true;
        break;
      }
      try {
        [[maybe_unused]] const json again = json::parse(line);  // throws with the reason
      } catch (const json::exception& e) {
        w.fail("not valid JSON (", e.what(), "); each line must be one JSON object");
      }
      w.fail("not valid JSON; each line must be one JSON object");
    }
    read_record(j, w, m, experts);
    ++m.lines;
  }
  return m;
}

namespace {

// ---- series ----

// Record indices in file order, split into the latest record per step (kept, steps increasing)
// and the stretches that later records replaced (a rollback or resume goes back to an earlier
// step, and the steps after it are redone).
struct Split {
  std::vector<size_t> kept;
  std::vector<std::vector<size_t>> undone;
};

template <class F>
Split split_by_step(size_t n, F step_of) {
  Split s;
  for (size_t i = 0; i < n; ++i) {
    const int64_t st = step_of(i);
    if (!s.kept.empty() && st <= step_of(s.kept.back())) {
      auto first =
          std::find_if(s.kept.begin(), s.kept.end(), [&](size_t k) { return step_of(k) >= st; });
      s.undone.emplace_back(first, s.kept.end());
      s.kept.erase(first, s.kept.end());
    }
    s.kept.push_back(i);
  }
  return s;
}

const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

// A series of `field` over the given records (records lacking the field are left out).
template <class R>
svg::Series series_of(const std::vector<R>& recs, const std::vector<size_t>& idx, Metric R::*field,
                      std::string name, std::string color) {
  svg::Series s;
  s.name = std::move(name);
  s.color = std::move(color);
  for (size_t i : idx)
    if ((recs[i].*field).has_value()) {
      s.x.push_back(static_cast<double>(recs[i].step));
      s.y.push_back(*(recs[i].*field));
    }
  return s;
}

// The kept series, plus one faded series per undone stretch (legend entry on the first).
template <class R>
std::vector<svg::Series> series_with_undone(const std::vector<R>& recs, const Split& sp,
                                            Metric R::*field, const std::string& name,
                                            const std::string& color) {
  std::vector<svg::Series> out{series_of(recs, sp.kept, field, name, color)};
  bool first = true;
  for (const auto& u : sp.undone) {
    svg::Series s = series_of(recs, u, field, first ? name + " (undone)" : "", color);
    if (s.x.empty()) continue;
    s.faded = true;
    first = false;
    out.push_back(std::move(s));
  }
  return out;
}

template <class R>
bool has_field(const std::vector<R>& recs, Metric R::*field) {
  return std::any_of(recs.begin(), recs.end(), [&](const R& r) { return (r.*field).has_value(); });
}

struct EventStyle {
  const char* color;
  bool full;
};

EventStyle event_style(const std::string& e) {
  if (e == "skip_nonfinite") return {"#d62728", true};
  if (e == "skip_spike") return {"#ff7f0e", true};
  if (e == "rollback") return {"#9467bd", true};
  if (e == "resume") return {"#2ca02c", true};
  if (e == "interrupted") return {"#7f7f7f", true};
  if (e == "checkpoint") return {"#17becf", false};
  return {"#8c564b", true};
}

// ---- page pieces ----

std::string duration(double s) {
  if (!std::isfinite(s) || s < 0) return svg::format_value(s);
  char b[48];
  const auto t = static_cast<int64_t>(std::llround(s));
  std::snprintf(b, sizeof b, "%lld:%02lld:%02lld", static_cast<long long>(t / 3600),
                static_cast<long long>(t / 60 % 60), static_cast<long long>(t % 60));
  return b;
}

std::string json_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// A <table> of key/value pairs; values are escaped here.
std::string kv_table(const std::vector<std::pair<std::string, std::string>>& rows,
                     const char* cls) {
  std::string o = std::string("<table class=\"") + cls + "\">";
  for (const auto& [k, v] : rows)
    o += "<tr><th>" + xml_escape(k) + "</th><td>" + xml_escape(v) + "</td></tr>";
  return o + "</table>\n";
}

std::vector<std::pair<std::string, std::string>> object_rows(const json& obj) {
  std::vector<std::pair<std::string, std::string>> rows;
  if (obj.is_object())
    for (const auto& [k, v] : obj.items()) rows.emplace_back(k, json_text(v));
  return rows;
}

std::string summary(const RunMetrics& m, const Split& tr, const Split& va) {
  std::vector<std::pair<std::string, std::string>> rows;
  const json& run = m.run;
  if (run.is_object()) {
    if (run.contains("started")) rows.emplace_back("started", json_text(run["started"]));
    if (run.contains("params") && run["params"].is_number())
      rows.emplace_back("parameters", human_count(run["params"].get<double>()));
    if (run.contains("active_params") && run["active_params"].is_number())
      rows.emplace_back("active parameters per token",
                        human_count(run["active_params"].get<double>()));
  }
  if (!tr.kept.empty()) {
    const TrainRecord& last = m.train[tr.kept.back()];
    rows.emplace_back("last logged step", std::to_string(last.step));
    if (last.loss) rows.emplace_back("last train loss", svg::format_value(*last.loss));
    if (last.tokens) rows.emplace_back("tokens", human_count(*last.tokens));
    if (last.time_s) rows.emplace_back("elapsed (h:mm:ss)", duration(*last.time_s));
    double sum = 0, msum = 0;
    int n = 0, mn = 0;
    for (size_t i : tr.kept) {
      const auto& r = m.train[i];
      if (r.tokens_per_s && std::isfinite(*r.tokens_per_s)) sum += *r.tokens_per_s, ++n;
      if (r.mfu && std::isfinite(*r.mfu)) msum += *r.mfu, ++mn;
    }
    if (n) rows.emplace_back("mean tokens/s", human_count(sum / n));
    if (mn) rows.emplace_back("mean MFU", svg::format_value(100 * msum / mn) + " %");
  }
  const ValRecord* best = nullptr;
  for (size_t i : va.kept)
    if (m.val[i].loss && std::isfinite(*m.val[i].loss) && (!best || *m.val[i].loss < *best->loss))
      best = &m.val[i];
  if (best) {
    std::string s = svg::format_value(*best->loss) + " at step " + std::to_string(best->step);
    if (best->ppl) s += " (perplexity " + svg::format_value(*best->ppl) + ")";
    rows.emplace_back("best validation loss", s);
  }
  std::map<std::string, int> counts;
  for (const auto& e : m.events) ++counts[e.event];
  std::string ev;
  for (const auto& [k, n] : counts) ev += (ev.empty() ? "" : ", ") + k + " " + std::to_string(n);
  rows.emplace_back("events", ev.empty() ? "none" : ev);
  std::string o = "<h2>Summary</h2>\n" + kv_table(rows, "summary");
  if (run.is_object()) {
    // Fields of the run record this version does not know: scalars as rows, objects folded.
    std::vector<std::pair<std::string, std::string>> extra;
    std::string folded;
    for (const auto& [k, v] : run.items()) {
      if (k == "kind" || k == "params" || k == "active_params" || k == "model" || k == "train" ||
          k == "started")
        continue;
      if (v.is_object())
        folded += "<details><summary>" + xml_escape(k) + "</summary>" +
                  kv_table(object_rows(v), "config") + "</details>\n";
      else
        extra.emplace_back(k, json_text(v));
    }
    if (!extra.empty()) o += kv_table(extra, "summary");
    o += folded;
    if (run.contains("model") && run["model"].is_object())
      o += "<details><summary>model config</summary>" +
           kv_table(object_rows(run["model"]), "config") + "</details>\n";
    if (run.contains("train") && run["train"].is_object())
      o += "<details><summary>train config</summary>" +
           kv_table(object_rows(run["train"]), "config") + "</details>\n";
  }
  return o;
}

std::string events_table(const std::vector<EventRecord>& events) {
  constexpr size_t kMaxRows = 500;
  std::string o =
      "<h2>Events</h2>\n<table class=\"events\" "
      "id=\"events\"><tr><th>step</th><th>event</th><th>detail</th></tr>";
  for (size_t i = 0; i < events.size() && i < kMaxRows; ++i) {
    const auto& e = events[i];
    o += "<tr><td>" + std::to_string(e.step) +
         "</td><td><span class=\"swatch\" style=\"background:" +
         std::string(event_style(e.event).color) + "\"></span>" + xml_escape(e.event) +
         "</td><td>" + xml_escape(e.detail) + "</td></tr>";
  }
  o += "</table>\n";
  if (events.size() > kMaxRows)
    o += "<p class=\"note\">" + std::to_string(events.size() - kMaxRows) +
         " more events not listed.</p>\n";
  return o;
}

// One heatmap per MoE layer: each cell is log2(load / mean load) of an expert at a logged step,
// so balanced is white, over-loaded red and under-loaded blue, on one scale for every layer.
std::string moe_section(const RunMetrics& m, std::vector<std::string>& notes) {
  std::map<int64_t, std::vector<size_t>> by_layer;
  for (size_t i = 0; i < m.moe.size(); ++i) by_layer[m.moe[i].layer].push_back(i);
  std::map<int64_t, std::vector<size_t>> kept;
  for (const auto& [layer, idx] : by_layer)
    kept[layer] = split_by_step(idx.size(), [&](size_t k) { return m.moe[idx[k]].step; }).kept;

  std::string o = "<h2>Mixture of experts</h2>\n";
  // One curve per layer of a value of the moe records; drawn (true) if some record has it and
  // `draw` holds for the values seen.
  auto per_layer = [&](const char* id, const char* title, const char* y_label,
                       const std::function<std::optional<double>(const MoeRecord&)>& get,
                       const std::function<bool(const std::vector<double>&)>& draw) {
    svg::LineChart c;
    c.id = id, c.title = title, c.y_label = y_label;
    std::vector<double> all;
    size_t ci = 0;
    for (const auto& [layer, ks] : kept) {
      svg::Series s;
      s.name = "layer " + std::to_string(layer);
      s.color = kPalette[ci++ % 10];
      for (size_t k : ks) {
        const auto v = get(m.moe[by_layer[layer][k]]);
        if (!v) continue;
        s.x.push_back(static_cast<double>(m.moe[by_layer[layer][k]].step));
        s.y.push_back(*v);
        all.push_back(*v);
      }
      if (!s.x.empty()) c.series.push_back(std::move(s));
    }
    if (c.series.empty() || !draw(all)) return false;
    o += svg::render_line_chart(c);
    return true;
  };
  auto always = [](const std::vector<double>&) { return true; };
  if (!per_layer(
          "chart-moe-balance", "Expert load imbalance (max / mean load, per layer)", "max / mean",
          [](const MoeRecord& r) { return r.max_over_mean; }, always))
    notes.push_back("The moe records have no max_over_mean: imbalance chart omitted.");
  auto any_nonzero = [](const std::vector<double>& v) {
    for (double x : v)
      if (x != 0) return true;
    return false;
  };
  per_layer(
      "chart-moe-entropy",
      "Router entropy (mean over tokens of the entropy of the normalized scores; ln E = "
      "uniform)",
      "nats", [](const MoeRecord& r) { return r.router_entropy; }, always);
  per_layer(
      "chart-moe-dropped", "Routed slots dropped by expert capacity", "fraction",
      [](const MoeRecord& r) { return r.dropped_frac; }, any_nonzero);
  per_layer(
      "chart-moe-bias", "Balancing bias spread (max - min over experts)", "bias",
      [](const MoeRecord& r) -> std::optional<double> {
        if (r.bias.empty()) return std::nullopt;
        const auto [lo, hi] = std::minmax_element(r.bias.begin(), r.bias.end());
        return *hi - *lo;
      },
      [](const std::vector<double>&) { return true; });

  std::map<int64_t, std::vector<std::vector<double>>> cells;
  double range = 1;  // |log2 ratio| at full colour: 1 (0.5x..2x) to 3 (0.125x..8x)
  for (const auto& [layer, ks] : kept) {
    auto& cols = cells[layer];
    for (size_t k : ks) {
      const MoeRecord& r = m.moe[by_layer[layer][k]];
      double sum = 0;
      int n = 0;
      for (double v : r.load)
        if (std::isfinite(v)) sum += v, ++n;
      const double mean = n ? sum / n : 0;
      std::vector<double> col(r.load.size(), NAN);
      for (size_t e = 0; e < r.load.size(); ++e) {
        if (!std::isfinite(r.load[e]) || !(mean > 0)) continue;
        if (r.load[e] > 0) {
          col[e] = std::log2(r.load[e] / mean);
          range = std::max(range, std::min(3.0, std::abs(col[e])));
        } else {
          col[e] = -64.0;  // an idle expert: full blue, whatever the range
        }
      }
      cols.push_back(std::move(col));
    }
  }
  range = std::ceil(range);
  for (const auto& [layer, ks] : kept) {
    svg::Heatmap h;
    h.id = "heatmap-layer-" + std::to_string(layer);
    h.rows = static_cast<int>(m.moe[by_layer[layer][0]].load.size());
    h.title = "Layer " + std::to_string(layer) + ": expert load / mean load (" +
              std::to_string(h.rows) + " experts)";
    for (size_t k : ks) h.x.push_back(static_cast<double>(m.moe[by_layer[layer][k]].step));
    h.v = std::move(cells[layer]);
    h.vmin = -range, h.vmax = range;
    for (int e = -static_cast<int>(range); e <= static_cast<int>(range); ++e) {
      const double ratio = std::pow(2.0, e);
      std::string label = svg::format_value(ratio) + "\u00d7";
      if (e == -static_cast<int>(range)) label = "\u2264" + label;
      if (e == static_cast<int>(range)) label = "\u2265" + label;
      h.scale_ticks.emplace_back(e, label);
    }
    o += svg::render_heatmap(h);
  }
  return o;
}

constexpr const char* kStyle = R"(
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 960px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
svg { display: block; margin: 12px 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: normal; }
.note { color: #8a5a00; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 5px; }
details { margin: 8px 0; }
footer { margin-top: 32px; color: #777; font-size: 12px; }
)";

}  // namespace

std::string render_report(const RunMetrics& m, const std::string& title) {
  std::vector<std::string> notes;
  const Split tr = split_by_step(m.train.size(), [&](size_t i) { return m.train[i].step; });
  const Split va = split_by_step(m.val.size(), [&](size_t i) { return m.val[i].step; });

  std::string charts;
  auto add_chart = [&](svg::LineChart c) { charts += svg::render_line_chart(c); };
  auto train_chart = [&](const char* id, const char* ctitle, const char* ylabel,
                         Metric TrainRecord::*f, const char* name, bool log_y) {
    if (!has_field(m.train, f)) {
      notes.push_back(std::string("The train records have no \"") + name + "\": " + ctitle +
                      " chart omitted.");
      return;
    }
    svg::LineChart c;
    c.id = id, c.title = ctitle, c.y_label = ylabel, c.log_y = log_y;
    c.series = series_with_undone(m.train, tr, f, name, kPalette[0]);
    add_chart(std::move(c));
  };

  if (m.train.empty()) {
    notes.push_back(
        "No train records: the loss, learning-rate, throughput and grad-norm charts are omitted.");
  } else if (!has_field(m.train, &TrainRecord::loss)) {
    notes.push_back("The train records have no \"loss\": loss chart omitted.");
  } else {
    // Loss: train loss (and CE when it differs, i.e. auxiliary terms are on), validation loss,
    // and every event as a vertical line.
    svg::LineChart c;
    c.id = "chart-loss", c.title = "Loss", c.y_label = "loss (nats/token)", c.log_y = true;
    c.series = series_with_undone(m.train, tr, &TrainRecord::loss, "train loss", kPalette[0]);
    bool ce_differs = false;
    for (const auto& r : m.train)
      if (r.ce && r.loss && *r.ce != *r.loss && std::isfinite(*r.ce)) ce_differs = true;
    if (ce_differs) {
      svg::Series ce =
          series_of(m.train, tr.kept, &TrainRecord::ce, "train cross-entropy", kPalette[1]);
      ce.dashed = true;
      c.series.push_back(std::move(ce));
    }
    if (has_field(m.val, &ValRecord::loss)) {
      svg::Series v = series_of(m.val, va.kept, &ValRecord::loss, "validation loss", kPalette[2]);
      v.markers = true;
      c.series.push_back(std::move(v));
    }
    std::map<std::string, int> kinds;
    for (const auto& e : m.events) {
      const EventStyle st = event_style(e.event);
      c.markers.push_back({static_cast<double>(e.step), st.color,
                           e.event + " at step " + std::to_string(e.step) +
                               (e.detail.empty() ? "" : ": " + e.detail),
                           st.full});
      ++kinds[e.event];
    }
    for (const auto& [k, n] : kinds)
      c.marker_legend.emplace_back(k + " (" + std::to_string(n) + ")", event_style(k).color);
    add_chart(std::move(c));
  }
  if (m.val.empty()) {
    notes.push_back(
        "No val records: the validation-loss chart is omitted (the run had no validation pass).");
  } else if (!has_field(m.val, &ValRecord::loss)) {
    notes.push_back("The val records have no \"loss\": validation-loss chart omitted.");
  } else {
    svg::LineChart c;
    c.id = "chart-val-loss", c.title = "Validation loss", c.y_label = "loss (nats/token)";
    c.series = series_with_undone(m.val, va, &ValRecord::loss, "validation loss", kPalette[2]);
    for (auto& s : c.series) s.markers = true;
    add_chart(std::move(c));
  }
  if (!m.train.empty()) {
    train_chart("chart-lr", "Learning rate", "learning rate", &TrainRecord::lr, "lr", false);
    train_chart("chart-throughput", "Throughput", "tokens / s", &TrainRecord::tokens_per_s,
                "tokens_per_s", false);
    if (has_field(m.train, &TrainRecord::mfu))
      train_chart("chart-mfu", "Model FLOPs utilization", "MFU", &TrainRecord::mfu, "mfu", false);
    train_chart("chart-grad-norm", "Gradient norm (before clipping)", "global L2 norm",
                &TrainRecord::grad_norm, "grad_norm", true);
  }

  std::string moe;
  if (m.moe.empty())
    notes.push_back(
        "No moe records: the expert-load charts are omitted (no MoE layer was logged).");
  else
    moe = moe_section(m, notes);
  if (!m.run.is_object())
    notes.push_back("No run record: parameter counts and configs are not shown.");
  if (m.unknown_kinds > 0)
    notes.push_back(std::to_string(m.unknown_kinds) +
                    " records of kinds this version does not know were ignored.");
  if (m.partial_last_line)
    notes.push_back(
        "The last line of the file is incomplete (the run may still be writing it) and was "
        "ignored.");
  int64_t undone = 0;
  for (const auto& u : tr.undone) undone += static_cast<int64_t>(u.size());
  if (undone > 0)
    notes.push_back(std::to_string(undone) +
                    " train records were redone after a rollback or resume; "
                    "the undone ones are drawn faded.");

  std::string o;
  o += "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n"
       "<meta charset=\"utf-8\"/>\n<title>moe report: " +
       xml_escape(title) + "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n";
  o += "<h1>moe report: " + xml_escape(title) + "</h1>\n";
  o += summary(m, tr, va);
  if (!notes.empty()) {
    o += "<ul class=\"notes\" id=\"notes\">";
    for (const auto& n : notes) o += "<li class=\"note\">" + xml_escape(n) + "</li>";
    o += "</ul>\n";
  }
  if (!charts.empty()) o += "<h2>Training</h2>\n" + charts;
  o += moe;
  if (!m.events.empty()) o += events_table(m.events);
  o += "<footer>Written by <code>moe report</code> from " + xml_escape(m.path) + " (" +
       std::to_string(m.lines) + " records).</footer>\n</body>\n</html>\n";
  return o;
}

std::string render_report(const std::string& run_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(run_dir);
  MOE_CHECK(fs::is_directory(dir), "report", "'", run_dir,
            "' is not a folder; pass the run folder given to `moe train --out`");
  const RunMetrics m = read_metrics((dir / "metrics.jsonl").string());
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "runs/x/"
  const std::string title = p.filename().string();
  return render_report(m, title.empty() ? run_dir : title);
}

std::string write_report(const std::string& run_dir, const std::string& out_path) {
  const std::string html = render_report(run_dir);
  const std::string out =
      out_path.empty() ? (std::filesystem::path(run_dir) / "report.html").string() : out_path;
  write_file_atomic(out, {{html.data(), html.size()}});
  return out;
}

}  // namespace moe
