#include "train/train_state.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/checksum.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"

namespace moe {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kManifest = "MANIFEST.json";
constexpr const char* kOptimizer = "optimizer.safetensors";
constexpr const char* kState = "train_state.json";

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

void fsync_path(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

void write_text(const fs::path& p, const std::string& text) {
  write_file_atomic(p.string(), {{text.data(), text.size()}});
}

}  // namespace

std::string save_train_checkpoint(const std::string& run_dir, const Model& model,
                                  const AdamW& opt, const TrainState& st, int64_t keep,
                                  const std::string& tokenizer_json) {
  const ParamLayout full = make_layout(model.config());
  MOE_CHECK(model.layout().total_numel == full.total_numel &&
                int64_t(opt.m().size()) == full.total_numel,
            "checkpoint", "this model holds part of the parameters or optimizer state (expert "
            "or ZeRO parallelism); gather them first (Parallel::gather_full)");
  return save_train_checkpoint(run_dir, model.config(), model.params().data(), opt.m().data(),
                               opt.v().data(), opt.steps(), st, keep, tokenizer_json);
}

std::string save_train_checkpoint(const std::string& run_dir, const ModelConfig& cfg,
                                  const float* params, const float* m, const float* v,
                                  int64_t adam_step, const TrainState& st, int64_t keep,
                                  const std::string& tokenizer_json,
                                  const std::vector<CheckpointFile>& extra) {
  const ParamLayout layout = make_layout(cfg);
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  fs::create_directories(root, ec);
  MOE_CHECK(!ec, "checkpoint", "cannot create '", root.string(), "': ", ec.message());
  const fs::path final_dir = root / step_name(st.step);
  const fs::path tmp = root / (step_name(st.step) + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);

  // 1. The files, each written atomically and fsynced.
  save_checkpoint(tmp.string(), cfg, layout, params);
  const int64_t n = layout.total_numel;
  write_safetensors((tmp / kOptimizer).string(),
                    {{"exp_avg", "F32", {n}, m}, {"exp_avg_sq", "F32", {n}, v}},
                    {{"adam_step", std::to_string(adam_step)}});
  const json state = {{"step", st.step},           {"data_offset", st.data_offset},
                      {"lr_scale", st.lr_scale},   {"rollbacks", st.rollbacks},
                      {"skipped", st.skipped},     {"tokens", st.tokens},
                      {"elapsed_s", st.elapsed_s}, {"loss_window", st.loss_window},
                      {"spike_steps", st.spike_steps}, {"adam_step", adam_step},
                      {"data_train_tokens", st.data_train_tokens}};
  write_text(tmp / kState, state.dump(1) + "\n");
  std::vector<std::string> names = {"config.json", "model.safetensors", kOptimizer, kState};
  if (!tokenizer_json.empty()) {
    std::ifstream src(tokenizer_json, std::ios::binary);
    MOE_CHECK(src.good(), "checkpoint", "cannot read the tokenizer ", tokenizer_json,
              " to copy into the checkpoint; was it moved during the run?");
    const std::string text((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
    write_text(tmp / "tokenizer.json", text);
    names.push_back("tokenizer.json");
  }
  for (const CheckpointFile& e : extra) {
    write_safetensors((tmp / e.name).string(), e.tensors, e.metadata);
    names.push_back(e.name);
  }

  // Test hook: die by SIGKILL halfway through the Nth checkpoint write of this process.
  static int writes = 0;
  if (const char* n = std::getenv("MOE_TEST_KILL_IN_CHECKPOINT"); n && ++writes == std::atoi(n))
    ::kill(::getpid(), SIGKILL);

  // 2. The manifest last: its presence means the rest is complete.
  json files = json::object();
  for (const std::string& name : names) {
    uint64_t size = 0;
    const uint32_t crc = crc32c_file((tmp / name).string(), &size);
    files[name] = {{"bytes", size}, {"crc32c", hex32(crc)}};
  }
  write_text(tmp / kManifest, json({{"step", st.step}, {"files", files}}).dump(1) + "\n");

  // 3. Into place. An older folder of the same step (after a rollback) is replaced.
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  MOE_CHECK(!ec, "checkpoint", "cannot rename '", tmp.string(), "' to '", final_dir.string(),
            "': ", ec.message());
  fsync_path(root);

  // 4. Retention: the newest `keep` folders stay (valid or not, newest by step).
  std::vector<fs::path> all;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0 &&
        e.path().filename().string().find(".tmp") == std::string::npos)
      all.push_back(e.path());
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + size_t(std::max<int64_t>(keep, 1)) < all.size(); ++i)
    fs::remove_all(all[i], ec);
  // Stale temporary folders of crashed writers.
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.path().filename().string().find(".tmp-") != std::string::npos && e.path() != tmp)
      fs::remove_all(e.path(), ec);
  return final_dir.string();
}

std::string check_train_checkpoint(const std::string& dir) {
  const fs::path d(dir);
  const fs::path mpath = d / kManifest;
  if (!fs::exists(mpath)) return "no MANIFEST.json (the write did not finish)";
  json m;
  try {
    std::ifstream f(mpath);
    m = json::parse(f);
    for (const auto& [name, info] : m.at("files").items()) {
      uint64_t size = 0;
      if (!fs::exists(d / name)) return name + " is missing";
      const uint32_t crc = crc32c_file((d / name).string(), &size);
      if (size != info.at("bytes").get<uint64_t>())
        return name + " has " + std::to_string(size) + " bytes, the manifest says " +
               std::to_string(info.at("bytes").get<uint64_t>());
      if (hex32(crc) != info.at("crc32c").get<std::string>())
        return name + " fails its checksum (crc32c " + hex32(crc) + ", manifest " +
               info.at("crc32c").get<std::string>() + "): the file is corrupt";
    }
  } catch (const json::exception& e) {
    return std::string("MANIFEST.json is malformed (") + e.what() + ")";
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> list_train_checkpoints(const std::string& run_dir,
                                                std::vector<std::string>* skipped) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::vector<fs::path> all;
  std::error_code ec;
  if (fs::is_directory(root))
    for (const auto& e : fs::directory_iterator(root, ec))
      if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0 &&
          e.path().filename().string().find(".tmp") == std::string::npos)
        all.push_back(e.path());
  std::sort(all.rbegin(), all.rend());
  std::vector<std::string> valid;
  for (const auto& p : all) {
    const std::string why = check_train_checkpoint(p.string());
    if (why.empty()) {
      valid.push_back(p.string());
    } else if (skipped) {
      skipped->push_back(p.string() + ": " + why);
    }
  }
  return valid;
}

void load_train_checkpoint(const std::string& dir, Model& model, AdamW& opt, TrainState* st) {
  MOE_CHECK(int64_t(model.params().size()) == make_layout(model.config()).total_numel &&
                opt.m().size() == model.params().size(),
            "checkpoint", "this model holds part of the parameters or optimizer state (expert "
            "or ZeRO parallelism); load the full state and hand each rank its part "
            "(Parallel::load_full)");
  std::vector<float> params, m, v;
  int64_t adam_step = 0;
  load_train_checkpoint(dir, model.config(), &params, &m, &v, &adam_step, st);
  model.params() = std::move(params);
  opt.m() = std::move(m);
  opt.v() = std::move(v);
  opt.set_steps(adam_step);
}

void load_train_checkpoint(const std::string& dir, const ModelConfig& expect,
                           std::vector<float>* params_out, std::vector<float>* m_out,
                           std::vector<float>* v_out, int64_t* adam_step, TrainState* st) {
  const std::string why = check_train_checkpoint(dir);
  MOE_CHECK(why.empty(), "checkpoint", dir, ": ", why);
  ModelConfig cfg;
  std::vector<float> params;
  load_checkpoint(dir, &cfg, &params);
  MOE_CHECK(config_to_json(cfg) == config_to_json(expect), "checkpoint", dir,
            ": its config.json differs from the run's model config; resume with the same [model]"
            " (or a new run folder for another model)");
  const int64_t n = make_layout(expect).total_numel;
  MOE_CHECK(int64_t(params.size()) == n, "checkpoint", dir, ": parameter count ",
            params.size(), " != ", n);

  const SafetensorsFile o = read_safetensors((fs::path(dir) / kOptimizer).string());
  std::vector<float> m = o.at("exp_avg").as_f32("exp_avg");
  std::vector<float> v = o.at("exp_avg_sq").as_f32("exp_avg_sq");
  MOE_CHECK(int64_t(m.size()) == n && int64_t(v.size()) == n, "checkpoint", dir, "/",
            kOptimizer, ": moments have ", m.size(), " values, the model has ", n);
  *params_out = std::move(params);
  *m_out = std::move(m);
  *v_out = std::move(v);

  std::ifstream f(fs::path(dir) / kState);
  json s;
  try {
    s = json::parse(f);
    st->step = s.at("step");
    st->data_offset = s.at("data_offset");
    st->lr_scale = s.at("lr_scale");
    st->rollbacks = s.at("rollbacks");
    st->skipped = s.at("skipped");
    st->tokens = s.at("tokens");
    st->elapsed_s = s.at("elapsed_s");
    st->loss_window = s.at("loss_window").get<std::vector<double>>();
    st->spike_steps = s.at("spike_steps").get<std::vector<int64_t>>();
    *adam_step = s.at("adam_step").get<int64_t>();
    st->data_train_tokens = s.value("data_train_tokens", int64_t(-1));
  } catch (const json::exception& e) {
    MOE_FAIL("checkpoint", dir, "/", kState, ": ", e.what());
  }
}

}  // namespace moe
