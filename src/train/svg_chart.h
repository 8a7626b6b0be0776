// Hand-written SVG charts for `moe report`: line charts (nice-number ticks, optional log y,
// legend, event markers, non-finite points marked on the x axis, min/max downsampling so
// thousands of steps stay small) and heatmaps with a colour scale. The output is well-formed
// XML (every text escaped, every tag closed), so it can sit inline in an XHTML page.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::svg {

// Escapes & < > " ' and replaces control characters and invalid UTF-8 bytes with '?', so
// any string (a run folder name, an event detail) is safe as XML text or attribute.
std::string xml_escape(std::string_view s);

// About `target` evenly spaced round values (1, 2 or 5 times a power of ten) inside [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target);
// Ticks for a log axis on [lo, hi] (lo > 0): decades, with 2 and 5 when few decades, or
// nice linear values when the range is under a decade.
std::vector<double> log_ticks(double lo, double hi, int target);
// A tick label: as many decimals as `step` needs; 12k, 3.5M for large values.
std::string format_tick(double v, double step);
// A short number for text: 4 significant digits, "nan"/"inf" spelled out.
std::string format_value(double v);

struct Series {
  std::string name;          // legend label ("" = not in the legend)
  std::string color;         // CSS colour, e.g. "#1f77b4"
  std::vector<double> x, y;  // same length; x increasing; a non-finite y is a gap and is
                             // marked under the x axis
  bool dashed = false;
  bool faded = false;    // drawn thin and translucent (e.g. steps undone by a rollback)
  bool markers = false;  // a dot at every point (sparse series such as validation loss)
};

struct Marker {  // an event: a vertical line across the plot
  double x = 0;
  std::string color;
  std::string tooltip;  // shown on hover through an SVG <title>
  bool full = true;     // false: a short tick at the top only (frequent events)
};

struct LineChart {
  std::string id;     // element id, e.g. "chart-loss"
  std::string title;  // heading drawn in the chart and its <title>
  std::string x_label = "step";
  std::string y_label;
  bool log_y = false;  // falls back to linear if a finite value is <= 0
  std::vector<Series> series;
  std::vector<Marker> markers;
  std::vector<std::pair<std::string, std::string>> marker_legend;  // (label, colour)
  int width = 880;                                                 // px
  int height = 300;                                                // px
};

std::string render_line_chart(const LineChart& c);

struct Heatmap {
  std::string id;  // element id, e.g. "heatmap-layer-1"
  std::string title;
  std::string y_label = "expert";
  std::vector<double> x;               // (C) step of each column, increasing
  std::vector<std::vector<double>> v;  // [C][R] cell values; non-finite cells are grey
  int rows = 0;                        // R
  double vmin = -1, vmax = 1;          // colour range; blue at vmin, white at the middle,
                                       // red at vmax; values outside are clamped
  std::vector<std::pair<double, std::string>> scale_ticks;  // labels on the colour bar
  int width = 880;
  int max_cells = 24000;  // columns are averaged down to stay under this
};

std::string render_heatmap(const Heatmap& h);

}  // namespace moe::svg
