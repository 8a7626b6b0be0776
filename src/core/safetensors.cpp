#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; moe.cpp assumes a little-endian host");

namespace moe {

namespace {

constexpr const char* kOp = "safetensors";
// The format caps the header at 100 MB; a larger size field means a corrupt file.
constexpr uint64_t kMaxHeader = 100ull << 20;

struct DtypeInfo {
  const char* name;
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2}, {"I64", 8},      {"I32", 4},
    {"I16", 2}, {"I8", 1},  {"U64", 8},  {"U32", 4},  {"U16", 2},      {"U8", 1},
    {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};

std::string known_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

// 0 if unknown.
size_t find_dtype(const std::string& dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.name) return d.size;
  return 0;
}

// numel * elem_size with overflow checks; false if it does not fit in uint64.
bool byte_size(const std::vector<int64_t>& shape, size_t elem, uint64_t* out) {
  uint64_t n = elem;
  for (int64_t d : shape) {
    if (d < 0) return false;
    const uint64_t u = static_cast<uint64_t>(d);
    if (u != 0 && n > std::numeric_limits<uint64_t>::max() / u) return false;
    n *= u;
  }
  *out = n;
  return true;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Bounded, non-recursive text for a JSON value or key in a message (a corrupt header may hold
// huge strings or deeply nested arrays).
std::string clip(const std::string& s) { return s.size() > 80 ? s.substr(0, 77) + "..." : s; }
std::string brief(const nlohmann::json& v) {
  if (v.is_array() && v.size() <= 4 &&
      std::all_of(v.begin(), v.end(), [](const nlohmann::json& x) { return x.is_primitive(); }))
    return clip(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  if (v.is_structured()) return std::string(v.type_name()) + " of " + std::to_string(v.size());
  return clip(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

std::vector<uint8_t> read_all(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  MOE_CHECK(!ec && std::filesystem::exists(st), kOp, "cannot read ", path,
            ": no such file; check the path (a checkpoint directory holds model.safetensors)");
  MOE_CHECK(std::filesystem::is_regular_file(st), kOp, "cannot read ", path,
            ": not a regular file; pass the path of a .safetensors file");
  FILE* f = std::fopen(path.c_str(), "rb");
  MOE_CHECK(f != nullptr, kOp, "cannot open ", path, ": ", std::strerror(errno),
            "; check the file's permissions");
  std::vector<uint8_t> buf;
  uint8_t chunk[1 << 16];
  size_t n;
  while ((n = std::fread(chunk, 1, sizeof(chunk), f)) > 0) buf.insert(buf.end(), chunk, chunk + n);
  const bool err = std::ferror(f) != 0;
  std::fclose(f);
  MOE_CHECK(!err, kOp, "error while reading ", path, "; the disk or file may be damaged");
  return buf;
}

// Parses one tensor entry of the header; `data_size` is the number of bytes after the header.
TensorData parse_entry(const std::string& path, const std::string& name,
                       const nlohmann::json& e, const uint8_t* data, uint64_t data_size) {
  const std::string where = path + ": tensor '" + clip(name) + "'";
  const char* fix = "; the file is corrupt or was not written as safetensors, re-create it";
  MOE_CHECK(e.is_object(), kOp, where, " has a header entry of type ", e.type_name(),
            ", expected an object {dtype, shape, data_offsets}", fix);
  for (auto it = e.begin(); it != e.end(); ++it)
    MOE_CHECK(it.key() == "dtype" || it.key() == "shape" || it.key() == "data_offsets", kOp,
              where, " has an unknown field '", clip(it.key()),
              "' (known: dtype, shape, data_offsets)", fix);
  MOE_CHECK(e.contains("dtype"), kOp, where, " is missing the field 'dtype'", fix);
  MOE_CHECK(e.contains("shape"), kOp, where, " is missing the field 'shape'", fix);
  MOE_CHECK(e.contains("data_offsets"), kOp, where, " is missing the field 'data_offsets'", fix);

  TensorData t;
  const auto& jd = e["dtype"];
  MOE_CHECK(jd.is_string(), kOp, where, " has 'dtype' of type ", jd.type_name(),
            ", expected a string such as \"F32\"", fix);
  t.dtype = jd.get<std::string>();
  const size_t elem = find_dtype(t.dtype);
  MOE_CHECK(elem > 0, kOp, where, " has unknown dtype '", t.dtype, "' (known: ", known_dtypes(),
            ")", fix);

  const auto& js = e["shape"];
  MOE_CHECK(js.is_array(), kOp, where, " has 'shape' of type ", js.type_name(),
            ", expected an array of non-negative integers", fix);
  for (const auto& d : js) {
    MOE_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), kOp,
              where, " has a shape entry ", brief(d), ", expected a non-negative integer", fix);
    const uint64_t u = d.get<uint64_t>();
    MOE_CHECK(u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), kOp, where,
              " has a shape entry ", u, " that is too large", fix);
    t.shape.push_back(static_cast<int64_t>(u));
  }

  const auto& jo = e["data_offsets"];
  MOE_CHECK(jo.is_array() && jo.size() == 2, kOp, where, " has 'data_offsets' ", brief(jo),
            ", expected [begin, end]", fix);
  for (const auto& o : jo)
    MOE_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), kOp,
              where, " has 'data_offsets' ", brief(jo), ", expected two non-negative integers",
              fix);
  const uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
  MOE_CHECK(begin <= end, kOp, where, " has data_offsets [", begin, ", ", end,
            "] with begin > end", fix);
  MOE_CHECK(end <= data_size, kOp, where, " has data_offsets [", begin, ", ", end,
            "] past the end of the data (", data_size,
            " bytes); the file is truncated or corrupt, re-create it");
  uint64_t want = 0;
  MOE_CHECK(byte_size(t.shape, elem, &want), kOp, where, " has shape ", shape_str(t.shape),
            " whose size overflows", fix);
  MOE_CHECK(end - begin == want, kOp, where, " has data_offsets [", begin, ", ", end, "] (",
            end - begin, " bytes) but shape ", shape_str(t.shape), " x ", t.dtype, " needs ",
            want, " bytes", fix);
  t.bytes.assign(data + begin, data + end);
  return t;
}

void write_all(int fd, const void* p, size_t n, const std::string& tmp) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      MOE_FAIL("io", "cannot write ", tmp, ": ", std::strerror(e),
               "; check free disk space and permissions");
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

size_t dtype_size(const std::string& dtype) {
  const size_t s = find_dtype(dtype);
  MOE_CHECK(s > 0, kOp, "unknown dtype '", dtype, "' (known: ", known_dtypes(), ")");
  return s;
}

int64_t TensorData::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// Copies t's elements out, converting from dtype a_name (type A) or b_name (type B).
template <class Out, class A, class B>
std::vector<Out> convert(const TensorData& t, const std::string& name, const char* a_name,
                         const char* b_name) {
  const bool is_a = t.dtype == a_name, is_b = t.dtype == b_name;
  MOE_CHECK(is_a || is_b, kOp, "tensor '", name, "' has dtype ", t.dtype, ", expected ", a_name,
            " or ", b_name, "; convert the checkpoint or read it with the matching accessor");
  const size_t es = is_a ? sizeof(A) : sizeof(B);
  uint64_t want = 0;
  MOE_CHECK(byte_size(t.shape, es, &want) && want == t.bytes.size(), kOp, "tensor '", name,
            "' holds ", t.bytes.size(), " bytes, inconsistent with shape ", shape_str(t.shape),
            " x ", t.dtype);
  std::vector<Out> out(t.bytes.size() / es);
  if (is_a) {
    std::vector<A> tmp(out.size());
    if (!tmp.empty()) std::memcpy(tmp.data(), t.bytes.data(), t.bytes.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<Out>(tmp[i]);
  } else {
    std::vector<B> tmp(out.size());
    if (!tmp.empty()) std::memcpy(tmp.data(), t.bytes.data(), t.bytes.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<Out>(tmp[i]);
  }
  return out;
}

}  // namespace

std::vector<float> TensorData::as_f32(const std::string& name) const {
  return convert<float, float, double>(*this, name, "F32", "F64");
}

std::vector<double> TensorData::as_f64(const std::string& name) const {
  return convert<double, double, float>(*this, name, "F64", "F32");
}

std::vector<int32_t> TensorData::as_i32(const std::string& name) const {
  if (dtype == "I64") {
    const std::vector<int64_t> wide = convert<int64_t, int64_t, int32_t>(*this, name, "I64", "I32");
    std::vector<int32_t> out(wide.size());
    for (size_t i = 0; i < wide.size(); ++i) {
      MOE_CHECK(wide[i] >= std::numeric_limits<int32_t>::min() &&
                    wide[i] <= std::numeric_limits<int32_t>::max(),
                kOp, "tensor '", name, "' element ", i, " = ", wide[i],
                " does not fit in int32; read it as I64 instead");
      out[i] = static_cast<int32_t>(wide[i]);
    }
    return out;
  }
  return convert<int32_t, int32_t, int64_t>(*this, name, "I32", "I64");
}

const TensorData& SafetensorsFile::at(const std::string& name) const {
  const auto it = tensors.find(name);
  MOE_CHECK(it != tensors.end(), kOp, path, " has no tensor '", name, "' (it holds ",
            tensors.size(), " tensors); check the name or re-create the file");
  return it->second;
}

SafetensorsFile read_safetensors(const std::string& path) {
  SafetensorsFile out;
  out.path = path;
  const std::vector<uint8_t> buf = read_all(path);
  const uint64_t size = buf.size();
  MOE_CHECK(size >= 8, kOp, path, " is ", size,
            " bytes, too short for a safetensors file (at least 8 bytes of header size); "
            "the file is truncated, re-create it");
  uint64_t n = 0;
  std::memcpy(&n, buf.data(), 8);
  MOE_CHECK(n <= size - 8, kOp, path, " declares a header of ", n, " bytes but only ",
            size - 8, " bytes follow; the file is truncated or not safetensors, re-create it");
  MOE_CHECK(n <= kMaxHeader, kOp, path, " declares a header of ", n,
            " bytes (the format allows at most 100 MB); the file is corrupt, re-create it");
  const char* hbeg = reinterpret_cast<const char*>(buf.data() + 8);
  nlohmann::json header = nlohmann::json::parse(hbeg, hbeg + n, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!header.is_discarded(), kOp, path,
            " has a header that is not valid JSON; the file is corrupt or truncated, re-create it");
  MOE_CHECK(header.is_object(), kOp, path, " has a JSON header of type ", header.type_name(),
            ", expected an object; the file is corrupt, re-create it");

  const uint8_t* data = buf.data() + 8 + n;
  const uint64_t data_size = size - 8 - n;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      MOE_CHECK(it->is_object(), kOp, path, " has '__metadata__' of type ", it->type_name(),
                ", expected an object of strings; the file is corrupt, re-create it");
      for (auto m = it->begin(); m != it->end(); ++m) {
        MOE_CHECK(m->is_string(), kOp, path, " has metadata '", clip(m.key()), "' of type ",
                  m->type_name(), ", expected a string; the file is corrupt, re-create it");
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    out.tensors[it.key()] = parse_entry(path, it.key(), *it, data, data_size);
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::set<std::string> names;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    MOE_CHECK(!t.name.empty() && t.name != "__metadata__", kOp, "cannot write ", path,
              ": invalid tensor name '", t.name, "'; give every tensor a non-empty name");
    MOE_CHECK(names.insert(t.name).second, kOp, "cannot write ", path, ": tensor '", t.name,
              "' is given twice; tensor names must be unique");
    const size_t elem = find_dtype(t.dtype);
    MOE_CHECK(elem > 0, kOp, "cannot write ", path, ": tensor '", t.name, "' has unknown dtype '",
              t.dtype, "' (known: ", known_dtypes(), ")");
    uint64_t bytes = 0;
    MOE_CHECK(byte_size(t.shape, elem, &bytes), kOp, "cannot write ", path, ": tensor '", t.name,
              "' has invalid shape ", shape_str(t.shape), "; dimensions must be >= 0");
    MOE_CHECK(bytes == 0 || t.data != nullptr, kOp, "cannot write ", path, ": tensor '", t.name,
              "' has no data pointer");
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    sizes.push_back(bytes);
    offset += bytes;
  }
  std::string h;
  try {
    h = header.dump();
  } catch (const nlohmann::json::exception&) {
    MOE_FAIL(kOp, "cannot write ", path,
             ": a tensor name or metadata string is not valid UTF-8; use UTF-8 names");
  }
  h.append((8 - h.size() % 8) % 8, ' ');  // data then starts 8-byte aligned
  const uint64_t n = h.size();

  std::vector<std::pair<const void*, size_t>> chunks = {{&n, 8}, {h.data(), h.size()}};
  for (size_t i = 0; i < tensors.size(); ++i)
    if (sizes[i] > 0) chunks.push_back({tensors[i].data, sizes[i]});
  write_file_atomic(path, chunks);
}

void write_file_atomic(const std::string& path,
                       const std::vector<std::pair<const void*, size_t>>& chunks) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOE_CHECK(fd >= 0, "io", "cannot create ", tmp, ": ", std::strerror(errno),
            "; check that the directory exists and is writable");
  for (const auto& [p, len] : chunks) write_all(fd, p, len, tmp);
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    MOE_FAIL("io", "cannot flush ", tmp, ": ", std::strerror(e), "; check free disk space");
  }
  if (::close(fd) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    MOE_FAIL("io", "cannot close ", tmp, ": ", std::strerror(e), "; check free disk space");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    MOE_FAIL("io", "cannot rename ", tmp, " to ", path, ": ", std::strerror(e),
             "; check that the target is not a directory and is writable");
  }
  // Make the rename itself durable.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace moe
