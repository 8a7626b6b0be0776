// The machine's FP32 peak, measured: every thread runs independent fused multiply-adds on the
// widest vectors the build targets (AVX-512: 16 lanes), enough chains to hide FMA latency.
// MFU in the trainer and the benchmarks is achieved FLOP/s over this number.
#pragma once

namespace moe::cpu {

// FLOP/s (an FMA counts 2) over all OpenMP threads, best of several short runs of about
// `seconds` in total.
double measure_fp32_peak_flops(double seconds = 0.3);

// Vector width the build uses (16 for AVX-512, 8 for AVX2, 1 otherwise), for the log.
int fp32_vector_lanes();

}  // namespace moe::cpu
