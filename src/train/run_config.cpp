#include "train/run_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <toml++/toml.h>

#include "core/error.h"

namespace moe {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The default run: `moe train` with no arguments. DeepSeek-style routing, small enough for
// about a minute on two cores.
ModelConfig tiny_model() {
  ModelConfig c;
  c.vocab_size = 256;
  c.hidden_size = 128;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.intermediate_size = 384;
  c.moe_intermediate_size = 128;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 1.0;
  c.max_position_embeddings = 256;
  c.seq_aux_alpha = 1e-4;
  c.bias_update_rate = 1e-3;
  return c;
}

enum class Kind { kInt, kFloat, kBool, kString };

// One settable key: where it lives, its type, its allowed values, and what it means.
struct Field {
  const char* section;
  const char* key;
  Kind kind;
  void* ptr;
  double lo, hi;        // numeric range (inclusive)
  const char* choices;  // strings: "a|b|c", or nullptr for any
  const char* help;
};

std::vector<Field> fields_of(RunConfig& rc) {
  TrainConfig& t = rc.train;
  DataConfig& d = rc.data;
  constexpr double kInf = HUGE_VAL;
  return {
      {"data", "source", Kind::kString, &d.source, 0, 0, nullptr,
       "\"builtin\", a text file, or a folder made by `moe data prepare`"},
      {"data", "tokenizer", Kind::kString, &d.tokenizer, 0, 0, nullptr,
       "\"\" (byte for text, the folder's own for prepared data), \"byte\" or a tokenizer.json"},
      {"data", "val_fraction", Kind::kFloat, &d.val_fraction, 0, 0.5, nullptr,
       "text files: the held-out tail (prepared folders keep their own split)"},
      {"data", "builtin_bytes", Kind::kInt, &d.builtin_bytes, 4096, 1e10, nullptr,
       "size of the built-in corpus"},
      {"train", "steps", Kind::kInt, &t.steps, 1, 1e12, nullptr, "optimizer steps"},
      {"train", "batch", Kind::kInt, &t.batch, 1, 1e6, nullptr, "sequences per micro-batch"},
      {"train", "seq_len", Kind::kInt, &t.seq_len, 1, 1e7, nullptr,
       "tokens per sequence (<= max_position_embeddings)"},
      {"train", "accum", Kind::kInt, &t.accum, 1, 1e6, nullptr, "micro-batches per step"},
      {"train", "seed", Kind::kInt, &t.seed, 0, 9.007199254740992e15, nullptr,
       "weights and data order"},
      {"train", "dtype", Kind::kString, &t.dtype, 0, 0, "fp32|bf16|fp8",
       "GEMM precision: bf16 inputs or FP8 E4M3 tiles (emulated), f32 accumulation; master "
       "weights, gradients and AdamW stay f32"},
      {"train", "eval_every", Kind::kInt, &t.eval_every, 0, 1e12, nullptr,
       "steps between validation passes (0 = at the end)"},
      {"train", "eval_tokens", Kind::kInt, &t.eval_tokens, 0, 1e12, nullptr,
       "held-out tokens per validation pass"},
      {"train", "sample_every", Kind::kInt, &t.sample_every, 0, 1e12, nullptr,
       "steps between samples (0 = none)"},
      {"optim", "lr", Kind::kFloat, &t.lr, 0, 10, nullptr, "peak learning rate"},
      {"optim", "min_lr_ratio", Kind::kFloat, &t.min_lr_ratio, 0, 1, nullptr,
       "final lr = lr * this"},
      {"optim", "warmup", Kind::kInt, &t.warmup, 0, 1e12, nullptr, "linear warmup steps"},
      {"optim", "schedule", Kind::kString, &t.schedule, 0, 0, "cosine|wsd|constant",
       "learning-rate schedule"},
      {"optim", "decay_frac", Kind::kFloat, &t.decay_frac, 0, 1, nullptr,
       "wsd: fraction of steps in the final decay"},
      {"optim", "grad_clip", Kind::kFloat, &t.grad_clip, 0, kInf, nullptr,
       "global gradient-norm clip (0 = off)"},
      {"optim", "beta1", Kind::kFloat, &t.adamw.beta1, 0, 0.999999, nullptr, "AdamW beta1"},
      {"optim", "beta2", Kind::kFloat, &t.adamw.beta2, 0, 0.999999999, nullptr, "AdamW beta2"},
      {"optim", "eps", Kind::kFloat, &t.adamw.eps, 0, 1, nullptr, "AdamW epsilon"},
      {"optim", "weight_decay", Kind::kFloat, &t.adamw.weight_decay, 0, 10, nullptr,
       "decoupled weight decay (norms and biases excluded)"},
      {"checkpoint", "dir", Kind::kString, &t.out_dir, 0, 0, nullptr,
       "run folder (final model, checkpoints/, metrics.jsonl)"},
      {"checkpoint", "every", Kind::kInt, &t.ckpt_every, 0, 1e12, nullptr,
       "steps between resumable checkpoints (0 = at the end only)"},
      {"checkpoint", "keep", Kind::kInt, &t.ckpt_keep, 1, 1e6, nullptr,
       "resumable checkpoints kept"},
      {"checkpoint", "stop_after", Kind::kInt, &t.stop_after, 0, 1e12, nullptr,
       "stop with a checkpoint after this many steps (0 = run to the end)"},
      {"checkpoint", "resume", Kind::kBool, &t.resume, 0, 0, nullptr,
       "continue from the newest valid checkpoint"},
      {"guard", "skip_nonfinite", Kind::kBool, &t.guard.skip_nonfinite, 0, 0, nullptr,
       "skip steps with a NaN/inf loss or gradient"},
      {"guard", "spike_zscore", Kind::kFloat, &t.guard.spike_zscore, 0, kInf, nullptr,
       "z-score above which a loss is a spike (0 = off)"},
      {"guard", "spike_window", Kind::kInt, &t.guard.spike_window, 2, 1e9, nullptr,
       "steps in the moving window"},
      {"guard", "spike_min_history", Kind::kInt, &t.guard.spike_min_history, 2, 1e9, nullptr,
       "accepted steps before detection starts"},
      {"guard", "max_spikes", Kind::kInt, &t.guard.max_spikes, 1, 1e9, nullptr,
       "spikes within a window that trigger a rollback"},
      {"guard", "rollback_lr_factor", Kind::kFloat, &t.guard.rollback_lr_factor, 0, 1, nullptr,
       "lr multiplier after a rollback"},
      {"parallel", "dp", Kind::kInt, &rc.parallel.dp, 0, 1e6, nullptr,
       "expert-data-parallel size (0 = ranks / ep); ranks = dp x ep"},
      {"parallel", "ep", Kind::kInt, &rc.parallel.ep, 1, 1e6, nullptr,
       "expert-parallel size: routed experts split over ep ranks (divides n_routed_experts)"},
      {"parallel", "bucket_mb", Kind::kFloat, &rc.parallel.bucket_mb, 1.0 / 1024, 1e6, nullptr,
       "gradient bucket size in MiB (reduce-scattered as backward finishes it)"},
      {"parallel", "overlap", Kind::kBool, &rc.parallel.overlap, 0, 0, nullptr,
       "reduce-scatter gradient buckets during backward, all-gather parameters during forward"},
      {"parallel", "dispatch_dtype", Kind::kString, &rc.parallel.dispatch_dtype, 0, 0,
       "fp32|bf16|fp8", "expert-parallel dispatch on the wire (fp8: E4M3, a scale per 128)"},
      {"parallel", "combine_dtype", Kind::kString, &rc.parallel.combine_dtype, 0, 0, "fp32|bf16",
       "expert outputs on the wire back to their tokens"},
      {"parallel", "grad_comm_dtype", Kind::kString, &rc.parallel.grad_comm_dtype, 0, 0,
       "fp32|bf16|int8", "gradient reduce-scatter on the wire (int8: a scale per 128)"},
      {"parallel", "error_feedback", Kind::kBool, &rc.parallel.error_feedback, 0, 0, nullptr,
       "compressed gradients: add each rank's rounding residual to its next step"},
      {"parallel", "mode", Kind::kString, &rc.parallel.mode, 0, 0, "sync|diloco",
       "sync: every step; diloco: groups sync every inner_steps steps"},
      {"parallel", "inner_steps", Kind::kInt, &rc.parallel.inner_steps, 1, 1e9, nullptr,
       "diloco: local steps between outer syncs"},
      {"parallel", "outer_lr", Kind::kFloat, &rc.parallel.outer_lr, 0, 10, nullptr,
       "diloco: outer Nesterov learning rate"},
      {"parallel", "outer_momentum", Kind::kFloat, &rc.parallel.outer_momentum, 0, 0.999999,
       nullptr, "diloco: outer Nesterov momentum"},
      {"parallel", "diloco_group", Kind::kInt, &rc.parallel.diloco_group, 0, 1e6, nullptr,
       "diloco: ranks per group (0 = the ranks of one host)"},
      {"parallel", "outer_comm_dtype", Kind::kString, &rc.parallel.outer_comm_dtype, 0, 0,
       "fp32|int8", "diloco: pseudo-gradients on the wire"},
      {"log", "every", Kind::kInt, &t.log_every, 1, 1e12, nullptr,
       "steps between progress lines and metrics records"},
      {"log", "progress", Kind::kString, &t.progress, 0, 0, "auto|plain|none",
       "live line on a terminal, plain lines, or nothing"},
      {"log", "metrics", Kind::kBool, &t.metrics, 0, 0, nullptr, "write metrics.jsonl"},
      {"log", "fault_inject", Kind::kString, &t.fault_inject, 0, 0, nullptr,
       "test hook, e.g. \"nan@12,spike@20\""},
  };
}

constexpr const char* kSections =
    "model, data, train, optim, checkpoint, guard, parallel, log";

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string keys_of(const std::vector<Field>& fields, const std::string& section) {
  std::string s;
  for (const auto& f : fields)
    if (section == f.section) s += std::string(s.empty() ? "" : ", ") + f.key;
  return s;
}

Field* find_field(std::vector<Field>& fields, const std::string& section, const std::string& key,
                  const std::string& where) {
  for (auto& f : fields)
    if (section == f.section && key == f.key) return &f;
  std::string best;
  size_t best_d = 3;
  for (const auto& f : fields) {
    if (section != f.section) continue;
    const size_t dist = edit_distance(key, f.key);
    if (dist < best_d) best_d = dist, best = f.key;
  }
  MOE_FAIL("config", where, ": unknown key [", section, "] ", key,
           best.empty() ? "" : "; did you mean " + best + "?", " Keys of [", section, "]: ",
           keys_of(fields, section));
}

std::string describe_allowed(const Field& f) {
  std::ostringstream s;
  switch (f.kind) {
    case Kind::kInt:
      s << "an integer in [" << int64_t(f.lo) << ", " << (f.hi >= 1e9 ? "..." : std::to_string(int64_t(f.hi))) << "]";
      break;
    case Kind::kFloat:
      s << "a number in [" << f.lo << ", ";
      if (std::isinf(f.hi)) {
        s << "inf";
      } else {
        s << f.hi;
      }
      s << "]";
      break;
    case Kind::kBool:
      s << "true or false";
      break;
    case Kind::kString:
      s << (f.choices ? std::string("one of ") + f.choices : std::string("a string"));
      break;
  }
  return s.str();
}

json toml_to_json(const toml::node& n) {
  if (auto v = n.value_exact<int64_t>()) return *v;
  if (auto v = n.value_exact<double>()) return *v;
  if (auto v = n.value_exact<bool>()) return *v;
  if (auto v = n.value_exact<std::string>()) return *v;
  return json();  // tables/arrays: parse_config reports the wrong type
}

// Sets a field from a TOML node; `where` is "file:line".
void set_from_toml(const Field& f, const toml::node& n, const std::string& where) {
  const std::string name = std::string("[") + f.section + "] " + f.key;
  auto bad = [&](const std::string& got) {
    MOE_FAIL("config", where, ": ", name, " = ", got, " is not allowed; use ", describe_allowed(f));
  };
  std::ostringstream got;
  const json as_json = toml_to_json(n);
  got << (as_json.is_null() ? std::string(n.is_table() ? "a table" : "an array") : as_json.dump());
  switch (f.kind) {
    case Kind::kInt: {
      const auto v = n.value_exact<int64_t>();
      if (!v || double(*v) < f.lo || double(*v) > f.hi) bad(got.str());
      *static_cast<int64_t*>(f.ptr) = *v;
      break;
    }
    case Kind::kFloat: {
      const auto v = n.value<double>();  // integers are accepted as numbers
      if (!v || !std::isfinite(*v) || *v < f.lo || *v > f.hi) bad(got.str());
      *static_cast<double*>(f.ptr) = *v;
      break;
    }
    case Kind::kBool: {
      const auto v = n.value_exact<bool>();
      if (!v) bad(got.str());
      *static_cast<bool*>(f.ptr) = *v;
      break;
    }
    case Kind::kString: {
      const auto v = n.value_exact<std::string>();
      if (!v) bad(got.str());
      if (f.choices) {
        bool ok = false;
        std::string c = f.choices;
        for (size_t p = 0; p <= c.size();) {
          const size_t q = std::min(c.find('|', p), c.size());
          ok |= c.substr(p, q - p) == *v;
          p = q + 1;
        }
        if (!ok) bad(got.str());
      }
      *static_cast<std::string*>(f.ptr) = *v;
      break;
    }
  }
}

// A command-line value as a TOML node of the field's type.
toml::table parse_value_as_toml(const std::string& text) {
  try {
    return toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    // Bare words are strings: --optim.schedule wsd
    toml::table t;
    t.insert("v", text);
    return t;
  }
}

std::string where_of(const std::string& path, const toml::node& n) {
  return path + ":" + std::to_string(n.source().begin.line);
}

}  // namespace

std::vector<Override> parse_overrides(const std::vector<std::string>& args) {
  std::vector<Override> out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    MOE_CHECK(a.rfind("--", 0) == 0 && a.find('.') != std::string::npos, "config",
              "unexpected argument '", a,
              "'; config overrides look like --train.steps 200 or --optim.lr=1e-3");
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      out.emplace_back(a.substr(2, eq - 2), a.substr(eq + 1));
    } else {
      MOE_CHECK(i + 1 < args.size(), "config", "override '", a, "' has no value");
      out.emplace_back(a.substr(2), args[++i]);
    }
  }
  return out;
}

RunConfig load_run_config(const std::string& path, const std::vector<Override>& overrides) {
  RunConfig rc;
  rc.model = tiny_model();
  rc.model_origin = "the built-in tiny model";
  rc.train.out_dir = "runs/default";
  std::vector<Field> fields = fields_of(rc);
  json model_json = json::parse(config_to_json(rc.model));
  bool model_changed = false;

  if (!path.empty()) {
    MOE_CHECK(fs::exists(path), "config", path, ": no such file; check the --config path");
    toml::table root;
    try {
      root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
      MOE_FAIL("config", path, ":", e.source().begin.line, ": ", e.description());
    }
    for (const auto& [sec_key, sec_node] : root) {
      const std::string section(sec_key.str());
      const std::string where = where_of(path, sec_node);
      MOE_CHECK(sec_node.is_table(), "config", where, ": '", section,
                "' must be a section like [train]; sections are ", kSections);
      const toml::table& tbl = *sec_node.as_table();
      if (section == "model") {
        // `config = "file.json"` (relative to this file) first, then inline keys over it.
        if (const auto* c = tbl.get("config")) {
          const auto rel = c->value_exact<std::string>();
          MOE_CHECK(rel.has_value(), "config", where_of(path, *c),
                    ": [model] config must be a path string to a config.json");
          const fs::path p = fs::path(*rel).is_absolute() ? fs::path(*rel)
                                                          : fs::path(path).parent_path() / *rel;
          rc.model = load_config(p.string());
          model_json = json::parse(config_to_json(rc.model));
          rc.model_origin = p.string();
          rc.where["model.vocab_size"] = p.string();
        } else {
          rc.model_origin = path + " [model]";
        }
        for (const auto& [k, v] : tbl) {
          if (k.str() == "config") continue;
          const json jv = toml_to_json(v);
          MOE_CHECK(!jv.is_null(), "config", where_of(path, v), ": [model] ", k.str(),
                    " must be a number, boolean or string");
          if (!model_json.contains(std::string(k.str()))) {
            // An unknown key: parse_config names it and its nearest key; we add the line.
            json probe = model_json;
            probe[std::string(k.str())] = jv;
            parse_config(probe.dump(), where_of(path, v));
          }
          model_json[std::string(k.str())] = jv;
          rc.where["model." + std::string(k.str())] = where_of(path, v);
          model_changed = true;
        }
        continue;
      }
      bool known = false;
      for (const auto& f : fields) known |= section == f.section;
      MOE_CHECK(known, "config", where, ": unknown section [", section, "]; sections are ",
                kSections);
      for (const auto& [k, v] : tbl) {
        const Field* f = find_field(fields, section, std::string(k.str()), where_of(path, v));
        set_from_toml(*f, v, where_of(path, v));
        rc.where[section + "." + std::string(k.str())] = where_of(path, v);
      }
    }
  }

  for (const auto& [dotted, value] : overrides) {
    const std::string where = "command line --" + dotted;
    const size_t dot = dotted.find('.');
    MOE_CHECK(dot != std::string::npos, "config", where, ": use --section.key VALUE");
    const std::string section = dotted.substr(0, dot), key = dotted.substr(dot + 1);
    const toml::table v = parse_value_as_toml(value);
    if (section == "model") {
      const json jv = toml_to_json(*v.get("v"));
      model_json[key] = jv.is_null() ? json(value) : jv;
      rc.where[dotted] = where;
      model_changed = true;
      if (rc.model_origin.find("command line") == std::string::npos)
        rc.model_origin += " + command line";
      continue;
    }
    bool known = false;
    for (const auto& f : fields) known |= section == f.section;
    MOE_CHECK(known, "config", where, ": unknown section '", section, "'; sections are ",
              kSections);
    set_from_toml(*find_field(fields, section, key, where), *v.get("v"), where);
    rc.where[dotted] = where;
  }
  for (const auto& [dotted, place] : rc.where)
    if (dotted.rfind("data.", 0) == 0) rc.data.where[dotted.substr(5)] = place;
  if (model_changed) rc.model = parse_config(model_json.dump(), rc.model_origin);
  rc.model.validate();
  MOE_CHECK(rc.train.seq_len <= rc.model.max_position_embeddings, "config",
            "[train] seq_len = ", rc.train.seq_len, " exceeds the model's max_position_embeddings = ",
            rc.model.max_position_embeddings, "; lower seq_len or raise max_position_embeddings");
  return rc;
}

std::string run_config_to_toml(const RunConfig& rc) {
  RunConfig copy = rc;
  std::vector<Field> fields = fields_of(copy);
  std::ostringstream s;
  s << "# moe.cpp run config (resolved; every key)\n\n[model]\n";
  const json m = json::parse(config_to_json(rc.model));
  for (const auto& [k, v] : m.items()) s << k << " = " << v.dump() << "\n";
  std::string section;
  for (const auto& f : fields) {
    if (section != f.section) s << "\n[" << (section = f.section) << "]\n";
    s << f.key << " = ";
    switch (f.kind) {
      case Kind::kInt: s << *static_cast<int64_t*>(f.ptr); break;
      case Kind::kFloat: s << json(*static_cast<double*>(f.ptr)).dump(); break;
      case Kind::kBool: s << (*static_cast<bool*>(f.ptr) ? "true" : "false"); break;
      case Kind::kString: s << json(*static_cast<std::string*>(f.ptr)).dump(); break;
    }
    s << "\n";
  }
  return s.str();
}

std::string run_config_reference() {
  RunConfig rc;
  rc.train.out_dir = "runs/default";
  std::vector<Field> fields = fields_of(rc);
  std::ostringstream s;
  s << "[model]  config.json keys inline, or config = \"path/to/config.json\"\n";
  std::string section;
  for (const auto& f : fields) {
    if (section != f.section) s << "[" << (section = f.section) << "]\n";
    s << "  " << f.key << ": " << f.help << " (" << describe_allowed(f) << ")\n";
  }
  return s.str();
}

}  // namespace moe
