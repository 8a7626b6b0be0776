"""PyTorch reference of the moe.cpp model (DESIGN.md sections 2 and 3).

An independent implementation used as ground truth by the parity tests. It reads the same
checkpoints (config.json + model.safetensors with Hugging Face names) and follows the model
math word for word:

    x = embed[inputs]
    for each layer: x = x + Attn(RMSNorm(x)); x = x + FFN(RMSNorm(x))   (dense SwiGLU or MoE)
    logits = RMSNorm(x) @ lm_head^T
    loss = mean cross-entropy + sum over MoE layers of (aux + seq_aux + z_loss)

Attn is GQA, or MLA (DeepSeek-V2/V3 multi-head latent attention, attention = "mla"); with
num_nextn_predict_layers = D > 0, D multi-token-prediction modules follow (DeepSeek-V3 sec. 2.2).
The exact equations are in MLAttention.forward and MoeForCausalLM.forward (and the README).

Run with Debian's PyTorch 1.13 (/usr/bin/python3). No third-party packages: safetensors is read
and written by hand below.

Shapes: B batch, T sequence, D hidden, H heads, Hkv kv heads, Dh head dim, V vocab,
E routed experts, K experts per token, Fe expert width, N = B*T tokens.
"""

import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# safetensors


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def read_safetensors(path):
    """Returns ({name: tensor}, metadata dict). Tensors own their memory (copied from the file)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"[safetensors] {path}: file of {len(data)} bytes has no header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"[safetensors] {path}: header length {n} exceeds file size {len(data)}")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = memoryview(data)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"[safetensors] {path}: tensor {name} has unknown dtype {info['dtype']}")
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != numel * itemsize or end > len(body) or begin < 0:
            raise ValueError(f"[safetensors] {path}: tensor {name} {info['dtype']}{shape} has "
                             f"data_offsets [{begin}, {end}] (body is {len(body)} bytes)")
        raw = bytearray(body[begin:end])
        if numel == 0:
            t = torch.empty(shape, dtype=dtype)
        else:
            t = torch.frombuffer(raw, dtype=dtype).reshape(shape).clone()
        out[name] = t
    return out, metadata


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: tensor} (written in the given order, as their own dtype, little-endian)."""
    header = {}
    chunks = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"[safetensors] cannot write {name} of dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * ((8 - len(head) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# config (the keys and defaults of src/model/config.h)

CONFIG_DEFAULTS = {
    "model_type": "moe_cpp",
    "vocab_size": 256,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 384,
    "moe_intermediate_size": 128,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "scoring_func": "softmax",
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "aux_loss_alpha": 0.0,
    "seq_aux_alpha": 0.0,
    "z_loss_coef": 0.0,
    "bias_update_rate": 0.0,
    "capacity_factor": 0.0,
    "initializer_range": 0.02,
    "attention": "gqa",
    "q_lora_rank": 0,
    "kv_lora_rank": 0,
    "qk_nope_head_dim": 0,
    "qk_rope_head_dim": 0,
    "v_head_dim": 0,
    "num_nextn_predict_layers": 0,
    "mtp_loss_weight": 0.3,
}
# MLA sizes: an integer, or null for none (written as 0 by the C++ code).
_MLA_SIZES = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
              "v_head_dim")


def make_config(overrides=None, origin="config"):
    """Defaults of config.h updated with `overrides`; unknown keys and bad values are errors."""
    cfg = dict(CONFIG_DEFAULTS)
    for k, v in (overrides or {}).items():
        if k in ("torch_dtype", "quantization_config"):  # the weights file's, not the model's
            continue
        if k not in CONFIG_DEFAULTS:
            raise ValueError(f"[config] {origin}: unknown key '{k}'")
        d = CONFIG_DEFAULTS[k]
        if k in _MLA_SIZES and v is None:
            v = 0
        if isinstance(d, bool):
            ok = isinstance(v, bool)
        elif isinstance(d, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(d, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            v = float(v)
        else:
            ok = isinstance(v, str)
        if not ok:
            raise ValueError(f"[config] {origin}: key '{k}' has value {v!r} of the wrong type")
        cfg[k] = v
    c = cfg
    mla = c["attention"] == "mla"
    checks = [
        (c["model_type"] in ("moe_cpp", "deepseek_v3"),
         "model_type must be 'moe_cpp' or 'deepseek_v3'"),
        (c["attention"] in ("gqa", "mla"), "attention must be 'gqa' or 'mla'"),
        (c["model_type"] != "deepseek_v3" or mla, "model_type deepseek_v3 is MLA"),
        (all(c[k] >= 0 for k in _MLA_SIZES), "MLA sizes must be >= 0 (0 = none)"),
        (mla or all(c[k] == 0 for k in _MLA_SIZES), "MLA sizes need attention = 'mla'"),
        (not mla or all(c[k] >= 1 for k in _MLA_SIZES[1:]),
         "attention = 'mla' needs kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim"),
        (not mla or c["qk_rope_head_dim"] % 2 == 0, "qk_rope_head_dim must be even"),
        (not mla or c["head_dim"] == c["qk_rope_head_dim"], "MLA: head_dim = qk_rope_head_dim"),
        (not mla or c["num_key_value_heads"] == c["num_attention_heads"],
         "MLA: num_key_value_heads = num_attention_heads"),
        (0 <= c["num_nextn_predict_layers"] < c["max_position_embeddings"],
         "num_nextn_predict_layers must be in [0, max_position_embeddings)"),
        (c["mtp_loss_weight"] >= 0, "mtp_loss_weight must be >= 0"),
        (c["num_key_value_heads"] > 0
         and c["num_attention_heads"] % c["num_key_value_heads"] == 0,
         "num_key_value_heads must divide num_attention_heads"),
        (c["head_dim"] > 0 and c["head_dim"] % 2 == 0, "head_dim must be even (RoPE)"),
        (c["scoring_func"] in ("softmax", "sigmoid"), "scoring_func must be softmax or sigmoid"),
        (0 <= c["first_k_dense_replace"] <= c["num_hidden_layers"],
         "first_k_dense_replace must be in [0, num_hidden_layers]"),
        (c["first_k_dense_replace"] == c["num_hidden_layers"]
         or 1 <= c["num_experts_per_tok"] <= c["n_routed_experts"],
         "num_experts_per_tok must be in [1, n_routed_experts]"),
        (c["n_shared_experts"] >= 0, "n_shared_experts must be >= 0"),
        (c["n_group"] >= 1 and c["n_routed_experts"] % c["n_group"] == 0,
         "n_group must divide n_routed_experts"),
        (1 <= c["topk_group"] <= c["n_group"], "topk_group must be in [1, n_group]"),
        (c["num_experts_per_tok"]
         <= c["topk_group"] * (c["n_routed_experts"] // max(1, c["n_group"])),
         "num_experts_per_tok must be <= topk_group * n_routed_experts / n_group"),
        (c["capacity_factor"] >= 0, "capacity_factor must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"[config] {origin}: {msg} (got {c})")
    return cfg


def load_config(path):
    with open(path) as f:
        return make_config(json.load(f), origin=path)


def load_checkpoint(directory):
    """(config dict, {hf name: float32 tensor}) from DIR/config.json and DIR/model.safetensors."""
    cfg = load_config(os.path.join(directory, "config.json"))
    tensors, _ = read_safetensors(os.path.join(directory, "model.safetensors"))
    return cfg, tensors


def save_checkpoint(directory, cfg, state):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(directory, "model.safetensors"),
                      {k: v.to(torch.float32) for k, v in state.items()})


def is_moe_layer(cfg, layer):
    return layer >= cfg["first_k_dense_replace"]


def attention_specs(cfg, p, sd, sd_out):
    """The self_attn tensors of one block (prefix p), HF names and [out, in] shapes."""
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg["attention"] != "mla":
        Hkv, Dh = cfg["num_key_value_heads"], cfg["head_dim"]
        return [(p + "self_attn.q_proj.weight", [H * Dh, D], sd),
                (p + "self_attn.k_proj.weight", [Hkv * Dh, D], sd),
                (p + "self_attn.v_proj.weight", [Hkv * Dh, D], sd),
                (p + "self_attn.o_proj.weight", [D, H * Dh], sd_out)]
    rq, rkv = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    if rq > 0:
        q = [(p + "self_attn.q_a_proj.weight", [rq, D], sd),
             (p + "self_attn.q_a_layernorm.weight", [rq], "one"),
             (p + "self_attn.q_b_proj.weight", [H * (dn + dr), rq], sd)]
    else:
        q = [(p + "self_attn.q_proj.weight", [H * (dn + dr), D], sd)]
    return q + [(p + "self_attn.kv_a_proj_with_mqa.weight", [rkv + dr, D], sd),
                (p + "self_attn.kv_a_layernorm.weight", [rkv], "one"),
                (p + "self_attn.kv_b_proj.weight", [H * (dn + dv), rkv], sd),
                (p + "self_attn.o_proj.weight", [D, H * dv], sd_out)]


def param_specs(cfg):
    """[(hf name, shape, init std or 'one' or 'bias')] in the order of src/model/params.cpp:
    embedding, the L layers, model.norm, lm_head, then each MTP module k (layer index L + k:
    enorm, hnorm, eh_proj, its block, shared_head.norm), then the routed experts of every MoE
    layer (main layers first, then the MTP blocks)."""
    D, Fd, Fe = cfg["hidden_size"], cfg["intermediate_size"], cfg["moe_intermediate_size"]
    E, Fs, L, V = (cfg["n_routed_experts"], cfg["n_shared_experts"] * Fe,
                   cfg["num_hidden_layers"], cfg["vocab_size"])
    M = cfg["num_nextn_predict_layers"]
    sd = cfg["initializer_range"]
    sd_out = sd / math.sqrt(2.0 * L)  # o_proj and every down_proj (MTP blocks too)
    experts = []

    def block(l):
        p = f"model.layers.{l}."
        out = [(p + "input_layernorm.weight", [D], "one")]
        out += attention_specs(cfg, p, sd, sd_out)
        out.append((p + "post_attention_layernorm.weight", [D], "one"))
        if not is_moe_layer(cfg, l):
            return out + [(p + "mlp.gate_proj.weight", [Fd, D], sd),
                          (p + "mlp.up_proj.weight", [Fd, D], sd),
                          (p + "mlp.down_proj.weight", [D, Fd], sd_out)]
        out += [(p + "mlp.gate.weight", [E, D], sd),
                (p + "mlp.gate.e_score_correction_bias", [E], "bias")]
        if Fs > 0:
            out += [(p + "mlp.shared_experts.gate_proj.weight", [Fs, D], sd),
                    (p + "mlp.shared_experts.up_proj.weight", [Fs, D], sd),
                    (p + "mlp.shared_experts.down_proj.weight", [D, Fs], sd_out)]
        for e in range(E):
            q = f"{p}mlp.experts.{e}."
            experts.extend([(q + "gate_proj.weight", [Fe, D], sd),
                            (q + "up_proj.weight", [Fe, D], sd),
                            (q + "down_proj.weight", [D, Fe], sd_out)])
        return out

    specs = [("model.embed_tokens.weight", [V, D], sd)]
    for l in range(L):
        specs += block(l)
    specs.append(("model.norm.weight", [D], "one"))
    if not cfg["tie_word_embeddings"]:
        specs.append(("lm_head.weight", [V, D], sd))
    for k in range(M):
        p = f"model.layers.{L + k}."
        specs += [(p + "enorm.weight", [D], "one"), (p + "hnorm.weight", [D], "one"),
                  (p + "eh_proj.weight", [D, 2 * D], sd)]
        specs += block(L + k)
        specs.append((p + "shared_head.norm.weight", [D], "one"))
    return specs + experts


def takes_weight_decay(name):
    """Every *_proj, the router, embed_tokens and lm_head decay; the RMSNorm weights do not."""
    return not name.endswith("norm.weight")


# ----------------------------------------------------------------------------------------------
# model


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # (..., D)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(T, Dh, theta, dtype):
    """cos, sin (T, Dh) in the HF convention: freqs = pos * inv_freq, emb = cat(freqs, freqs).
    Computed in float64 and rounded once to the working dtype."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, Dh, 2, dtype=torch.float64) / Dh))  # (Dh/2)
    freqs = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]      # (T, Dh/2)
    emb = torch.cat([freqs, freqs], dim=-1)                                          # (T, Dh)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, self.H, self.Hkv, self.Dh = (cfg["hidden_size"], cfg["num_attention_heads"],
                                        cfg["num_key_value_heads"], cfg["head_dim"])
        self.q_proj = nn.Linear(D, self.H * self.Dh, bias=False)
        self.k_proj = nn.Linear(D, self.Hkv * self.Dh, bias=False)
        self.v_proj = nn.Linear(D, self.Hkv * self.Dh, bias=False)
        self.o_proj = nn.Linear(self.H * self.Dh, D, bias=False)

    def forward(self, x, cos, sin, causal_mask):  # x (B, T, D); cos, sin (T, Dh); mask (T, T) additive
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.Dh).transpose(1, 2)    # (B, H, T, Dh)
        k = self.k_proj(x).view(B, T, self.Hkv, self.Dh).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = self.v_proj(x).view(B, T, self.Hkv, self.Dh).transpose(1, 2)  # (B, Hkv, T, Dh)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.Hkv != self.H:  # GQA: query head h reads kv head h // (H / Hkv)
            k = k.repeat_interleave(self.H // self.Hkv, dim=1)            # (B, H, T, Dh)
            v = v.repeat_interleave(self.H // self.Hkv, dim=1)
        # att = q k^T / sqrt(Dh) + mask (0 on and below the diagonal, -inf above), in one baddbmm
        att = torch.baddbmm(causal_mask, q.reshape(B * self.H, T, self.Dh),
                            k.reshape(B * self.H, T, self.Dh).transpose(1, 2),
                            alpha=1.0 / math.sqrt(self.Dh))                    # (B*H, T, T)
        att = att.softmax(dim=-1)
        y = torch.bmm(att, v.reshape(B * self.H, T, self.Dh)).view(B, self.H, T, self.Dh)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.Dh))


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2 sec. 2.1, V3 sec. 2.1), HF DeepseekV3 names.
    For one token x (D) and heads h = 0..H-1 (dn, dr, dv, rq, rkv as in the config):

        c_q  = RMSNorm_qa(q_a_proj x)              (rq)       [q_lora_rank > 0]
        q    = q_b_proj c_q   or   q_proj x        (H*(dn+dr)); per head [q_nope (dn) | q_pe (dr)]
        [c_kv | k_pe] = kv_a_proj_with_mqa x      (rkv | dr);  k_pe shared by all heads
        kv   = kv_b_proj RMSNorm_kva(c_kv)         (H*(dn+dv)); per head [k_nope (dn) | v (dv)]
        q_pe, k_pe = RoPE(q_pe, pos), RoPE(k_pe, pos)   HF rotate_half on the dr dims as produced
                                                   (pairs (j, j + dr/2), inv_freq theta^(-2j/dr))
        score_h(i, j) = (q_nope_h(i).k_nope_h(j) + q_pe_h(i).k_pe(j)) / sqrt(dn + dr), j <= i
        o_h(i) = sum_j softmax_j(score_h(i, .)) v_h(j);  out = o_proj [o_0 | ... | o_{H-1}]

    The latent norms use rms_norm_eps. No rope_scaling (YaRN mscale = 1)."""

    def __init__(self, cfg):
        super().__init__()
        D, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.H, self.rq, self.rkv = cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["kv_lora_rank"]
        self.dn, self.dr, self.dv = (cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"],
                                     cfg["v_head_dim"])
        dqk = self.dn + self.dr
        if self.rq > 0:
            self.q_a_proj = nn.Linear(D, self.rq, bias=False)
            self.q_a_layernorm = RMSNorm(self.rq, eps)
            self.q_b_proj = nn.Linear(self.rq, self.H * dqk, bias=False)
        else:
            self.q_proj = nn.Linear(D, self.H * dqk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.rkv + self.dr, bias=False)
        self.kv_a_layernorm = RMSNorm(self.rkv, eps)
        self.kv_b_proj = nn.Linear(self.rkv, self.H * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(self.H * self.dv, D, bias=False)
        self.scale = 1.0 / math.sqrt(dqk)

    def forward(self, x, cos, sin, causal_mask):  # x (B, T, D); cos, sin (T, dr); mask (T, T)
        B, T, _ = x.shape
        H, dn, dr, dv = self.H, self.dn, self.dr, self.dv
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.rq > 0 else self.q_proj(x)
        q = q.view(B, T, H, dn + dr).transpose(1, 2)                       # (B, H, T, dn+dr)
        q_nope, q_pe = q.split([dn, dr], dim=-1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.rkv, dr], dim=-1)  # (B,T,rkv), (B,T,dr)
        kv = self.kv_b_proj(self.kv_a_layernorm(c_kv)).view(B, T, H, dn + dv).transpose(1, 2)
        k_nope, v = kv.split([dn, dv], dim=-1)                             # (B,H,T,dn), (B,H,T,dv)
        q_pe = q_pe * cos + rotate_half(q_pe) * sin
        k_pe = k_pe[:, None] * cos + rotate_half(k_pe[:, None]) * sin      # (B, 1, T, dr)
        q = torch.cat([q_nope, q_pe], dim=-1)                              # (B, H, T, dn+dr)
        k = torch.cat([k_nope, k_pe.expand(B, H, T, dr)], dim=-1)
        att = torch.baddbmm(causal_mask, q.reshape(B * H, T, dn + dr),
                            k.reshape(B * H, T, dn + dr).transpose(1, 2), alpha=self.scale)
        att = att.softmax(dim=-1)                                          # (B*H, T, T)
        y = torch.bmm(att, v.reshape(B * H, T, dv)).view(B, H, T, dv)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * dv))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); used for the dense FFN, each expert and the shared experts."""

    def __init__(self, D, width):
        super().__init__()
        self.gate_proj = nn.Linear(D, width, bias=False)
        self.up_proj = nn.Linear(D, width, bias=False)
        self.down_proj = nn.Linear(width, D, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """mlp.gate: weight [E, D] (trained) and e_score_correction_bias [E] (a buffer: it only
    shifts the top-K selection and is updated by the auxiliary-loss-free rule)."""

    def __init__(self, D, E):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(E, D))
        self.register_buffer("e_score_correction_bias", torch.zeros(E))


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, Fe = cfg["hidden_size"], cfg["moe_intermediate_size"]
        self.cfg = cfg
        self.E, self.K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
        self.gate = Router(D, self.E)
        self.experts = nn.ModuleList(SwiGLU(D, Fe) for _ in range(self.E))
        S = cfg["n_shared_experts"]
        self.shared_experts = SwiGLU(D, S * Fe) if S > 0 else None

    def route(self, x):
        """x (N, D) -> z (N, E) logits, s (N, E) scores, idx (N, K) experts by descending
        s + bias (ties to the lower index), g (N, K) gate weights.

        Group-limited routing (n_group > 1, DeepSeek-V3 / HF get_topk_indices): the E experts
        form n_group consecutive groups of E/n_group; a group's score is the sum of its two
        largest s + bias (its only one if E/n_group = 1); the topk_group best groups (ties to
        the lower group index) are kept and the other experts are excluded (-inf, where HF
        masks with 0.0) before the top-K."""
        cfg = self.cfg
        z = F.linear(x, self.gate.weight)
        s = z.softmax(dim=-1) if cfg["scoring_func"] == "softmax" else torch.sigmoid(z)
        with torch.no_grad():  # the selection is not differentiated
            choice = s + self.gate.e_score_correction_bias                    # (N, E)
            G, TG = cfg["n_group"], cfg["topk_group"]
            if G > 1 and TG < G:
                N, Eg = choice.shape[0], self.E // G
                grouped = choice.reshape(N, G, Eg)                            # (N, G, E/G)
                top2 = grouped.topk(min(2, Eg), dim=-1).values                # (N, G, 1|2)
                gscore = top2[..., 0] + top2[..., 1] if Eg > 1 else top2[..., 0]  # (N, G)
                gsel = torch.sort(gscore, dim=-1, descending=True, stable=True).indices[:, :TG]
                keep = torch.zeros(N, G, dtype=torch.bool).scatter_(1, gsel, True)
                keep = keep.repeat_interleave(Eg, dim=1)                      # (N, E)
                choice = choice.masked_fill(~keep, float("-inf"))
            idx = torch.sort(choice, dim=-1, descending=True, stable=True).indices[:, :self.K]
        g = s.gather(1, idx)                                                  # (N, K)
        if cfg["norm_topk_prob"]:
            g = g / g.sum(dim=-1, keepdim=True)
        g = g * cfg["routed_scaling_factor"]
        return z, s, idx, g

    def dispatch(self, idx, N):
        """Slots (n, k) kept after capacity, grouped by expert and in token order inside each
        expert. Returns slots (M,) flat slot ids n*K + k, counts (E,) kept per expert,
        load (E,) selections per expert before drops."""
        E, K = self.E, self.K
        flat = idx.reshape(-1)                                                # (N*K)
        load = torch.bincount(flat, minlength=E)                              # (E)
        slots = torch.sort(flat, stable=True).indices                         # by expert, then n
        counts = load
        c = self.cfg["capacity_factor"]
        if c > 0:
            cap = math.ceil(c * N * K / E)
            starts = torch.cumsum(load, 0) - load                             # (E)
            rank = torch.arange(N * K) - starts[flat[slots]]                  # place in queue
            slots = slots[rank < cap]
            counts = load.clamp(max=cap)
        return slots, counts, load

    def forward(self, x):
        """x (B, T, D) -> y (B, T, D), stats {aux_loss, seq_aux_loss, z_loss, load, dropped}."""
        cfg, E, K = self.cfg, self.E, self.K
        B, T, D = x.shape
        N = B * T
        xf = x.reshape(N, D)
        z, s, idx, g = self.route(xf)
        slots, counts, load = self.dispatch(idx, N)

        tok = slots // K                                                      # (M) token of slot
        xs = xf.index_select(0, tok)                                          # (M, D)
        gs = g.reshape(-1).index_select(0, slots)                             # (M)
        outs = []
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n > 0:
                outs.append(self.experts[e](xs[start:start + n]))
            start += n
        y = torch.zeros_like(xf)
        if outs:
            y.index_add_(0, tok, torch.cat(outs) * gs[:, None])
        if self.shared_experts is not None:
            y = y + self.shared_experts(xf)

        zero = xf.new_zeros(())
        aux = seq_aux = z_loss = zero
        if cfg["aux_loss_alpha"] > 0 or cfg["seq_aux_alpha"] > 0:
            p = s / s.sum(dim=-1, keepdim=True)                               # (N, E)
            if cfg["aux_loss_alpha"] > 0:
                f = load.to(x.dtype) * (E / (K * N))                          # (E) constant
                aux = cfg["aux_loss_alpha"] * (f * p.mean(dim=0)).sum()
            if cfg["seq_aux_alpha"] > 0:
                load_b = torch.zeros(B, E, dtype=x.dtype).scatter_add_(
                    1, idx.reshape(B, T * K), torch.ones(B, T * K, dtype=x.dtype))  # (B, E)
                f_b = load_b * (E / (K * T))
                per_seq = (f_b * p.reshape(B, T, E).mean(dim=1)).sum(dim=-1)  # (B)
                seq_aux = cfg["seq_aux_alpha"] * per_seq.mean()
        if cfg["z_loss_coef"] > 0:
            z_loss = cfg["z_loss_coef"] * torch.logsumexp(z, dim=-1).pow(2).mean()
        stats = {"aux_loss": aux, "seq_aux_loss": seq_aux, "z_loss": z_loss,
                 "load": load, "dropped": N * K - int(slots.numel()), "idx": idx}
        return y.reshape(B, T, D), stats


class DecoderLayer(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        D, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(D, eps)
        self.self_attn = MLAttention(cfg) if cfg["attention"] == "mla" else Attention(cfg)
        self.post_attention_layernorm = RMSNorm(D, eps)
        self.is_moe = is_moe_layer(cfg, layer)
        self.mlp = MoE(cfg) if self.is_moe else SwiGLU(D, cfg["intermediate_size"])

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            y, stats = self.mlp(h)
            return x + y, stats
        return x + self.mlp(h), None


class SharedHead(nn.Module):
    """shared_head.norm of an MTP module; its head is the main model's lm_head (not stored)."""

    def __init__(self, D, eps):
        super().__init__()
        self.norm = RMSNorm(D, eps)


class MTPLayer(DecoderLayer):
    """Multi-token-prediction module k (layer index L + k): enorm, hnorm, eh_proj [D, 2D], the
    block's input_layernorm / self_attn / post_attention_layernorm / mlp (always MoE: L + k >=
    first_k_dense_replace) and shared_head.norm; embedding and lm_head are shared."""

    def __init__(self, cfg, layer):
        super().__init__(cfg, layer)
        D, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.enorm = RMSNorm(D, eps)
        self.hnorm = RMSNorm(D, eps)
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        self.shared_head = SharedHead(D, eps)

    def mtp_forward(self, h, e, cos, sin, mask):
        """h (B, Tk, D) previous depth's representation, e (B, Tk, D) embeddings of the tokens
        one ahead -> (next representation (B, Tk, D), MoE stats)."""
        x = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(h)], dim=-1))
        x, stats = self(x, cos, sin, mask)
        return self.shared_head.norm(x), stats


class Backbone(nn.Module):  # "model." in the HF names
    def __init__(self, cfg):
        super().__init__()
        L, M = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"]
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        # model.layers.{0..L-1} the decoder, model.layers.{L..L+M-1} the MTP modules
        self.layers = nn.ModuleList([DecoderLayer(cfg, l) for l in range(L)] +
                                    [MTPLayer(cfg, L + k) for k in range(M)])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class MoeForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = (None if cfg["tie_word_embeddings"] else
                        nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False))

    def lm_head_weight(self):
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, tokens):
        """tokens (B, T+1) int -> {logits (B, T, V), ce, loss, moe: [stats per MoE layer, main
        layers then MTP blocks], mtp_logits: [(B, T-1-k, V) per module], mtp_ce: [per module]}.

        Multi-token prediction (DeepSeek-V3 sec. 2.2; D = num_nextn_predict_layers, modules
        k = 0..D-1, 0-based; inputs t_0..t_{T-1}, the main model predicts t_{i+1} at position i):
            h_0 = RMSNorm_final(x_L)                the normed output that feeds lm_head
            module k at positions i = 0..T-k-2 (those whose target exists):
              h'   = eh_proj([RMSNorm_e(emb(t_{i+k+1})); RMSNorm_h(h_k(i))])   embedding first
              h_{k+1} = shared_head.norm(Block_k(h'))   causal attention over the T-k-1
                                                        positions, RoPE positions 0..T-k-2
              logits_k = h_{k+1} @ lm_head^T,  target t_{i+k+2}
            CE_k = mean over the B*(T-k-1) positions
            loss = CE + mtp_loss_weight / D * sum_k CE_k + every MoE layer's aux terms (the MTP
                   blocks' over their own tokens, unweighted)"""
        cfg = self.cfg
        tokens = tokens.long()
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        B, T = inputs.shape
        L, M = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"]
        dtype = self.model.embed_tokens.weight.dtype
        rope_dim = cfg["qk_rope_head_dim"] if cfg["attention"] == "mla" else cfg["head_dim"]
        cos, sin = rope_cos_sin(T, rope_dim, cfg["rope_theta"], dtype)
        mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)  # -inf above the diagonal

        x = self.model.embed_tokens(inputs)                                  # (B, T, D)
        moe_stats = []
        for layer in self.model.layers[:L]:
            x, stats = layer(x, cos, sin, mask)
            if stats is not None:
                moe_stats.append(stats)
        h = self.model.norm(x)                                               # h_0 (B, T, D)
        W = self.lm_head_weight()
        logits = F.linear(h, W)                                              # (B, T, V)
        ce = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))
        loss = ce
        mtp_logits, mtp_ce = [], []
        for k, module in enumerate(self.model.layers[L:]):
            Tk = T - k - 1
            if Tk < 1:
                raise ValueError(f"[mtp] sequence of {T} tokens is too short for "
                                 f"num_nextn_predict_layers = {M}: needs T > {M}")
            e = self.model.embed_tokens(tokens[:, k + 1:k + 1 + Tk])         # t_{i+k+1}
            h, stats = module.mtp_forward(h[:, :Tk], e, cos[:Tk], sin[:Tk], mask[:Tk, :Tk])
            moe_stats.append(stats)
            lk = F.linear(h, W)                                              # (B, Tk, V)
            cek = F.cross_entropy(lk.reshape(B * Tk, -1), tokens[:, k + 2:k + 2 + Tk].reshape(-1))
            mtp_logits.append(lk)
            mtp_ce.append(cek)
        if M > 0:
            loss = loss + cfg["mtp_loss_weight"] / M * torch.stack(mtp_ce).sum()
        for st in moe_stats:
            loss = loss + st["aux_loss"] + st["seq_aux_loss"] + st["z_loss"]
        return {"logits": logits, "ce": ce, "loss": loss, "moe": moe_stats,
                "mtp_logits": mtp_logits, "mtp_ce": mtp_ce}


def build_model(cfg, state, dtype=torch.float32):
    """The model from a config dict and {hf name: tensor}; every tensor of the layout must be
    present with its shape, and no other."""
    model = MoeForCausalLM(cfg)
    expected = {name: shape for name, shape, _ in param_specs(cfg)}
    missing = [n for n in expected if n not in state]
    extra = [n for n in state if n not in expected]
    if missing or extra:
        raise ValueError(f"[checkpoint] missing tensors {missing[:5]} ({len(missing)}), "
                         f"unexpected tensors {extra[:5]} ({len(extra)})")
    for n, shape in expected.items():
        if list(state[n].shape) != list(shape):
            raise ValueError(f"[checkpoint] {n} has shape {list(state[n].shape)}, expected {shape}")
    own = model.state_dict()
    assert set(own) == set(expected), sorted(set(own) ^ set(expected))
    model.load_state_dict({n: state[n].to(torch.float32) for n in expected}, strict=True)
    return model.to(dtype)


def init_state(cfg, seed=0, bias=None):
    """Random weights by the init rules of params.cpp: normal(0, std), norms 1, bias given
    ({layer: tensor [E]} or a callable layer -> tensor) or zeros."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape, init in param_specs(cfg):
        if init == "one":
            state[name] = torch.ones(shape)
        elif init == "bias":
            layer = int(name.split(".")[2])
            b = bias(layer) if callable(bias) else (bias or {}).get(layer)
            state[name] = torch.zeros(shape) if b is None else torch.as_tensor(
                b, dtype=torch.float32).reshape(shape).clone()
        else:
            state[name] = torch.randn(shape, generator=gen) * init
    return state


def trainable_named_parameters(model):
    """(hf name, parameter) for every trained tensor; a tied lm_head appears once, as
    model.embed_tokens.weight. The balancing bias is a buffer, not listed."""
    return list(model.named_parameters())


def full_state(model):
    """{hf name: tensor} of every parameter and the balancing biases."""
    return {n: t.detach() for n, t in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# training


def forward_backward(model, tokens):
    """Zeroes the gradients, runs forward and backward. Every trainable parameter ends with a
    gradient tensor (zeros for an expert that got no tokens), like the C++ gradient arena."""
    params = [p for _, p in trainable_named_parameters(model)]
    for p in params:
        p.grad = None
    out = model(tokens)
    out["loss"].backward()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return out


def make_optimizer(model, lr, beta1, beta2, eps, weight_decay):
    named = trainable_named_parameters(model)
    decay = [p for n, p in named if takes_weight_decay(n)]
    no_decay = [p for n, p in named if not takes_weight_decay(n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(beta1, beta2), eps=eps)


@torch.no_grad()
def update_balance_bias(model, moe_stats):
    """b_e += rate * sign(mean(load) - load_e), with this step's loads (before capacity);
    the sum is taken in float64 and rounded once to the bias dtype."""
    rate = model.cfg["bias_update_rate"]
    if rate <= 0:
        return
    moes = [layer.mlp for layer in model.model.layers if layer.is_moe]
    for moe, st in zip(moes, moe_stats):
        load = st["load"].to(torch.float64)
        step = rate * torch.sign(load.mean() - load)
        b = moe.gate.e_score_correction_bias
        b.copy_((b.to(torch.float64) + step).to(b.dtype))


def train(model, tokens, steps, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
          on_step=None):
    """Runs `steps` AdamW steps on the same batch. Returns
    {"initial": forward outputs of the initial weights, "grads": {name: grad of the initial
    weights}, "step_losses": [loss before each update]}."""
    opt = make_optimizer(model, lr, beta1, beta2, eps, weight_decay)
    out = forward_backward(model, tokens)
    initial = {"logits": out["logits"].detach(), "loss": out["loss"].detach(),
               "ce": out["ce"].detach(), "moe": out["moe"],
               "mtp_logits": [t.detach() for t in out["mtp_logits"]],
               "mtp_ce": [t.detach() for t in out["mtp_ce"]]}
    grads = {n: p.grad.detach().clone() for n, p in trainable_named_parameters(model)}
    losses = []
    for step in range(steps):
        if step > 0:
            out = forward_backward(model, tokens)
        losses.append(float(out["loss"]))
        opt.step()
        update_balance_bias(model, out["moe"])
        if on_step is not None:
            on_step(step, out)
    return {"initial": initial, "grads": grads, "step_losses": losses}
