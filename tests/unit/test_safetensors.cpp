#include "core/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"

namespace moe {
namespace {

std::string temp_dir(const std::string& name) {
  const auto d = std::filesystem::temp_directory_path() /
                 ("moe_st_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

std::vector<uint8_t> slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// A raw file: 8-byte size, the header text as given, then `data`.
std::vector<uint8_t> raw_file(const std::string& header, const std::vector<uint8_t>& data) {
  const uint64_t n = header.size();
  std::vector<uint8_t> b(8 + header.size() + data.size());
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(b.data() + 8 + header.size(), data.data(), data.size());
  return b;
}

// Expects read_safetensors(path) to throw an Error whose message contains `needle`.
void expect_error(const std::string& path, const std::string& needle) {
  try {
    read_safetensors(path);
    FAIL() << "no error for " << path << ", expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("[safetensors]", 0), 0u) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << "message: " << m;
  }
}

struct Sample {
  std::vector<float> a{1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};  // [2, 3]
  std::vector<double> b{3.141592653589793, -1e300};              // [2]
  std::vector<int32_t> c{7, -8, 2147483647};                     // [3]
  std::vector<int64_t> d{-(1ll << 40), 5};                       // [2, 1]
  float scalar = 42.0f;                                          // []
  std::vector<TensorRef> refs() const {
    return {{"a.weight", "F32", {2, 3}, a.data()},
            {"b", "F64", {2}, b.data()},
            {"c", "I32", {3}, c.data()},
            {"d", "I64", {2, 1}, d.data()},
            {"empty", "F32", {0, 4}, nullptr},
            {"scalar", "F32", {}, &scalar}};
  }
};

TEST(Safetensors, RoundTripAllDtypes) {
  const std::string dir = temp_dir("rt");
  const std::string p = dir + "/x.safetensors";
  Sample s;
  write_safetensors(p, s.refs(), {{"format", "pt"}, {"note", "hi"}});
  EXPECT_FALSE(std::filesystem::exists(p + ".tmp"));
  const SafetensorsFile f = read_safetensors(p);
  EXPECT_EQ(f.path, p);
  EXPECT_EQ(f.tensors.size(), 6u);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.metadata.at("note"), "hi");
  EXPECT_EQ(f.at("a.weight").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.at("a.weight").as_f32("a.weight"), s.a);
  EXPECT_EQ(f.at("b").as_f64("b"), s.b);
  EXPECT_EQ(f.at("c").as_i32("c"), s.c);
  EXPECT_EQ(f.at("d").numel(), 2);
  EXPECT_EQ(f.at("empty").numel(), 0);
  EXPECT_TRUE(f.at("empty").as_f32("empty").empty());
  EXPECT_EQ(f.at("scalar").numel(), 1);
  EXPECT_EQ(f.at("scalar").as_f32("scalar"), std::vector<float>{42.0f});
  // Conversions F32 <-> F64, I64 -> I32.
  EXPECT_EQ(f.at("b").as_f32("b")[0], static_cast<float>(s.b[0]));
  EXPECT_EQ(f.at("a.weight").as_f64("a.weight")[2], 3.25);
  EXPECT_THROW(f.at("d").as_i32("d"), Error);  // -(2^40) does not fit
  EXPECT_THROW(f.at("a.weight").as_i32("a.weight"), Error);
  EXPECT_THROW(f.at("c").as_f32("c"), Error);
  EXPECT_THROW(f.at("nope"), Error);
  EXPECT_FALSE(f.has("nope"));

  // Header size is a multiple of 8 and padded with spaces.
  const auto bytes = slurp(p);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, DtypeSizes) {
  EXPECT_EQ(dtype_size("F32"), 4u);
  EXPECT_EQ(dtype_size("BF16"), 2u);
  EXPECT_EQ(dtype_size("I64"), 8u);
  EXPECT_EQ(dtype_size("F8_E4M3"), 1u);
  EXPECT_THROW(dtype_size("F128"), Error);
}

TEST(Safetensors, WriterRejectsBadInput) {
  const std::string dir = temp_dir("wbad");
  float x = 1;
  EXPECT_THROW(write_safetensors(dir + "/a", {{"x", "F33", {1}, &x}}), Error);
  EXPECT_THROW(write_safetensors(dir + "/a", {{"x", "F32", {1}, &x}, {"x", "F32", {1}, &x}}),
               Error);
  EXPECT_THROW(write_safetensors(dir + "/a", {{"__metadata__", "F32", {1}, &x}}), Error);
  EXPECT_THROW(write_safetensors(dir + "/a", {{"x", "F32", {-1}, &x}}), Error);
  EXPECT_THROW(write_safetensors(dir + "/a", {{"x", "F32", {2}, nullptr}}), Error);
  EXPECT_THROW(write_safetensors(dir + "/no/such/dir/a", {{"x", "F32", {1}, &x}}), Error);
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, ReaderErrorsNameTheProblem) {
  const std::string dir = temp_dir("rbad");
  const std::string p = dir + "/bad.safetensors";
  const std::vector<uint8_t> data(24, 0);
  expect_error(dir + "/missing.safetensors", "no such file");
  expect_error(dir, "not a regular file");
  spit(p, {1, 2, 3});
  expect_error(p, "too short");
  spit(p, raw_file("{}", {}));
  {  // header size larger than the file
    auto b = raw_file("{}", {});
    b[0] = 100;
    spit(p, b);
    expect_error(p, "declares a header of 100 bytes");
  }
  spit(p, raw_file("{\"a\": ", data));
  expect_error(p, "not valid JSON");
  spit(p, raw_file("[1, 2]", data));
  expect_error(p, "expected an object");
  spit(p, raw_file(R"({"t": {"shape": [2], "data_offsets": [0, 8]}})", data));
  expect_error(p, "missing the field 'dtype'");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "data_offsets": [0, 8]}})", data));
  expect_error(p, "missing the field 'shape'");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [2]}})", data));
  expect_error(p, "missing the field 'data_offsets'");
  spit(p, raw_file(R"({"t": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}})", data));
  expect_error(p, "unknown dtype 'Q7'");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 32]}})", data));
  expect_error(p, "past the end");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", data));
  expect_error(p, "needs 12 bytes");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", data));
  expect_error(p, "non-negative integer");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", data));
  expect_error(p, "non-negative integer");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", data));
  expect_error(p, "begin > end");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", data));
  expect_error(p, "expected [begin, end]");
  spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}})",
                   data));
  expect_error(p, "unknown field 'x'");
  spit(p, raw_file(R"({"t": 5})", data));
  expect_error(p, "tensor 't'");
  spit(p, raw_file(R"({"__metadata__": {"a": 1}})", data));
  expect_error(p, "metadata 'a'");
  spit(p, raw_file(
              R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}})",
              data));
  expect_error(p, "overflows");
  {  // deeply nested values and huge keys: bounded messages, no stack overflow
    const std::string deep = std::string(200000, '[') + std::string(200000, ']');
    spit(p, raw_file(R"({"t": {"dtype": "F32", "shape": [)" + deep +
                         R"(], "data_offsets": [0, 8]}})",
                     data));
    expect_error(p, "expected a non-negative integer");
    spit(p, raw_file(R"({"__metadata__": )" + deep + "}", data));
    expect_error(p, "'__metadata__' of type array");
    spit(p, raw_file("{\"" + std::string(100000, 'k') + "\": 1}", data));
    expect_error(p, "...");
    spit(p, raw_file(deep, data));
    expect_error(p, "expected an object");
  }
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, OverlappingAndUnorderedOffsetsAreAccepted) {
  const std::string dir = temp_dir("overlap");
  const std::string p = dir + "/o.safetensors";
  std::vector<uint8_t> data(16);
  const float v[4] = {1, 2, 3, 4};
  std::memcpy(data.data(), v, 16);
  spit(p, raw_file(R"({"b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
                       "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}})",
                   data));
  const auto f = read_safetensors(p);
  EXPECT_EQ(f.at("a").as_f32("a"), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(f.at("b").as_f32("b"), (std::vector<float>{3, 4}));
  std::filesystem::remove_all(dir);
}

// Every truncation and many random header corruptions must give an Error or a valid parse.
TEST(Safetensors, FuzzTruncationAndHeaderFlips) {
  const std::string dir = temp_dir("fuzz");
  const std::string good = dir + "/good.safetensors", p = dir + "/fuzz.safetensors";
  Sample s;
  write_safetensors(good, s.refs(), {{"format", "pt"}});
  const auto bytes = slurp(good);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);

  int errors = 0, parses = 0;
  auto probe = [&](const std::vector<uint8_t>& b) {
    spit(p, b);
    try {
      const SafetensorsFile f = read_safetensors(p);
      for (const auto& [name, t] : f.tensors) {  // a valid parse is self-consistent
        EXPECT_EQ(t.bytes.size(), static_cast<size_t>(t.numel()) * dtype_size(t.dtype)) << name;
      }
      ++parses;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("[safetensors]", 0), 0u) << e.what();
      ++errors;
    }
  };
  for (size_t len = 0; len < bytes.size(); ++len)
    probe(std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len)));
  // Truncating anywhere before the end of the data must fail: the last tensor is past the end.
  EXPECT_EQ(errors, static_cast<int>(bytes.size()));

  std::mt19937_64 rng(1234);
  for (int it = 0; it < 3000; ++it) {
    auto b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      // Mostly header bytes (including the size field), sometimes the data.
      const size_t at = rng() % 8 == 0 ? rng() % b.size() : rng() % (8 + n);
      b[at] = static_cast<uint8_t>(rng() % 8 == 0 ? rng() : b[at] ^ (1u << (rng() % 8)));
    }
    probe(b);
  }
  EXPECT_GT(errors, static_cast<int>(bytes.size()));
  EXPECT_GT(parses, 0);  // flips in padding, data or metadata values still parse
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
