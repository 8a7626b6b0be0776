// Int8Weights: packed int8 copies of a model's linear weights, looked up by the fp32 offsets.
#include "model/quantized.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

#include "core/error.h"
#include "kernels/cpu/int8.h"
#include "model/model.h"

namespace moe {

namespace {

constexpr const char* kOp = "quantize";

}  // namespace

bool is_int8_param(const ParamSpec& spec) {
  // q/k/v/o_proj, gate/up/down_proj of dense FFNs, shared and routed experts. The router is
  // "mlp.gate.weight" and stays fp32.
  return is_linear_weight(spec);
}

Int8Weights::Int8Weights(const ParamLayout& layout) : layout_numel_(layout.total_numel) {
  // Scales per routed expert, by (layer, expert): the s_stride of its weights.
  std::map<std::pair<int64_t, int64_t>, int64_t> expert_rows;
  int64_t q_pos = 0, s_pos = 0;
  for (const ParamSpec& s : layout.specs) {
    if (!is_int8_param(s)) continue;
    MOE_CHECK(entries_.empty() || s.offset > entries_.back().offset, kOp,
              "the layout's weights are not in offset order at '", s.name, "'");
    entries_.push_back({s.offset, s.shape[1], s.shape[0], q_pos, s_pos, 0, 0});
    if (s.expert >= 0) expert_rows[{s.layer, s.expert}] += s.shape[0];
    q_pos += s.numel;
    s_pos += s.shape[0];
  }
  size_t i = 0;
  for (const ParamSpec& s : layout.specs) {
    if (!is_int8_param(s)) continue;
    if (s.expert >= 0) {
      entries_[i].q_stride = layout.expert_block;
      entries_[i].s_stride = expert_rows[{s.layer, s.expert}];
    }
    ++i;
  }
  // Every float of a routed expert's block is an int8 weight, so the copies of consecutive
  // experts are expert_block int8 values apart, as the fp32 ones are expert_block floats apart.
  for (const ParamSpec& s : layout.specs)
    if (s.expert >= 0)
      MOE_CHECK(is_int8_param(s), kOp, "routed expert tensor '", s.name,
                "' is not an int8 weight; the grouped int8 kernel needs every expert weight");
  q_.assign(size_t(q_pos), 0);
  scale_.assign(size_t(s_pos), 1.0f);
  sum_.assign(size_t(s_pos), 0);
}

Int8Weights Int8Weights::quantize(const Model& model) {
  return quantize(model.layout(), model.params().data());
}

Int8Weights Int8Weights::quantize(const ParamLayout& layout, const float* params) {
  Int8Weights w(layout);
  for (const ParamSpec& s : layout.specs)
    if (is_int8_param(s)) w.quantize_one(s, params + s.offset);
  return w;
}

const Int8Weights::Entry* Int8Weights::entry_at(int64_t param_offset) const {
  const auto it = std::lower_bound(entries_.begin(), entries_.end(), param_offset,
                                   [](const Entry& e, int64_t off) { return e.offset < off; });
  return it != entries_.end() && it->offset == param_offset ? &*it : nullptr;
}

Int8Tensor Int8Weights::find(int64_t param_offset, int64_t out) const {
  const Entry* e = entry_at(param_offset);
  if (e == nullptr || out <= 0) return {};
  // Walk the adjacent weights (q, k, v or gate, up) until `out` rows are covered.
  int64_t rows = 0;
  for (const Entry* c = e; rows < out; ++c) {
    if (c == entries_.data() + entries_.size()) return {};
    const bool adjacent = c->in == e->in && c->offset == e->offset + rows * e->in &&
                          c->q_pos == e->q_pos + rows * e->in && c->s_pos == e->s_pos + rows;
    if (!adjacent) return {};
    rows += c->out;
  }
  Int8Tensor t;
  t.q = q_.data() + e->q_pos;
  t.scale = scale_.data() + e->s_pos;
  t.sum = sum_.data() + e->s_pos;
  t.out = out;
  t.in = e->in;
  t.q_stride = e->q_stride;
  t.s_stride = e->s_stride;
  return t;
}

void Int8Weights::set(const ParamSpec& spec, const int8_t* q, const float* scale) {
  const Entry* e = entry_at(spec.offset);
  MOE_CHECK(e != nullptr && is_int8_param(spec), kOp, "tensor '", spec.name,
            "' is not one of the int8 weights (only *_proj.weight are)");
  MOE_CHECK(e->out == spec.shape[0] && e->in == spec.shape[1], kOp, "tensor '", spec.name,
            "' does not match the layout the int8 weights were made for");
  std::memcpy(q_.data() + e->q_pos, q, size_t(e->out * e->in));
  std::memcpy(scale_.data() + e->s_pos, scale, sizeof(float) * size_t(e->out));
  cpu::int8_row_sums(sum_.data() + e->s_pos, q_.data() + e->q_pos, e->out, e->in);
}

void Int8Weights::quantize_one(const ParamSpec& spec, const float* W) {
  const Entry* e = entry_at(spec.offset);
  MOE_CHECK(e != nullptr && is_int8_param(spec), kOp, "tensor '", spec.name,
            "' is not one of the int8 weights (only *_proj.weight are)");
  try {
    cpu::quantize_weight_int8(q_.data() + e->q_pos, scale_.data() + e->s_pos, W, e->out, e->in);
  } catch (const Error& err) {
    MOE_FAIL(kOp, "tensor '", spec.name, "': ", err.what());
  }
  cpu::int8_row_sums(sum_.data() + e->s_pos, q_.data() + e->q_pos, e->out, e->in);
}

bool Int8Weights::matches(const ParamLayout& layout) const {
  if (layout.total_numel != layout_numel_) return false;
  size_t i = 0;
  for (const ParamSpec& s : layout.specs) {
    if (!is_int8_param(s)) continue;
    if (i >= entries_.size() || entries_[i].offset != s.offset || entries_[i].out != s.shape[0] ||
        entries_[i].in != s.shape[1])
      return false;
    ++i;
  }
  return i == entries_.size();
}

Int8Data Int8Weights::data(const ParamSpec& spec) const {
  const Entry* e = entry_at(spec.offset);
  if (e == nullptr || !is_int8_param(spec)) return {};
  return {q_.data() + e->q_pos, scale_.data() + e->s_pos};
}

int64_t Int8Weights::bytes() const {
  return int64_t(q_.size() + scale_.size() * sizeof(float) + sum_.size() * sizeof(int32_t));
}

CheckpointInfo load_quantized(const std::string& dir, ModelConfig* cfg, std::vector<float>* params,
                              Int8Weights* int8, bool quantize_fp32) {
  MOE_CHECK(int8 != nullptr, kOp, "load_quantized needs an Int8Weights to fill");
  // The stored copies, by tensor name, until the layout is known.
  std::map<std::string, std::pair<std::vector<int8_t>, std::vector<float>>> stored;
  const CheckpointInfo info =
      load_checkpoint(dir, cfg, params, [&](const ParamSpec& s, const int8_t* q, const float* sc) {
        stored[s.name] = {std::vector<int8_t>(q, q + s.numel),
                          std::vector<float>(sc, sc + s.shape[0])};
      });
  *int8 = Int8Weights();
  if (info.format != WeightFormat::kInt8 && !quantize_fp32) return info;
  const ParamLayout layout = make_layout(*cfg);
  Int8Weights w(layout);
  for (const ParamSpec& s : layout.specs) {
    if (!is_int8_param(s)) continue;
    const auto it = stored.find(s.name);
    if (it != stored.end()) {
      w.set(s, it->second.first.data(), it->second.second.data());
    } else {  // kept in fp32 by the file (or not an int8 folder): quantize it now
      w.quantize_one(s, params->data() + s.offset);
    }
  }
  *int8 = std::move(w);
  return info;
}

void save_quantized(const std::string& dir, const ModelConfig& cfg, const ParamLayout& layout,
                    const float* params, const Int8Weights& int8) {
  MOE_CHECK(!int8.empty(), kOp, "no int8 weights to save to ", dir,
            "; build them with Int8Weights::quantize");
  SaveOptions opt;
  opt.format = WeightFormat::kInt8;
  opt.int8 = [&int8](const ParamSpec& s) { return int8.data(s); };
  save_checkpoint(dir, cfg, layout, params, opt);
}

}  // namespace moe
