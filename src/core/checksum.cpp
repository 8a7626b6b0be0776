#include "core/checksum.h"

#include <cstdio>
#include <cstring>
#include <vector>

#include "core/error.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace moe {

namespace {

struct Table {
  uint32_t t[256];
  Table() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));  // reflected
      t[i] = c;
    }
  }
};

uint32_t crc_table(const uint8_t* p, size_t n, uint32_t c) {
  static const Table table;
  for (size_t i = 0; i < n; ++i) c = table.t[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_hw(const uint8_t* p, size_t n, uint32_t c) {
  uint64_t c64 = c;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
  }
  c = uint32_t(c64);
  for (; n > 0; --n, ++p) c = _mm_crc32_u8(c, *p);
  return c;
}
#endif

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  c = hw ? crc_hw(p, n, c) : crc_table(p, n, c);
#else
  c = crc_table(p, n, c);
#endif
  return ~c;
}

uint32_t crc32c_file(const std::string& path, uint64_t* size_out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  MOE_CHECK(f != nullptr, "checksum", "cannot read '", path, "'");
  std::vector<uint8_t> buf(1 << 20);
  uint32_t c = 0;
  uint64_t total = 0;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) c = crc32c(buf.data(), n, c), total += n;
  const bool err = std::ferror(f);
  std::fclose(f);
  MOE_CHECK(!err, "checksum", "read error in '", path, "'");
  if (size_out) *size_out = total;
  return c;
}

}  // namespace moe
