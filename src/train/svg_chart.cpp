#include "train/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

namespace moe::svg {

namespace {

// Pixel coordinates with one decimal keep files small and lines smooth.
std::string px(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

// Rough text width for layout (no font metrics without a browser): 11px sans-serif.
double text_width(const std::string& s) { return 6.2 * static_cast<double>(s.size()); }

bool finite(double v) { return std::isfinite(v); }

// A linear map from a data interval onto a pixel interval.
struct Scale {
  double d0, d1, p0, p1;
  double operator()(double v) const {
    return d1 == d0 ? (p0 + p1) / 2 : p0 + (v - d0) / (d1 - d0) * (p1 - p0);
  }
};

}  // namespace

std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '&':
          out += "&amp;";
          break;
        case '<':
          out += "&lt;";
          break;
        case '>':
          out += "&gt;";
          break;
        case '"':
          out += "&quot;";
          break;
        case '\'':
          out += "&#39;";
          break;
        default:
          out += (c < 0x20 && c != '\t' && c != '\n') || c == 0x7f ? '?' : char(c);
      }
      ++i;
      continue;
    }
    // Multi-byte UTF-8: copy a valid sequence whole, replace anything else byte by byte.
    const int n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
    bool ok = n > 0 && i + n <= s.size() && !(c >= 0xf0 && c > 0xf4);
    for (int k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (ok && n == 3) {  // no overlongs, no surrogates
      const auto c1 = static_cast<unsigned char>(s[i + 1]);
      ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 >= 0xa0);
    }
    if (ok && n == 4) {  // no overlongs, nothing above U+10FFFF
      const auto c1 = static_cast<unsigned char>(s[i + 1]);
      ok = !(c == 0xf0 && c1 < 0x90) && !(c == 0xf4 && c1 >= 0x90);
    }
    if (ok) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!finite(lo) || !finite(hi)) return {};
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) return {lo};
  const double rough = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(rough)));
  const double norm = rough / mag;
  const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  std::vector<double> t;
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k += 1) {
    const double v = k * step;
    t.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
    if (t.size() > 1000) break;  // cannot happen with a sane target; bounds the loop anyway
  }
  return t;
}

std::vector<double> log_ticks(double lo, double hi, int target) {
  if (!(lo > 0) || !finite(hi) || !(hi > lo)) return nice_ticks(lo, hi, target);
  const double llo = std::log10(lo), lhi = std::log10(hi);
  const double decades = lhi - llo;
  if (decades < 1) return nice_ticks(lo, hi, target);
  std::vector<double> mult = decades <= 2 ? std::vector<double>{1, 2, 5} : std::vector<double>{1};
  const int every = std::max(1, static_cast<int>(std::ceil(decades / std::max(1, target))));
  std::vector<double> t;
  for (int k = static_cast<int>(std::floor(llo)); k <= static_cast<int>(std::ceil(lhi)); ++k) {
    if (k % every != 0) continue;
    for (double m : mult) {
      const double v = m * std::pow(10.0, k);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.push_back(v);
    }
  }
  if (t.size() < 2) return nice_ticks(lo, hi, target);
  return t;
}

std::string format_tick(double v, double step) {
  char b[48];
  if (v == 0) return "0";
  if (step <= 0) {
    std::snprintf(b, sizeof b, "%.3g", v);
    return b;
  }
  const double a = std::abs(v);
  double div = 1;
  const char* suffix = "";
  if (step >= 1000 && a >= 1e9) {
    div = 1e9, suffix = "G";
  } else if (step >= 1000 && a >= 1e6) {
    div = 1e6, suffix = "M";
  } else if (step >= 1000 && a >= 1e3) {
    div = 1e3, suffix = "k";
  }
  const double s = step / div;
  int decimals = std::clamp(static_cast<int>(std::ceil(-std::log10(s) - 1e-9)), 0, 8);
  if (a != 0 && a < 1e-4) {  // tiny values (learning rates): exponent form
    std::snprintf(b, sizeof b, "%.2g", v);
    return b;
  }
  std::snprintf(b, sizeof b, "%.*f%s", decimals, v / div, suffix);
  return b;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char b[48];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

std::string render_line_chart(const LineChart& c) {
  const double W = c.width, H = c.height;
  const double ml = 70, mr = 20, mb = 44;
  // Legend entries flow in rows under the title.
  struct Entry {
    std::string label, color;
    bool dashed, faded, triangle;
  };
  std::vector<Entry> legend;
  for (const auto& s : c.series)
    if (!s.name.empty()) legend.push_back({s.name, s.color, s.dashed, s.faded, false});
  for (const auto& [label, color] : c.marker_legend)
    legend.push_back({label, color, true, false, false});

  // Which values a log axis can show.
  bool log_y = c.log_y;
  for (const auto& s : c.series)
    for (double y : s.y)
      if (finite(y) && y <= 0) log_y = false;
  auto drawable = [&](double y) { return finite(y) && (!log_y || y > 0); };
  auto ty = [&](double y) { return log_y ? std::log10(y) : y; };

  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  int64_t nonfinite = 0;
  for (const auto& s : c.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!finite(s.x[i])) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      if (drawable(s.y[i])) {
        y0 = std::min(y0, ty(s.y[i])), y1 = std::max(y1, ty(s.y[i]));
      } else {
        ++nonfinite;
      }
    }
  for (const auto& m : c.markers)
    if (finite(m.x)) x0 = std::min(x0, m.x), x1 = std::max(x1, m.x);
  if (nonfinite > 0)
    legend.push_back(
        {"non-finite (" + std::to_string(nonfinite) + ")", "#d62728", false, false, true});

  double lx = ml, ly = 38;
  std::vector<std::pair<double, double>> pos;  // legend entry positions
  for (const auto& e : legend) {
    const double w = 28 + text_width(e.label) + 16;
    if (lx + w > W - mr && lx > ml) lx = ml, ly += 16;
    pos.push_back({lx, ly});
    lx += w;
  }
  const double mt = ly + 14;
  const double plot_w = W - ml - mr, plot_h = std::max(60.0, H - mt - mb);
  const double total_h = mt + plot_h + mb;

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"" << xml_escape(c.id)
    << "\" class=\"chart\" "
    << "width=\"" << W << "\" height=\"" << px(total_h) << "\" viewBox=\"0 0 " << W << ' '
    << px(total_h) << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<title>" << xml_escape(c.title) << "</title>\n";
  o << "<text x=\"" << ml << "\" y=\"18\" font-size=\"14\" font-weight=\"bold\">"
    << xml_escape(c.title) << "</text>\n";
  for (size_t i = 0; i < legend.size(); ++i) {
    const auto& e = legend[i];
    const auto [ex, ey] = pos[i];
    if (e.triangle) {
      o << "<path class=\"legend\" d=\"M" << px(ex + 11) << ' ' << px(ey - 8)
        << " l5 8 h-10 z\" fill=\"" << e.color << "\"/>";
    } else {
      o << "<line x1=\"" << px(ex) << "\" y1=\"" << px(ey - 4) << "\" x2=\"" << px(ex + 22)
        << "\" y2=\"" << px(ey - 4) << "\" stroke=\"" << xml_escape(e.color)
        << "\" stroke-width=\"2\"" << (e.dashed ? " stroke-dasharray=\"4 3\"" : "")
        << (e.faded ? " opacity=\"0.4\"" : "") << "/>";
    }
    o << "<text x=\"" << px(ex + 28) << "\" y=\"" << px(ey) << "\">" << xml_escape(e.label)
      << "</text>\n";
  }

  const double top = mt, bottom = mt + plot_h, left = ml, right = ml + plot_w;
  o << "<rect x=\"" << left << "\" y=\"" << px(top) << "\" width=\"" << px(plot_w) << "\" height=\""
    << px(plot_h) << "\" fill=\"#fff\" stroke=\"#999\"/>\n";
  if (!(x0 <= x1)) {  // no point at all
    o << "<text x=\"" << px((left + right) / 2) << "\" y=\"" << px((top + bottom) / 2)
      << "\" text-anchor=\"middle\" fill=\"#666\">no data</text>\n</svg>\n";
    return o.str();
  }
  if (x0 == x1) x0 -= 1, x1 += 1;
  const bool any_y = y0 <= y1;
  if (!any_y) y0 = 0, y1 = 1;
  if (y0 == y1) {
    const double d = log_y ? 0.1 : (y0 == 0 ? 1 : std::abs(y0) * 0.1);
    y0 -= d, y1 += d;
  } else {
    const double pad = 0.05 * (y1 - y0);
    y0 = (!log_y && y0 >= 0 && y0 - pad < 0) ? 0 : y0 - pad;
    y1 += pad;
  }
  const Scale sx{x0, x1, left, right}, sy{y0, y1, bottom, top};

  // Grid and ticks.
  std::vector<double> xt = nice_ticks(x0, x1, 8);
  bool integer_x = true;
  for (const auto& s : c.series)
    for (double x : s.x)
      if (finite(x) && x != std::floor(x)) integer_x = false;
  if (integer_x) std::erase_if(xt, [](double v) { return v != std::floor(v); });
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1;
  for (double v : xt) {
    const double X = sx(v);
    o << "<line x1=\"" << px(X) << "\" y1=\"" << px(top) << "\" x2=\"" << px(X) << "\" y2=\""
      << px(bottom + 4) << "\" stroke=\"#eee\"/><text x=\"" << px(X) << "\" y=\"" << px(bottom + 16)
      << "\" text-anchor=\"middle\">" << format_tick(v, xstep) << "</text>\n";
  }
  if (any_y) {
    const std::vector<double> yt =
        log_y ? log_ticks(std::pow(10.0, y0), std::pow(10.0, y1), 6) : nice_ticks(y0, y1, 6);
    const double ystep = log_y ? 0 : (yt.size() > 1 ? yt[1] - yt[0] : 1);
    const bool linear_in_log = log_y && y1 - y0 < 1;  // log_ticks fell back to linear values
    const double lstep = linear_in_log && yt.size() > 1 ? yt[1] - yt[0] : 0;
    for (double v : yt) {
      const double Y = sy(log_y ? std::log10(v) : v);
      o << "<line x1=\"" << px(left - 4) << "\" y1=\"" << px(Y) << "\" x2=\"" << px(right)
        << "\" y2=\"" << px(Y) << "\" stroke=\"#eee\"/><text x=\"" << px(left - 6) << "\" y=\""
        << px(Y + 4) << "\" text-anchor=\"end\">" << format_tick(v, log_y ? lstep : ystep)
        << "</text>\n";
    }
  } else {
    o << "<text x=\"" << px((left + right) / 2) << "\" y=\"" << px((top + bottom) / 2)
      << "\" text-anchor=\"middle\" fill=\"#666\">no finite values</text>\n";
  }
  o << "<text x=\"" << px((left + right) / 2) << "\" y=\"" << px(bottom + 34)
    << "\" text-anchor=\"middle\">" << xml_escape(c.x_label) << "</text>\n";
  o << "<text transform=\"translate(14 " << px((top + bottom) / 2) << ") rotate(-90)\" "
    << "text-anchor=\"middle\">" << xml_escape(c.y_label) << (log_y ? " (log scale)" : "")
    << "</text>\n";

  // Events: one line per pixel column and kind, the tooltip counts the rest.
  struct Ev {
    const Marker* m;
    int n;
  };
  std::map<std::pair<long, std::string>, Ev> evs;
  for (const auto& m : c.markers) {
    if (!finite(m.x)) continue;
    auto key = std::make_pair(std::lround(sx(m.x)), m.color + (m.full ? "f" : "t"));
    auto it = evs.find(key);
    if (it == evs.end())
      evs.emplace(key, Ev{&m, 1});
    else
      ++it->second.n;
  }
  for (const auto& [key, e] : evs) {
    const double X = sx(e.m->x);
    std::string tip = e.m->tooltip;
    if (e.n > 1) tip += " (and " + std::to_string(e.n - 1) + " more here)";
    o << "<g><title>" << xml_escape(tip) << "</title><line x1=\"" << px(X) << "\" y1=\"" << px(top)
      << "\" x2=\"" << px(X) << "\" y2=\"" << px(e.m->full ? bottom : top + 8) << "\" stroke=\""
      << xml_escape(e.m->color) << "\" stroke-width=\"" << (e.m->full ? 1.5 : 2) << "\""
      << (e.m->full ? " stroke-dasharray=\"5 3\"" : "") << "/></g>\n";
  }

  // Series: runs of drawable points become path segments; thousands of points are reduced to
  // the first, lowest, highest and last point of each pixel column, which keeps spikes visible.
  std::map<long, std::string> bad;  // pixel -> tooltip of a non-finite point
  const size_t max_points = static_cast<size_t>(2 * plot_w);
  for (const auto& s : c.series) {
    const size_t n = std::min(s.x.size(), s.y.size());
    std::vector<std::vector<size_t>> runs(1);
    for (size_t i = 0; i < n; ++i) {
      if (!finite(s.x[i])) continue;
      if (drawable(s.y[i])) {
        runs.back().push_back(i);
      } else {
        if (!runs.back().empty()) runs.emplace_back();
        bad.emplace(std::lround(sx(s.x[i])), (s.name.empty() ? std::string("value") : s.name) +
                                                 " is " + format_value(s.y[i]) + " at " +
                                                 c.x_label + " " + format_value(s.x[i]));
      }
    }
    std::string d, dots;
    for (auto& run : runs) {
      if (run.empty()) continue;
      if (n > max_points) {
        std::vector<size_t> keep;
        size_t b = 0;
        while (b < run.size()) {
          const long col = std::lround(sx(s.x[run[b]]));
          size_t e = b, lo = run[b], hi = run[b];
          while (e < run.size() && std::lround(sx(s.x[run[e]])) == col) {
            if (s.y[run[e]] < s.y[lo]) lo = run[e];
            if (s.y[run[e]] > s.y[hi]) hi = run[e];
            ++e;
          }
          for (size_t k : {run[b], std::min(lo, hi), std::max(lo, hi), run[e - 1]})
            if (keep.empty() || keep.back() != k) keep.push_back(k);
          b = e;
        }
        run = std::move(keep);
      }
      if (run.size() == 1 || s.markers) {
        for (size_t i : run)
          dots +=
              "<circle cx=\"" + px(sx(s.x[i])) + "\" cy=\"" + px(sy(ty(s.y[i]))) + "\" r=\"2.5\"/>";
      }
      if (run.size() < 2) continue;
      for (size_t k = 0; k < run.size(); ++k) {
        d += k == 0 ? 'M' : 'L';
        d += px(sx(s.x[run[k]]));
        d += ' ';
        d += px(sy(ty(s.y[run[k]])));
        d += ' ';
      }
    }
    const std::string color = xml_escape(s.color);
    if (!d.empty()) {
      d.pop_back();
      o << "<path d=\"" << d << "\" fill=\"none\" stroke=\"" << color << "\" stroke-width=\""
        << (s.faded ? 1 : 1.6) << "\" stroke-linejoin=\"round\""
        << (s.dashed ? " stroke-dasharray=\"5 3\"" : "") << (s.faded ? " opacity=\"0.35\"" : "")
        << "><title>" << xml_escape(s.name) << "</title></path>\n";
    }
    if (!dots.empty())
      o << "<g fill=\"" << color << "\"" << (s.faded ? " opacity=\"0.35\"" : "") << ">" << dots
        << "</g>\n";
  }
  for (const auto& [col, tip] : bad)
    o << "<path class=\"nonfinite\" d=\"M" << col << ' ' << px(bottom - 9)
      << " l5 8 h-10 z\" fill=\"#d62728\"><title>" << xml_escape(tip) << "</title></path>\n";
  o << "</svg>\n";
  return o.str();
}

namespace {

// Diverging blue-white-red (after Moreland's cool-warm map): t in [0, 1].
std::string diverging(double t) {
  t = std::clamp(t, 0.0, 1.0);
  const double a[3] = {59, 76, 192}, m[3] = {247, 247, 247}, b[3] = {180, 4, 38};
  double rgb[3];
  for (int i = 0; i < 3; ++i)
    rgb[i] = t < 0.5 ? a[i] + (m[i] - a[i]) * (t / 0.5) : m[i] + (b[i] - m[i]) * ((t - 0.5) / 0.5);
  char s[8];
  std::snprintf(s, sizeof s, "#%02x%02x%02x", int(std::lround(rgb[0])), int(std::lround(rgb[1])),
                int(std::lround(rgb[2])));
  return s;
}

}  // namespace

std::string render_heatmap(const Heatmap& h) {
  const size_t C = std::min(h.x.size(), h.v.size());
  const int R = std::max(1, h.rows);
  const double W = h.width, ml = 70, mr = 110, mt = 30, mb = 44;
  const double rh = std::clamp(240.0 / R, 2.0, 14.0);
  const double plot_w = W - ml - mr, plot_h = rh * R;
  const double bh = std::max(plot_h, 60.0);  // colour bar height
  const double H = mt + std::max(plot_h, bh + 22) + mb;
  const double span = h.vmax > h.vmin ? h.vmax - h.vmin : 1.0;
  const double left = ml, right = ml + plot_w, top = mt, bottom = mt + plot_h;

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"" << xml_escape(h.id)
    << "\" class=\"heatmap\" "
    << "width=\"" << W << "\" height=\"" << px(H) << "\" viewBox=\"0 0 " << W << ' ' << px(H)
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<title>" << xml_escape(h.title) << "</title>\n";
  o << "<text x=\"" << ml << "\" y=\"18\" font-size=\"14\" font-weight=\"bold\">"
    << xml_escape(h.title) << "</text>\n";
  if (C == 0) {
    o << "<text x=\"" << px((left + right) / 2) << "\" y=\"" << px((top + bottom) / 2)
      << "\" text-anchor=\"middle\" fill=\"#666\">no data</text>\n</svg>\n";
    return o.str();
  }

  // Column c covers the steps half-way to its neighbours.
  std::vector<double> lo(C), hi(C);
  for (size_t c = 0; c < C; ++c) {
    const double prev = c > 0 ? h.x[c - 1] : (C > 1 ? 2 * h.x[0] - h.x[1] : h.x[0] - 1);
    const double next = c + 1 < C ? h.x[c + 1] : (C > 1 ? 2 * h.x[C - 1] - h.x[C - 2] : h.x[0] + 1);
    lo[c] = (prev + h.x[c]) / 2, hi[c] = (h.x[c] + next) / 2;
  }
  const Scale sx{lo[0], hi[C - 1], left, right};
  const size_t max_cols =
      static_cast<size_t>(std::max(1.0, std::min(plot_w, static_cast<double>(h.max_cells) / R)));

  o << "<g shape-rendering=\"crispEdges\">\n";
  bool any_missing = false;
  size_t b = 0;
  while (b < C) {
    // Columns that fall in the same bin (of max_cols across the width) are averaged.
    const auto bin = [&](size_t c) {
      return std::min(max_cols - 1,
                      static_cast<size_t>(std::max(0.0, (sx(h.x[c]) - left) / plot_w * max_cols)));
    };
    size_t e = b;
    while (e < C && bin(e) == bin(b)) ++e;
    const double X0 = sx(lo[b]), X1 = sx(hi[e - 1]);
    std::vector<std::string> fill(R, "#bbbbbb");
    for (int r = 0; r < R; ++r) {
      double sum = 0;
      int n = 0;
      for (size_t c = b; c < e; ++c)
        if (static_cast<size_t>(r) < h.v[c].size() && finite(h.v[c][r])) sum += h.v[c][r], ++n;
      if (n > 0)
        fill[r] = diverging((sum / n - h.vmin) / span);
      else
        any_missing = true;
    }
    // One rect per run of equal colours down the column keeps balanced runs small.
    for (int r = 0; r < R;) {
      int r1 = r + 1;
      while (r1 < R && fill[r1] == fill[r]) ++r1;
      o << "<rect x=\"" << px(X0) << "\" y=\"" << px(top + r * rh) << "\" width=\""
        << px(std::max(0.6, X1 - X0 + 0.3)) << "\" height=\"" << px((r1 - r) * rh) << "\" fill=\""
        << fill[r] << "\"/>";
      r = r1;
    }
    o << '\n';
    b = e;
  }
  o << "</g>\n<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << px(plot_w)
    << "\" height=\"" << px(plot_h) << "\" fill=\"none\" stroke=\"#999\"/>\n";

  // Axes: steps below, experts on the left (every k-th label when there are many).
  std::vector<double> xt = nice_ticks(lo[0], hi[C - 1], 8);
  std::erase_if(xt, [](double v) { return v != std::floor(v); });
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1;
  for (double v : xt)
    o << "<line x1=\"" << px(sx(v)) << "\" y1=\"" << px(bottom) << "\" x2=\"" << px(sx(v))
      << "\" y2=\"" << px(bottom + 4) << "\" stroke=\"#999\"/><text x=\"" << px(sx(v)) << "\" y=\""
      << px(bottom + 16) << "\" text-anchor=\"middle\">" << format_tick(v, xstep) << "</text>\n";
  const int every = std::max(1, static_cast<int>(std::ceil(R * 11.0 / std::max(plot_h, 1.0))));
  for (int r = 0; r < R; r += every)
    o << "<text x=\"" << px(left - 4) << "\" y=\"" << px(top + (r + 0.5) * rh + 4)
      << "\" text-anchor=\"end\">" << r << "</text>\n";
  o << "<text x=\"" << px((left + right) / 2) << "\" y=\"" << px(bottom + 34)
    << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text transform=\"translate(14 " << px((top + bottom) / 2) << ") rotate(-90)\" "
    << "text-anchor=\"middle\">" << xml_escape(h.y_label) << "</text>\n";

  // Colour bar on the right, vmin at the bottom.
  const double bx = right + 16, bw = 14;
  const int steps = 32;
  o << "<g class=\"colorbar\" shape-rendering=\"crispEdges\">";
  for (int i = 0; i < steps; ++i) {
    const double t = (i + 0.5) / steps;
    o << "<rect x=\"" << px(bx) << "\" y=\"" << px(top + bh - (i + 1) * bh / steps) << "\" width=\""
      << px(bw) << "\" height=\"" << px(bh / steps + 0.3) << "\" fill=\"" << diverging(t) << "\"/>";
  }
  o << "</g>\n";
  for (const auto& [v, label] : h.scale_ticks) {
    const double Y = top + bh - (std::clamp(v, h.vmin, h.vmin + span) - h.vmin) / span * bh;
    o << "<line x1=\"" << px(bx + bw) << "\" y1=\"" << px(Y) << "\" x2=\"" << px(bx + bw + 3)
      << "\" y2=\"" << px(Y) << "\" stroke=\"#333\"/><text x=\"" << px(bx + bw + 5) << "\" y=\""
      << px(Y + 4) << "\">" << xml_escape(label) << "</text>\n";
  }
  if (any_missing)
    o << "<rect x=\"" << px(bx) << "\" y=\"" << px(top + bh + 6) << "\" width=\"" << px(bw)
      << "\" height=\"8\" fill=\"#bbbbbb\"/><text x=\"" << px(bx + bw + 5) << "\" y=\""
      << px(top + bh + 14) << "\">no data</text>\n";
  o << "</svg>\n";
  return o.str();
}

}  // namespace moe::svg
