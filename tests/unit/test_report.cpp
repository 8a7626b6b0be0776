// moe report: metrics.jsonl -> one self-contained XHTML page. The page is checked with Python's
// XML parser (well-formed), for every chart by its SVG id, and malformed input must name the
// file and line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "train/report.h"
#include "train/svg_chart.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Folders made by temp_dir are removed when the test binary exits.
struct TempDirs {
  std::vector<std::string> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (const auto& d : dirs) fs::remove_all(d, ec);
  }
};
TempDirs g_temp_dirs;

std::string temp_dir(const std::string& name) {
  const auto d =
      fs::temp_directory_path() / ("moe_report_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  g_temp_dirs.dirs.push_back(d.string());
  return d.string();
}

void spit(const std::string& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs a Python snippet on `file` (as sys.argv[1]) with xml.etree imported as ET; returns the
// exit status (0 = the snippet's assertions held).
int python_check(const std::string& file, const std::string& code, bool quiet = false) {
  const std::string script = file + ".check.py";
  spit(script, "import sys\nimport xml.etree.ElementTree as ET\n" + code + "\n");
  const std::string cmd =
      "/usr/bin/python3 '" + script + "' '" + file + "'" + (quiet ? " 2>/dev/null" : "");
  return std::system(cmd.c_str());
}

int xml_parse_status(const std::string& file, bool quiet = false) {
  return python_check(file, "ET.parse(sys.argv[1])", quiet);
}

// The ids of every inline <svg>, one per line in sorted order, via the XML parser.
std::string svg_ids(const std::string& file) {
  const std::string out = file + ".ids";
  const int rc = python_check(
      file,
      "root = ET.parse(sys.argv[1]).getroot()\n"
      "ids = sorted(e.get('id') for e in root.iter('{http://www.w3.org/2000/svg}svg'))\n"
      "open(sys.argv[1] + '.ids', 'w').write('\\n'.join(ids))");
  EXPECT_EQ(rc, 0) << "python could not list the svg ids of " << file;
  return slurp(out);
}

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

// The y coordinates of the points of every <path d="M.. L.."> series in an SVG (not the
// non-finite triangles, whose paths use relative "l").
std::vector<double> path_ys(const std::string& svg) {
  std::vector<double> ys;
  for (size_t p = svg.find("<path d=\"M"); p != std::string::npos;
       p = svg.find("<path d=\"M", p + 1)) {
    std::istringstream d(svg.substr(p + 9, svg.find('"', p + 9) - (p + 9)));
    char op;
    double x, y;
    while (d >> op >> x >> y) {
      if (op != 'M' && op != 'L') break;
      ys.push_back(y);
    }
  }
  return ys;
}

// The y of the plot frame: the first <rect ... y="..."> in the chart.
double plot_top(const std::string& svg) {
  const size_t r = svg.find("<rect");
  const size_t y = svg.find(" y=\"", r);
  return std::stod(svg.substr(y + 4));
}

// The text of the element with id="id" up to its closing </svg>.
std::string svg_by_id(const std::string& html, const std::string& id) {
  const size_t a = html.find("id=\"" + id + "\"");
  if (a == std::string::npos) return "";
  return html.substr(a, html.find("</svg>", a) - a);
}

// A run with everything: a run record, 300 logged steps with a NaN loss, an inf grad norm and a
// rollback that redoes steps 150..199, validation, three MoE layers of 8 experts (one idle
// expert), events of every kind, unknown kinds and fields, and text that needs escaping.
std::string full_metrics() {
  std::ostringstream o;
  json run = {
      {"kind", "run"},
      {"params", 12345678},
      {"active_params", 3456789},
      {"model", {{"hidden_size", 128}, {"n_routed_experts", 8}, {"scoring_func", "sigmoid"}}},
      {"train", {{"steps", 300}, {"lr", 3e-3}}},
      {"started", "2026-11-23T01:00:00Z"},
      {"future_field", {1, 2}},
      {"data", "built-in corpus"}};
  o << run.dump() << "\n";
  auto train = [&](int s, double lr_scale) {
    json t = {{"kind", "train"},
              {"step", s},
              {"loss", 5.0 * std::exp(-s / 100.0) + 1.5},
              {"ce", 5.0 * std::exp(-s / 100.0) + 1.49},
              {"lr", 3e-3 * lr_scale * std::min(1.0, s / 30.0)},
              {"grad_norm", 1.0 + 0.5 * std::sin(s)},
              {"tokens_per_s", 20000 + 10 * s},
              {"mfu", 0.12},
              {"tokens", 2048 * (s + 1)},
              {"time_s", 0.1 * s},
              {"new_metric", 7}};
    if (s == 120) t["loss"] = nullptr;  // what nlohmann writes for NaN
    if (s == 121) t["grad_norm"] = "inf";
    o << t.dump() << "\n";
    if (s == 130)
      o << R"({"kind":"train","step":130.0,"loss":nan,"lr":1e-3})"
           "\n";  // printf-style nan
  };
  for (int s = 0; s < 200; ++s) train(s, 1.0);
  o << json{{"kind", "event"},
            {"step", 120},
            {"event", "skip_nonfinite"},
            {"detail", "loss is nan"}}
           .dump()
    << "\n";
  o << json{{"kind", "event"},
            {"step", 180},
            {"event", "skip_spike"},
            {"detail", "z = 7.1 > 6 <spike> & more"}}
           .dump()
    << "\n";
  o << json{{"kind", "event"},
            {"step", 150},
            {"event", "checkpoint"},
            {"detail", "checkpoints/step_150"}}
           .dump()
    << "\n";
  o << json{{"kind", "event"},
            {"step", 199},
            {"event", "rollback"},
            {"detail", "to step 150, lr x0.5"}}
           .dump()
    << "\n";
  for (int s = 150; s < 300; ++s) train(s, 0.5);
  o << json{{"kind", "event"}, {"step", 299}, {"event", "interrupted"}, {"detail", "SIGINT"}}.dump()
    << "\n";
  for (int s = 0; s < 300; s += 50)
    o << json{{"kind", "val"},
              {"step", s},
              {"loss", 5.0 * std::exp(-s / 100.0) + 1.6},
              {"ppl", 9.9}}
             .dump()
      << "\n";
  for (int s = 0; s < 300; s += 10)
    for (int layer = 1; layer <= 3; ++layer) {
      std::vector<int> load;
      for (int e = 0; e < 8; ++e)
        load.push_back(layer == 2 && e == 7 ? 0 : 100 + 20 * ((e + s / 10) % 3) * layer);
      o << json{{"kind", "moe"},
                {"step", s},
                {"layer", layer},
                {"load", load},
                {"max_over_mean", 1.2 + 0.1 * layer},
                {"min_over_mean", 0.8},
                {"router_entropy", 1.9},
                {"dropped_frac", 0.0},
                {"bias", std::vector<double>(8, 0.01)}}
               .dump()
        << "\n";
    }
  o << R"({"kind":"gpu_temperature","step":3,"celsius":61})"
       "\n";
  return o.str();
}

TEST(Report, EveryChartIsPresentAndThePageIsWellFormedXml) {
  const std::string dir = temp_dir("full");
  spit(dir + "/metrics.jsonl", full_metrics());
  const std::string path = write_report(dir);
  EXPECT_EQ(path, (fs::path(dir) / "report.html").string());
  ASSERT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(xml_parse_status(path), 0) << "not well-formed XML: " << path;
  EXPECT_EQ(
      svg_ids(path),
      "chart-grad-norm\nchart-loss\nchart-lr\nchart-mfu\nchart-moe-balance\nchart-moe-bias\n"
      "chart-moe-entropy\nchart-throughput\nchart-val-loss\nheatmap-layer-1\nheatmap-layer-2\n"
      "heatmap-layer-3");

  const std::string html = slurp(path);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://", html.find("<body")), html.find("http://www.w3.org/2000/svg"))
      << "the only URLs are XML namespaces";
  // Events on the loss chart, each with its tooltip; escaped detail text.
  const std::string loss = svg_by_id(html, "chart-loss");
  ASSERT_FALSE(loss.empty());
  for (const char* ev :
       {"skip_nonfinite at step 120", "skip_spike at step 180", "rollback at step 199",
        "checkpoint at step 150", "interrupted at step 299"})
    EXPECT_NE(loss.find(ev), std::string::npos) << ev;
  EXPECT_NE(loss.find("z = 7.1 &gt; 6 &lt;spike&gt; &amp; more"), std::string::npos);
  EXPECT_NE(loss.find("validation loss"), std::string::npos);
  EXPECT_NE(loss.find("train cross-entropy"), std::string::npos);
  EXPECT_NE(loss.find("(log scale)"), std::string::npos);
  // The NaN loss at 120 (null) and 130 (bare nan) are marked under the axis, not drawn.
  EXPECT_EQ(count(loss, "class=\"nonfinite\""), 2u) << loss;
  EXPECT_NE(loss.find("train loss is nan at step 120"), std::string::npos);
  EXPECT_NE(loss.find("non-finite (2)"), std::string::npos);
  EXPECT_EQ(count(svg_by_id(html, "chart-grad-norm"), "class=\"nonfinite\""), 1u);
  // Steps 150..199 were redone after the rollback: drawn faded, and said so.
  EXPECT_NE(loss.find("train loss (undone)"), std::string::npos);
  EXPECT_NE(html.find("51 train records were redone"), std::string::npos);
  // The heatmaps: 8 rows of cells per column, an idle expert at full blue, a colour bar.
  const std::string h2 = svg_by_id(html, "heatmap-layer-2");
  EXPECT_NE(h2.find("Layer 2: expert load / mean load (8 experts)"), std::string::npos);
  EXPECT_EQ(count(h2, "<rect") - 32 - 1, 30u * 8) << "30 logged steps x 8 experts";
  EXPECT_NE(h2.find("fill=\"#3b4cc0\""), std::string::npos);
  EXPECT_NE(h2.find("1\u00d7"), std::string::npos);
  // Summary, configs, events table, and the unknown kind noted.
  EXPECT_NE(html.find("12.3M"), std::string::npos);  // 12345678 parameters (core/format.h)
  EXPECT_NE(html.find("<th>scoring_func</th><td>sigmoid</td>"), std::string::npos);
  EXPECT_NE(html.find("best validation loss"), std::string::npos);
  EXPECT_NE(html.find("<th>data</th><td>built-in corpus</td>"), std::string::npos);
  EXPECT_NE(
      html.find(
          "<td>199</td><td><span class=\"swatch\" style=\"background:#9467bd\"></span>rollback"),
      std::string::npos);
  EXPECT_NE(html.find("1 records of kinds this version does not know were ignored"),
            std::string::npos);
}

TEST(Report, TheXmlCheckCanFail) {
  const std::string dir = temp_dir("badxml");
  spit(dir + "/bad.html", "<html><body><p>unclosed</body></html>");
  EXPECT_NE(xml_parse_status(dir + "/bad.html", true), 0);
  spit(dir + "/amp.html", "<html><body>a & b</body></html>");
  EXPECT_NE(xml_parse_status(dir + "/amp.html", true), 0);
}

// Expects render_report(dir) to throw naming the file and line and containing `needle`.
void expect_error(const std::string& metrics, int line, const std::string& needle) {
  const std::string dir = temp_dir("err");
  spit(dir + "/metrics.jsonl", metrics);
  try {
    render_report(dir);
    FAIL() << "no error for:\n" << metrics;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("[report]", 0), 0u) << m;
    EXPECT_NE(m.find("metrics.jsonl:" + std::to_string(line) + ": "), std::string::npos) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << m;
  }
}

TEST(Report, MalformedLinesNameTheFileAndLine) {
  const std::string ok = R"({"kind":"train","step":0,"loss":3.0})"
                         "\n";
  expect_error(ok + ok + "{\"kind\":\"train\",\"step\":2,\"loss\":}\n" + ok, 3, "not valid JSON");
  expect_error(ok + R"({"kind":"train","step":1,"loss":"high"})"
                    "\n",
               2, "\"loss\"");
  expect_error(ok + ok + ok +
                   R"({"kind":"val","loss":2.0})"
                   "\n",
               4, "integer \"step\"");
  expect_error(R"([1,2,3])"
               "\n",
               1, "JSON object");
  expect_error(ok + R"({"step":5})"
                    "\n",
               2, "\"kind\"");
  expect_error(R"({"kind":"moe","step":0,"layer":1,"load":[1,2,3,4]})"
               "\n"
               R"({"kind":"moe","step":1,"layer":1,"load":[1,2,3]})"
               "\n",
               2, "same count");
  expect_error(R"({"kind":"moe","step":0,"layer":1,"load":"many"})"
               "\n",
               1, "\"load\"");
  expect_error(R"({"kind":"event","step":3})"
               "\n",
               1, "\"event\"");
  // A terminated but broken last line is an error too.
  expect_error(ok + "{\"kind\":\"train\",\n", 2, "not valid JSON");
}

TEST(Report, MissingFolderOrFileSaysWhatToDo) {
  try {
    render_report(temp_dir("nofile"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl"), std::string::npos) << e.what();
  }
  EXPECT_THROW(render_report("/nonexistent/run/dir"), Error);
}

TEST(Report, MissingKindsOmitTheirChartsWithANote) {
  const std::string dir = temp_dir("trainonly");
  std::string m;
  for (int s = 0; s < 5; ++s)
    m += json{{"kind", "train"}, {"step", s}, {"loss", 4.0 - s * 0.1}, {"lr", 1e-3}}.dump() + "\n";
  spit(dir + "/metrics.jsonl", m);
  const std::string path = write_report(dir, dir + "/custom.html");
  EXPECT_EQ(path, dir + "/custom.html");
  EXPECT_EQ(xml_parse_status(path), 0);
  EXPECT_EQ(svg_ids(path), "chart-loss\nchart-lr");
  const std::string html = slurp(path);
  for (const char* note : {"No val records", "No moe records", "No run record",
                           "have no &quot;tokens_per_s&quot;", "have no &quot;grad_norm&quot;"})
    EXPECT_NE(html.find(note), std::string::npos) << note;
  EXPECT_EQ(html.find("<h2>Events</h2>"), std::string::npos);
}

// The per-layer router statistics the trainer writes: entropy always, capacity drops only when
// some slot was dropped, the bias spread when biases are logged.
TEST(Report, RouterEntropyDropsAndBiasPerLayer) {
  const std::string dir = temp_dir("moestats");
  std::string m;
  for (int s = 10; s <= 30; s += 10)
    for (int layer = 1; layer <= 2; ++layer)
      m += json{{"kind", "moe"}, {"step", s}, {"layer", layer}, {"load", {3, 5, 4, 4}},
                {"max_over_mean", 1.25}, {"min_over_mean", 0.75}, {"router_entropy", 1.25 + 0.01 * s}, {"dropped_frac", layer == 2 ? 0.125 : 0.0},
                {"bias", {0.0, -0.002, 0.001, 0.0}}}
               .dump() +
           "\n";
  spit(dir + "/metrics.jsonl", m);
  const std::string path = write_report(dir);
  EXPECT_EQ(xml_parse_status(path), 0);
  EXPECT_EQ(svg_ids(path),
            "chart-moe-balance\nchart-moe-bias\nchart-moe-dropped\nchart-moe-entropy\n"
            "heatmap-layer-1\nheatmap-layer-2");
  const std::string html = slurp(path);
  const std::string ent = svg_by_id(html, "chart-moe-entropy");
  EXPECT_NE(ent.find("layer 1"), std::string::npos);
  EXPECT_NE(ent.find("layer 2"), std::string::npos);
  EXPECT_NE(svg_by_id(html, "chart-moe-dropped").find("layer 2"), std::string::npos);
  // Nothing dropped anywhere: no drop chart.
  std::string none;
  for (int s = 10; s <= 30; s += 10)
    none += json{{"kind", "moe"}, {"step", s}, {"layer", 1}, {"load", {4, 4}},
                 {"router_entropy", 0.6}, {"dropped_frac", 0.0}}
                .dump() +
            "\n";
  spit(dir + "/metrics.jsonl", none);
  EXPECT_EQ(svg_ids(write_report(dir)), "chart-moe-entropy\nheatmap-layer-1");
}

TEST(Report, EmptyFileSinglePointAndAllNonFinite) {
  const std::string dir = temp_dir("edge");
  spit(dir + "/metrics.jsonl", "");
  std::string html = render_report(dir);
  EXPECT_NE(html.find("No train records"), std::string::npos);
  EXPECT_EQ(html.find("<svg"), std::string::npos);

  spit(dir + "/metrics.jsonl", R"({"kind":"train","step":7,"loss":2.5,"lr":0.001,"grad_norm":null})"
                               "\n");
  html = write_report(dir);
  EXPECT_EQ(xml_parse_status(dir + "/report.html"), 0);
  html = slurp(dir + "/report.html");
  const std::string loss = svg_by_id(html, "chart-loss");
  EXPECT_EQ(count(loss, "<circle"), 1u) << "a single point is drawn as a dot";
  EXPECT_EQ(loss.find("<path d="), std::string::npos);
  const std::string gn = svg_by_id(html, "chart-grad-norm");
  EXPECT_NE(gn.find("no finite values"), std::string::npos) << gn;
  EXPECT_EQ(count(gn, "class=\"nonfinite\""), 1u);
}

TEST(Report, AnUnterminatedLastLineIsIgnoredWithANote) {
  const std::string dir = temp_dir("partial");
  spit(dir + "/metrics.jsonl", R"({"kind":"train","step":0,"loss":3.0})"
                               "\n"
                               R"({"kind":"train","st)");
  const RunMetrics m = read_metrics(dir + "/metrics.jsonl");
  EXPECT_EQ(m.train.size(), 1u);
  EXPECT_TRUE(m.partial_last_line);
  EXPECT_NE(render_report(dir).find("last line of the file is incomplete"), std::string::npos);
}

TEST(Report, ThousandsOfStepsAreDownsampledAndKeepTheirSpike) {
  const std::string dir = temp_dir("long");
  std::ostringstream o;
  const int n = 20000;
  for (int s = 0; s < n; ++s) {
    const double loss = s == 12345 ? 40.0 : 3.0 + std::sin(s * 0.01);
    o << json{{"kind", "train"}, {"step", s},        {"loss", loss},
              {"lr", 1e-3},      {"grad_norm", 1.0}, {"tokens_per_s", 1000.0}}
             .dump()
      << "\n";
  }
  for (int s = 0; s < n; s += 5)
    o << json{{"kind", "moe"}, {"step", s}, {"layer", 1}, {"load", std::vector<int>(64, 10)}}.dump()
      << "\n";
  spit(dir + "/metrics.jsonl", o.str());
  write_report(dir);
  const std::string path = dir + "/report.html";
  EXPECT_EQ(xml_parse_status(path), 0);
  const std::string html = slurp(path);
  EXPECT_LT(html.size(), 2u << 20) << "bytes";
  const std::string loss = svg_by_id(html, "chart-loss");
  const std::vector<double> ys = path_ys(loss);
  EXPECT_GT(ys.size(), 500u);
  EXPECT_LT(ys.size(), 4000u) << "20000 points should be reduced to a few per pixel column";
  // The spike (40 against ~3, log axis) must survive: a point near the top of the plot.
  const double top = plot_top(loss);
  EXPECT_LT(*std::min_element(ys.begin(), ys.end()), top + 20) << "plot top " << top;
  EXPECT_EQ(std::count_if(ys.begin(), ys.end(), [&](double y) { return y < top + 100; }), 1);
  const std::string hm = svg_by_id(html, "heatmap-layer-1");
  // Balanced load: one white rect per column, at most 24000 / 64 columns.
  EXPECT_GT(count(hm, "<rect"), 300u);
  EXPECT_LE(count(hm, "<rect"), 24000u / 64 + 40u);
}

TEST(Svg, NiceTicksLogTicksAndLabels) {
  using V = std::vector<double>;
  EXPECT_EQ(svg::nice_ticks(1.3, 5.7, 6), (V{2, 3, 4, 5}));
  const V t = svg::nice_ticks(0, 1, 5);
  ASSERT_EQ(t.size(), 6u);
  EXPECT_NEAR(t[3], 0.6, 1e-12);
  EXPECT_EQ(svg::nice_ticks(2, 2, 5), (V{2}));
  EXPECT_TRUE(svg::nice_ticks(NAN, 1, 5).empty());
  const V lt = svg::log_ticks(0.01, 100, 6);
  ASSERT_EQ(lt.size(), 5u);
  EXPECT_NEAR(lt[0], 0.01, 1e-15);
  EXPECT_NEAR(lt[4], 100, 1e-12);
  EXPECT_EQ(svg::log_ticks(1.5, 4.5, 5), svg::nice_ticks(1.5, 4.5, 5))
      << "under a decade: linear values";
  EXPECT_EQ(svg::format_tick(25000, 5000), "25k");
  EXPECT_EQ(svg::format_tick(2500000, 500000), "2.5M");
  EXPECT_EQ(svg::format_tick(0.25, 0.05), "0.25");
  EXPECT_EQ(svg::format_tick(3, 1), "3");
  EXPECT_EQ(svg::format_tick(3e-5, 1e-5), "3e-05");
  EXPECT_EQ(svg::format_value(NAN), "nan");
  EXPECT_EQ(svg::format_value(-INFINITY), "-inf");
}

TEST(Svg, EscapeMakesAnyTextSafeXml) {
  EXPECT_EQ(svg::xml_escape("a<b&\"c'>"), "a&lt;b&amp;&quot;c&#39;&gt;");
  EXPECT_EQ(svg::xml_escape("x\x01y\x7f"), "x?y?");
  EXPECT_EQ(svg::xml_escape("caf\xC3\xA9 \xE2\x9C\x93"),
            "caf\xC3\xA9 \xE2\x9C\x93");  // valid UTF-8 kept
  EXPECT_EQ(svg::xml_escape("\xFF\xC3(\xED\xA0\x80"),
            "?"
            "?(???");                            // invalid bytes, a surrogate
  EXPECT_EQ(svg::xml_escape("\xE2\x9C"), "??");  // truncated sequence
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// Two runs compared: the gap is each run's last validation loss against the first run's (a
// resumed run's repeated step counts once, its last record winning), both SVGs parse as XML
// and carry one curve per run, and a run without validation records is named.
TEST(ReportCompare, GapsToTheFirstRunAndOneCurvePerRun) {
  const std::string a = temp_dir("cmp_a"), b = temp_dir("cmp_b"), c = temp_dir("cmp_c");
  spit(a + "/metrics.jsonl",
       "{\"kind\":\"train\",\"step\":1,\"ce\":3.0}\n{\"kind\":\"train\",\"step\":2,\"ce\":2.0}\n"
       "{\"kind\":\"val\",\"step\":2,\"loss\":2.00}\n");
  spit(b + "/metrics.jsonl",
       "{\"kind\":\"train\",\"step\":1,\"ce\":3.1}\n{\"kind\":\"train\",\"step\":2,\"ce\":2.1}\n"
       "{\"kind\":\"val\",\"step\":2,\"loss\":2.50}\n{\"kind\":\"val\",\"step\":2,\"loss\":2.02}\n");
  spit(c + "/metrics.jsonl", "{\"kind\":\"train\",\"step\":1,\"ce\":3.0}\n");
  const RunComparison r = compare_runs({a, b}, {"fp32", "int8"}, 1);
  ASSERT_EQ(r.rows.size(), 2u);
  EXPECT_EQ(r.rows[1].label, "int8");
  EXPECT_EQ(r.rows[1].step, 2);
  EXPECT_NEAR(r.rows[1].gap, 0.01, 1e-12);
  EXPECT_EQ(r.rows[0].gap, 0.0);
  EXPECT_NE(format_comparison(r).find("+1.00%"), std::string::npos) << format_comparison(r);
  for (const std::string* svg : {&r.svg, &r.train_svg}) {
    const std::string f = a + "/c.svg";
    spit(f, *svg);
    EXPECT_EQ(python_check(f, "t = ET.parse(sys.argv[1]).getroot()\n"
                              "s = ET.tostring(t, encoding='unicode')\n"
                              "assert 'fp32' in s and 'int8' in s, s[:200]"),
              0);
  }
  try {
    compare_runs({a, c}, {}, 1);
    FAIL() << "a run without validation records compared";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no validation record"), std::string::npos) << e.what();
  }
  EXPECT_THROW(compare_runs({a, b}, {"only one"}, 1), Error);
}

}  // namespace
}  // namespace moe
