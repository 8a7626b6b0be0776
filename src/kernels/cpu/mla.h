// Multi-head latent attention (DeepSeek-V2/V3) on the GQA attention kernel of kernels.h.
//
// MLA's heads are not GQA's: a head's query and key are qk_nope_head_dim + qk_rope_head_dim
// (dn + dr) wide, its value v_head_dim (dv) wide, and the dr rotary key dims (k_pe) are one
// vector per token shared by every head. These kernels lay MLA's q, k and v out as the GQA
// kernel's packed qkv with Hkv = H and one head width Da >= max(dn + dr, dv), zero-padded:
// padded q/k columns add 0 to the scores and padded v columns give output columns the caller
// drops, so attention_forward/attention_backward compute MLA exactly (the kernel's scale is
// 1/sqrt(Da); the caller passes q_scale = sqrt(Da / (dn + dr)) to make it 1/sqrt(dn + dr),
// which is 1 when Da = dn + dr, the usual case dv <= dn + dr). This spends (Da - dv)/Da of the
// value work on zeros; a dedicated MLA attention kernel would not. Twins in mla_ref.h.
#pragma once

#include <cstdint>

namespace moe::cpu {

// qkv (N, 3*H*Da) = per token [q heads | k heads | v heads], each head Da wide:
//   q head h = [q_h * q_scale (dn + dr) | 0]            q (N, H*(dn+dr)), RoPE applied
//   k head h = [kv_h[0, dn) (k_nope) | k_pe (dr) | 0]   kv (N, H*(dn+dv)), per head [k_nope | v]
//   v head h = [kv_h[dn, dn + dv) | 0]                  k_pe: N rows of dr floats, consecutive
//                                                        rows kpe_stride apart, RoPE applied
void mla_pack_qkv(float* qkv, const float* q, const float* kv, const float* k_pe,
                  int64_t kpe_stride, int64_t N, int64_t H, int64_t dn, int64_t dr, int64_t dv,
                  int64_t Da, float q_scale);
// The adjoint of mla_pack_qkv, from dqkv (N, 3*H*Da): dq (N, H*(dn+dr)) and dkv (N, H*(dn+dv))
// overwritten; dk_pe (rows kpe_stride apart) overwritten with the sum over the H heads of their
// k_pe gradients. The padding columns' gradients are ignored.
void mla_unpack_qkv_grad(float* dq, float* dkv, float* dk_pe, int64_t kpe_stride, const float* dqkv,
                         int64_t N, int64_t H, int64_t dn, int64_t dr, int64_t dv, int64_t Da,
                         float q_scale);
// y (N, H*dy) <- the first `width` values of each of the H heads of x (N, H*dx), the rest of
// each y head zero (width <= min(dx, dy)). Narrows the attention output to dv per head
// (forward) and widens its gradient back to Da (backward).
void heads_copy(float* y, const float* x, int64_t N, int64_t H, int64_t dy, int64_t dx,
                int64_t width);

}  // namespace moe::cpu
