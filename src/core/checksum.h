// CRC-32C (Castagnoli), the checksum of our checkpoint manifests and shards: the SSE4.2 crc32
// instruction where the CPU has it (~10 GB/s), a table otherwise; both give the same value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

// crc32c(data) continuing from `crc` (0 for a fresh checksum); crc32c("123456789") = 0xE3069283.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
// CRC-32C of a whole file; throws naming the file if it cannot be read.
uint32_t crc32c_file(const std::string& path, uint64_t* size_out = nullptr);

}  // namespace moe
