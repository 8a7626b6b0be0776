// Element-wise reduction kernels used by the algorithms. bf16 and f16 are reduced in f32 and
// rounded back (to nearest even) after every step, as NCCL does on the wire types.
#pragma once

#include <cstddef>

#include "comm/common.h"

namespace moe::comm {

// dst[i] = a[i] op b[i] for i < n; dst may alias a or b. kAvg reduces as kSum (the caller
// divides once at the end with finish_avg).
void reduce_into(void* dst, const void* a, const void* b, size_t n, Dtype t, ReduceOp op);
// buf[i] /= divisor, for the last step of an average.
void finish_avg(void* buf, size_t n, Dtype t, int divisor);

}  // namespace moe::comm
