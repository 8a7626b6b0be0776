#!/usr/bin/python3
"""Checks the PyTorch reference against itself, without the C++ code. Exits non-zero on failure.

    /usr/bin/python3 tests/reference/selfcheck.py [--threads 1] [--keep DIR]

1. safetensors: write/read round trip, header padded to 8 bytes.
2. Attention (RoPE, GQA, causal softmax) and RMSNorm against per-position loops; the AdamW
   weight-decay groups. The vectorized MoE layer (sort -> index_select -> experts ->
   index_add) against a plain per-token loop written from the words of DESIGN.md section 3:
   outputs, loads, drops, the three auxiliary terms, and the gradients of the input and every
   MoE parameter (float64).
3. Gradients of the whole loss against central finite differences in float64, on coordinates
   of every parameter tensor (skipping any whose perturbation changes the routing).
4. reference.py end to end on the fixtures of make_fixture.py (Mixtral-like, DeepSeek-like,
   capacity 1.0 with drops, group-limited routing, MLA + MTP): the output file's names and
   shapes, step_losses[0] == loss, the balancing-bias rule, and float32 against float64 runs.
5. MLA and MTP against second formulations: MLA attention against a per-position, per-head loop
   in DeepSeek's absorbed form (q_nope folded through each head's rows of kv_b_proj onto the
   latent, values read from the latent), RoPE written per pair; the MTP loss (truncated
   sequences) against Megatron's formulation (full-length sequences with the inputs and labels
   rolled left and a loss mask), loss and every gradient in float64; the loss decomposition
   CE + lambda/D sum CE_k + aux terms.
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_fixture  # noqa: E402
import moe_ref  # noqa: E402

FAILURES = []


def check(ok, what):
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)
    return ok


# ----------------------------------------------------------------------------------------------
# 1. safetensors


def check_safetensors(tmp):
    print("safetensors round trip")
    path = os.path.join(tmp, "rt.safetensors")
    ts = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int32),
          "c": torch.randn(2, 2, dtype=torch.float64), "d": torch.tensor([1.5]),
          "e": torch.zeros(0, 4)}
    moe_ref.write_safetensors(path, ts, metadata={"k": "v"})
    back, meta = moe_ref.read_safetensors(path)
    same = all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in ts.items())
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    check(same and meta == {"k": "v"} and n % 8 == 0 and set(back) == set(ts),
          f"tensors, dtypes, metadata equal; header length {n} is a multiple of 8")


# ----------------------------------------------------------------------------------------------
# 2. MoE layer vs a per-token loop


def naive_moe(moe, x, B, T):
    """The MoE layer token by token. x (N, D) float64 -> y (N, D), aux, seq_aux, z, load, drops."""
    cfg = moe.cfg
    E, K, N = cfg["n_routed_experts"], cfg["num_experts_per_tok"], x.shape[0]
    W, bias = moe.gate.weight, moe.gate.e_score_correction_bias
    c = cfg["capacity_factor"]
    cap = math.ceil(c * N * K / E) if c > 0 else N * K
    kept = [0] * E
    load = [0] * E
    sel_all, s_all, z_all, ys = [], [], [], []
    dropped = 0
    for n in range(N):
        z = W @ x[n]                                                    # (E)
        s = torch.softmax(z, 0) if cfg["scoring_func"] == "softmax" else torch.sigmoid(z)
        choice = (s + bias).tolist()
        # Group limit: groups of E/G consecutive experts, scored by their two largest choices;
        # only the best topk_group groups (ties to the lower group) may be chosen from.
        G, Eg = cfg["n_group"], E // cfg["n_group"]
        top2 = [sorted(choice[g * Eg:(g + 1) * Eg], reverse=True)[:2] for g in range(G)]
        groups = sorted(range(G), key=lambda g: (-sum(top2[g]), g))[:cfg["topk_group"]]
        allowed = [e for e in range(E) if e // Eg in groups] if G > 1 else range(E)
        sel = sorted(allowed, key=lambda e: (-choice[e], e))[:K]
        denom = sum(s[e] for e in sel) if cfg["norm_topk_prob"] else 1.0
        y = moe.shared_experts(x[n]) if moe.shared_experts is not None else torch.zeros_like(x[n])
        for e in sel:
            load[e] += 1
            if kept[e] < cap:
                kept[e] += 1
                y = y + (s[e] / denom * cfg["routed_scaling_factor"]) * moe.experts[e](x[n])
            else:
                dropped += 1
        ys.append(y)
        sel_all.append(sel)
        s_all.append(s)
        z_all.append(z)

    def balance(tokens):  # sum_e f_e P_e over a set of tokens
        cnt = [0] * E
        for n in tokens:
            for e in sel_all[n]:
                cnt[e] += 1
        total = 0.0
        for e in range(E):
            P = sum(s_all[n][e] / s_all[n].sum() for n in tokens) / len(tokens)
            total = total + E / (K * len(tokens)) * cnt[e] * P
        return total

    aux = cfg["aux_loss_alpha"] * balance(range(N)) if cfg["aux_loss_alpha"] > 0 else 0.0
    seq = 0.0
    if cfg["seq_aux_alpha"] > 0:
        seq = cfg["seq_aux_alpha"] * sum(balance(range(b * T, (b + 1) * T)) for b in range(B)) / B
    zl = 0.0
    if cfg["z_loss_coef"] > 0:
        zl = cfg["z_loss_coef"] * sum(torch.logsumexp(z, 0) ** 2 for z in z_all) / N
    return torch.stack(ys), aux, seq, zl, load, dropped


def check_moe_layer(name, cfg, seed):
    print(f"MoE layer vs per-token loop: {name}")
    torch.manual_seed(seed)
    state = moe_ref.init_state(cfg, seed, make_fixture.bias_fn(
        make_fixture.PRESET_BIAS.get(name.split("+")[0]), cfg["n_routed_experts"], seed))
    model = moe_ref.build_model(cfg, state, torch.float64)
    layer = cfg["first_k_dense_replace"]
    moe = model.model.layers[layer].mlp
    B, T, D = 3, 8, cfg["hidden_size"]
    x = torch.randn(B, T, D, dtype=torch.float64)
    R = torch.randn(B * T, D, dtype=torch.float64)
    params = list(moe.named_parameters())

    def run(fn):
        xx = x.clone().requires_grad_(True)
        y, aux, seq, zl, load, dropped = fn(xx)
        loss = (y.reshape(B * T, D) * R).sum() + aux + seq + zl
        grads = torch.autograd.grad(loss, [xx] + [p for _, p in params], allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g
                 for g, p in zip(grads, [xx] + [p for _, p in params])]
        return y.reshape(B * T, D).detach(), [float(aux), float(seq), float(zl)], load, dropped, grads

    def fast(xx):
        y, st = moe(xx)
        return y, st["aux_loss"], st["seq_aux_loss"], st["z_loss"], st["load"].tolist(), st["dropped"]

    yf, tf, lf, df, gf = run(fast)
    yn, tn, ln, dn, gn = run(lambda xx: naive_moe(moe, xx.reshape(B * T, D), B, T))
    if cfg["n_group"] > 1:  # the comparison below can fail only if the limit changes choices
        with torch.no_grad():
            idx_lim = moe.route(x.reshape(B * T, D))[2]
            moe.cfg = dict(cfg, n_group=1, topk_group=1)
            idx_free = moe.route(x.reshape(B * T, D))[2]
            moe.cfg = cfg
        changed = int((idx_lim != idx_free).any(dim=1).sum())
        Eg = cfg["n_routed_experts"] // cfg["n_group"]
        check(changed > 0 if Eg > 1 else changed == 0,
              f"the group limit changes {changed} of {B * T} selections "
              f"({'some' if Eg > 1 else 'none with one expert per group'} expected)")
    check(lf == ln and df == dn, f"loads {lf} and dropped {df} equal (naive {ln}, {dn})")
    err_y = float((yf - yn).abs().max())
    check(err_y < 1e-12, f"outputs equal (max diff {err_y:.2e})")
    err_t = max(abs(a - b) for a, b in zip(tf, tn))
    check(err_t < 1e-14, f"aux {tf[0]:.6e} seq_aux {tf[1]:.6e} z {tf[2]:.6e} equal "
                         f"(max diff {err_t:.2e})")
    worst, where = 0.0, ""
    for (pname, _), a, b in zip([("input", None)] + params, gf, gn):
        e = float((a - b).abs().max()) / max(1e-30, float(b.abs().max()))
        if e > worst:
            worst, where = e, pname
    check(worst < 1e-10, f"gradients of input and {len(params)} MoE parameters equal "
                         f"(worst relative {worst:.2e} {where})")
    return df


def naive_attention(attn, cfg, x):
    """Attention position by position: HF rotate_half RoPE written out per pair (j, j + Dh/2),
    query head h reads kv head h // (H / Hkv), causal softmax. x (B, T, D) float64."""
    B, T, _ = x.shape
    H, Hkv, Dh = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    half = Dh // 2
    q = (x @ attn.q_proj.weight.T).reshape(B, T, H, Dh)
    k = (x @ attn.k_proj.weight.T).reshape(B, T, Hkv, Dh)
    v = (x @ attn.v_proj.weight.T).reshape(B, T, Hkv, Dh)

    def rope(vec, pos):
        out = torch.empty_like(vec)
        for j in range(half):
            a = pos * cfg["rope_theta"] ** (-2.0 * j / Dh)
            c, s = math.cos(a), math.sin(a)
            out[j] = vec[j] * c - vec[j + half] * s
            out[j + half] = vec[j + half] * c + vec[j] * s
        return out

    y = torch.zeros(B, T, H, Dh, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hkv)
            keys = torch.stack([rope(k[b, t, g], t) for t in range(T)])
            for t in range(T):
                qt = rope(q[b, t, h], t)
                w = torch.softmax(keys[:t + 1] @ qt / math.sqrt(Dh), 0)
                y[b, t, h] = w @ v[b, :t + 1, g]
    return y.reshape(B, T, H * Dh) @ attn.o_proj.weight.T


def naive_mla_attention(attn, cfg, x):
    """MLA position by position, head by head, in the absorbed form DeepSeek serves it with:
    q_nope_h . k_nope_h(j) = (W_UK_h^T q_nope_h) . c(j) and o_h = W_UV_h (sum_j p_j c(j)), with
    W_UK_h, W_UV_h head h's rows of kv_b_proj ([h*(dn+dv), +dn) and the dv after them) and c(j)
    the normed latent. RoPE per pair (j, j + dr/2). x (B, T, D) float64."""
    B, T, _ = x.shape
    H, rq, rkv = cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["kv_lora_rank"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    eps, half = cfg["rms_norm_eps"], dr // 2

    def rms(v, w):
        return v / math.sqrt(float((v ** 2).mean()) + eps) * w

    def rope(vec, pos):
        out = torch.empty_like(vec)
        for j in range(half):
            a = pos * cfg["rope_theta"] ** (-2.0 * j / dr)
            c, s = math.cos(a), math.sin(a)
            out[j] = vec[j] * c - vec[j + half] * s
            out[j + half] = vec[j + half] * c + vec[j] * s
        return out

    Wkv = attn.kv_b_proj.weight
    y = torch.zeros(B, T, attn.o_proj.weight.shape[0], dtype=x.dtype)
    for b in range(B):
        qs, cs, kps = [], [], []
        for t in range(T):
            if rq > 0:
                cq = rms(attn.q_a_proj.weight @ x[b, t], attn.q_a_layernorm.weight)
                qs.append(attn.q_b_proj.weight @ cq)
            else:
                qs.append(attn.q_proj.weight @ x[b, t])
            a = attn.kv_a_proj_with_mqa.weight @ x[b, t]
            cs.append(rms(a[:rkv], attn.kv_a_layernorm.weight))
            kps.append(rope(a[rkv:], t))
        for i in range(T):
            heads = []
            for h in range(H):
                W_uk = Wkv[h * (dn + dv):h * (dn + dv) + dn]                 # (dn, rkv)
                W_uv = Wkv[h * (dn + dv) + dn:(h + 1) * (dn + dv)]           # (dv, rkv)
                qh = qs[i][h * (dn + dr):(h + 1) * (dn + dr)]
                q_lat = W_uk.T @ qh[:dn]                                     # (rkv)
                q_pe = rope(qh[dn:], i)
                scores = torch.stack([(q_lat @ cs[j] + q_pe @ kps[j]) / math.sqrt(dn + dr)
                                      for j in range(i + 1)])
                p = torch.softmax(scores, 0)
                heads.append(W_uv @ sum(p[j] * cs[j] for j in range(i + 1)))
            y[b, i] = attn.o_proj.weight @ torch.cat(heads)
    return y


def check_dense_parts(name, cfg, seed):
    print(f"attention, RMSNorm and weight decay groups: {name}")
    torch.manual_seed(seed)
    model = moe_ref.build_model(cfg, moe_ref.init_state(cfg, seed), torch.float64)
    layer = model.model.layers[0]
    B, T = 2, 7
    x = torch.randn(B, T, cfg["hidden_size"], dtype=torch.float64)
    with torch.no_grad():
        layer.input_layernorm.weight.uniform_(0.5, 1.5)
        for p in layer.self_attn.parameters():
            p.normal_(0, 0.2)  # large enough that the attention is far from uniform
        mla = cfg["attention"] == "mla"
        rope_dim = cfg["qk_rope_head_dim"] if mla else cfg["head_dim"]
        cos, sin = moe_ref.rope_cos_sin(T, rope_dim, cfg["rope_theta"], torch.float64)
        mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
        h = layer.input_layernorm(x)
        w, eps = layer.input_layernorm.weight, cfg["rms_norm_eps"]
        h_naive = torch.stack([torch.stack([x[b, t] / math.sqrt(float((x[b, t] ** 2).mean()) + eps) * w
                                            for t in range(T)]) for b in range(B)])
        check(float((h - h_naive).abs().max()) < 1e-13, "RMSNorm equals x / sqrt(mean(x^2) + eps) * w")
        a = layer.self_attn(h, cos, sin, mask)
        if mla:
            for p in layer.self_attn.modules():
                if isinstance(p, moe_ref.RMSNorm):
                    p.weight.uniform_(0.5, 1.5)  # latent norms away from 1
            a = layer.self_attn(h, cos, sin, mask)
            a_naive = naive_mla_attention(layer.self_attn, cfg, h)
            what = (f"MLA attention (H={cfg['num_attention_heads']}, q_lora_rank="
                    f"{cfg['q_lora_rank']}, kv_lora_rank={cfg['kv_lora_rank']}) equals the "
                    f"absorbed per-position loop")
        else:
            a_naive = naive_attention(layer.self_attn, cfg, h)
            what = (f"attention (H={cfg['num_attention_heads']}, Hkv="
                    f"{cfg['num_key_value_heads']}) equals the per-position loop")
        err = float((a - a_naive).abs().max()) / float(a_naive.abs().max())
        check(err < 1e-12, f"{what} (relative diff {err:.1e})")
    opt = moe_ref.make_optimizer(model, 1e-3, 0.9, 0.95, 1e-8, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = sorted(names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0
                      for p in g["params"])
    norms = sorted(n for n in names.values() if n.endswith("norm.weight"))
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    check(no_decay == norms and n_params == len(names) and
          not any("e_score_correction_bias" in n for n in names.values()),
          f"weight decay on {n_params - len(no_decay)} tensors, none on the {len(norms)} RMSNorm "
          f"weights; the balancing bias is not an optimizer parameter")


def mtp_loss_rolled(model, tokens):
    """The MTP loss the way Megatron-LM computes it: every module runs on the full T positions
    with the input ids and labels rolled one more step left (a 0 rolled in) and a loss mask
    that drops the rolled-in positions. Returns (loss, [CE_k]); MoE aux terms excluded."""
    cfg = model.cfg
    tokens = tokens.long()
    B, T = tokens.shape[0], tokens.shape[1] - 1
    L, M = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"]
    dtype = model.model.embed_tokens.weight.dtype
    rope_dim = cfg["qk_rope_head_dim"] if cfg["attention"] == "mla" else cfg["head_dim"]
    cos, sin = moe_ref.rope_cos_sin(T, rope_dim, cfg["rope_theta"], dtype)
    mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)
    x = model.model.embed_tokens(tokens[:, :T])
    for layer in model.model.layers[:L]:
        x, _ = layer(x, cos, sin, mask)
    h = model.model.norm(x)
    W = model.lm_head_weight()
    labels = tokens[:, 1:]
    loss = F.cross_entropy(F.linear(h, W).reshape(B * T, -1), labels.reshape(-1))

    def roll(t):
        return torch.cat([t[:, 1:], torch.zeros_like(t[:, :1])], dim=1)

    ids, lab, valid = tokens[:, :T], labels, torch.ones(B, T, dtype=dtype)
    ces = []
    for module in model.model.layers[L:]:
        ids, lab, valid = roll(ids), roll(lab), roll(valid)
        e = model.model.embed_tokens(ids)
        z = module.eh_proj(torch.cat([module.enorm(e), module.hnorm(h)], dim=-1))
        z, _ = module(z, cos, sin, mask)
        h = module.shared_head.norm(z)
        ce_tok = F.cross_entropy(F.linear(h, W).reshape(B * T, -1), lab.reshape(-1),
                                 reduction="none").reshape(B, T)
        ces.append((ce_tok * valid).sum() / valid.sum())
    return loss + cfg["mtp_loss_weight"] / M * torch.stack(ces).sum(), ces


def check_mtp(name, cfg, seed):
    print(f"multi-token prediction against Megatron's rolled formulation: {name}")
    # The balancing terms see the rolled-in tail tokens in Megatron's form; switch them off.
    cfg = dict(cfg, aux_loss_alpha=0.0, seq_aux_alpha=0.0, z_loss_coef=0.0)
    state = moe_ref.init_state(cfg, seed, make_fixture.bias_fn("normal:0.05",
                                                               cfg["n_routed_experts"], seed))
    model = moe_ref.build_model(cfg, state, torch.float64)
    with torch.no_grad():  # norms away from 1, so a swapped or missing norm would show
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    tokens = make_fixture.random_tokens(2, 10, cfg["vocab_size"], seed)
    params = [p for _, p in moe_ref.trainable_named_parameters(model)]
    out = model(tokens)
    ga = torch.autograd.grad(out["loss"], params, allow_unused=True)
    lb, ces = mtp_loss_rolled(model, tokens)
    gb = torch.autograd.grad(lb, params, allow_unused=True)
    d_ce = max(abs(float(a) - float(b)) for a, b in zip(out["mtp_ce"], ces))
    d_loss = abs(float(out["loss"]) - float(lb))
    worst = 0.0
    for a, b in zip(ga, gb):
        a = torch.zeros(1, dtype=torch.float64) if a is None else a
        b = torch.zeros(1, dtype=torch.float64) if b is None else b
        worst = max(worst, float((a - b).abs().max()))
    M = cfg["num_nextn_predict_layers"]
    check(len(ces) == M and d_ce < 1e-12 and d_loss < 1e-12 and worst < 1e-12,
          f"{M} modules: CE_k {[round(float(c), 6) for c in ces]} equal (max diff {d_ce:.1e}), "
          f"loss (diff {d_loss:.1e}) and every gradient (max diff {worst:.1e}) equal")
    shapes = [list(t.shape) for t in out["mtp_logits"]]
    T = tokens.shape[1] - 1
    check(shapes == [[2, T - 1 - k, cfg["vocab_size"]] for k in range(M)],
          f"mtp_logits shapes {shapes}: B x (T-1-k) x V")
    # The loss is CE + lambda/D sum CE_k + the aux terms, with the coefficients back on.
    cfg2 = dict(cfg, seq_aux_alpha=0.01, z_loss_coef=0.01, aux_loss_alpha=0.01)
    model2 = moe_ref.build_model(cfg2, state, torch.float64)
    o = model2(tokens)
    aux = sum(float(st["aux_loss"] + st["seq_aux_loss"] + st["z_loss"]) for st in o["moe"])
    want = float(o["ce"]) + cfg2["mtp_loss_weight"] / M * sum(float(c) for c in o["mtp_ce"]) + aux
    n_moe = sum(1 for layer in model2.model.layers if layer.is_moe)
    check(abs(float(o["loss"]) - want) < 1e-12 and len(o["moe"]) == n_moe and aux > 0,
          f"loss = CE + {cfg2['mtp_loss_weight']}/{M} sum CE_k + aux terms of all {n_moe} MoE "
          f"layers (MTP blocks included): {float(o['loss']):.6f}")


# ----------------------------------------------------------------------------------------------
# 3. finite differences


def routing_key(out):
    return [(st["idx"].clone(), st["load"].clone(), st["dropped"]) for st in out["moe"]]


def same_routing(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
               for x, y in zip(a, b))


def check_finite_differences(name, cfg, seed, per_tensor=2, h=1e-5):
    """Central differences (f(w+h) - f(w-h)) / 2h in float64: truncation ~h^2, rounding
    ~1e-16 |loss| / h, so |fd - analytic| <= 1e-9 + 1e-5 |analytic| is a fair bound."""
    print(f"finite differences (float64): {name}")
    state = moe_ref.init_state(cfg, seed, make_fixture.bias_fn(
        make_fixture.PRESET_BIAS.get(name.split("+")[0]), cfg["n_routed_experts"], seed))
    model = moe_ref.build_model(cfg, state, torch.float64)
    tokens = make_fixture.random_tokens(2, 12, cfg["vocab_size"], seed)
    out = moe_ref.forward_backward(model, tokens)
    base = routing_key(out)
    gen = torch.Generator().manual_seed(seed + 99)
    n_checked = n_skipped = 0
    worst, where = 0.0, ""        # max |fd - an| / (1e-9 + 1e-5 |an|)
    worst_rel = 0.0               # max relative error over coordinates with |an| > 1e-4
    with torch.no_grad():
        for pname, p in moe_ref.trainable_named_parameters(model):
            flat, gflat = p.view(-1), p.grad.view(-1)
            for i in torch.randint(0, p.numel(), (per_tensor,), generator=gen).tolist():
                old = float(flat[i])
                flat[i] = old + h
                op = model(tokens)
                flat[i] = old - h
                om = model(tokens)
                flat[i] = old
                if not (same_routing(base, routing_key(op)) and same_routing(base, routing_key(om))):
                    n_skipped += 1
                    continue
                fd = (float(op["loss"]) - float(om["loss"])) / (2 * h)
                an = float(gflat[i])
                n_checked += 1
                ratio = abs(fd - an) / (1e-9 + 1e-5 * abs(an))
                if abs(an) > 1e-4:
                    worst_rel = max(worst_rel, abs(fd - an) / abs(an))
                if ratio > worst:
                    worst, where = ratio, f"{pname}[{i}] analytic {an:.9e} fd {fd:.9e}"
    check(n_checked > 0 and worst < 1.0,
          f"{n_checked} coordinates (skipped {n_skipped} that change routing) within "
          f"1e-9 + 1e-5|g|; worst relative error {worst_rel:.1e} where |g| > 1e-4; "
          f"closest to the bound ({worst:.2f} of it): {where}")


# ----------------------------------------------------------------------------------------------
# 4. reference.py end to end


def run_reference(ckpt, out, dtype, threads, steps):
    cmd = [sys.executable, os.path.join(HERE, "reference.py"), "--checkpoint", ckpt,
           "--batch", os.path.join(ckpt, "batch.safetensors"), "--out", out, "--dtype", dtype,
           "--threads", str(threads), "--steps", str(steps)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr)
        raise SystemExit(f"reference.py failed: {' '.join(cmd)}")
    return moe_ref.read_safetensors(out)[0], r.stderr


def rel(a, b):
    """max |a - b| / max |b| (0 when both are zero)."""
    d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    m = float(b.double().abs().max()) if b.numel() else 0.0
    return d / m if m > 0 else d


def check_end_to_end(name, tmp, threads, steps=10):
    print(f"reference.py end to end: {name}")
    ckpt = os.path.join(tmp, name)
    cfg, state, tokens = make_fixture.make_fixture(ckpt, make_fixture.PRESETS[name], seed=1,
                                                   bias=make_fixture.PRESET_BIAS[name],
                                                   batch_size=2, seq=16)
    o32, log32 = run_reference(ckpt, os.path.join(ckpt, "out32.safetensors"), "float32",
                               threads, steps)
    o64, _ = run_reference(ckpt, os.path.join(ckpt, "out64.safetensors"), "float64",
                           threads, steps)
    for line in log32.strip().splitlines():
        print("    " + line)

    B, T, V = tokens.shape[0], tokens.shape[1] - 1, cfg["vocab_size"]
    specs = moe_ref.param_specs(cfg)
    trainable = {n: s for n, s, init in specs if init != "bias"}
    expect = {"logits": [B, T, V], "loss": [1], "ce": [1], "step_losses": [steps]}
    M = cfg["num_nextn_predict_layers"]
    if M > 0:
        expect["mtp_ce"] = [M]
        expect.update({f"mtp_logits.{k}": [B, T - 1 - k, V] for k in range(M)})
    expect.update({"grad." + n: s for n, s in trainable.items()})
    expect.update({"final." + n: s for n, s, _ in specs})
    got = {k: list(v.shape) for k, v in o32.items()}
    check(got == expect and all(v.dtype == torch.float32 for v in o32.values()),
          f"{len(expect)} tensors with the expected names, shapes and dtype F32")
    check(float(o32["step_losses"][0]) == float(o32["loss"][0]), "step_losses[0] == loss")
    check(float(o32["step_losses"][-1]) < float(o32["step_losses"][0]),
          f"loss decreases: {float(o32['step_losses'][0]):.4f} -> "
          f"{float(o32['step_losses'][-1]):.4f}")

    rate = cfg["bias_update_rate"]
    for n, _, init in specs:
        if init != "bias":
            continue
        delta = (o64["final." + n].double() - state[n].double()) / (rate if rate > 0 else 1)
        ok = (torch.all((delta - delta.round()).abs() < 1e-3) and
              float(delta.abs().max()) <= steps + 1e-3) if rate > 0 else float(delta.abs().max()) == 0
        moved = int((delta.round() != 0).sum())
        if rate > 0:
            check(bool(ok), f"{n}: changes by whole multiples of bias_update_rate={rate}, at most "
                            f"{steps} of them ({moved} of {delta.numel()} entries moved)")
        else:
            check(bool(ok), f"{n}: unchanged (bias_update_rate = 0)")
        break

    if cfg["capacity_factor"] > 0:
        dropped = sum(int(w.split("=")[1]) for w in log32.split() if w.startswith("dropped="))
        check(dropped > 0, f"capacity_factor {cfg['capacity_factor']}: {dropped} slots dropped "
                           f"at the initial weights (all MoE layers)")

    # float32 against float64
    d_logits = max([rel(o32["logits"], o64["logits"])] +
                   [rel(o32[f"mtp_logits.{k}"], o64[f"mtp_logits.{k}"]) for k in range(M)])
    d_loss = abs(float(o32["loss"][0]) - float(o64["loss"][0]))
    d_grad = max(rel(o32["grad." + n], o64["grad." + n]) for n in trainable)
    d_steps = float((o32["step_losses"] - o64["step_losses"]).abs().max())
    d_final = max(rel(o32["final." + n] - state[n], o64["final." + n] - state[n])
                  for n in trainable)
    print(f"    float32 vs float64: logits {d_logits:.1e} (relative to max), loss {d_loss:.1e}, "
          f"grads {d_grad:.1e} (worst tensor, relative to its max), step_losses {d_steps:.1e}, "
          f"parameter updates {d_final:.1e}")
    check(d_logits < 1e-5 and d_loss < 1e-5 and d_grad < 1e-3 and d_steps < 1e-3,
          "float32 agrees with float64 (logits 1e-5, loss 1e-5, grads 1e-3, step_losses 1e-3)")
    return log32


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", help="write the fixtures and outputs here and keep them")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        os.makedirs(tmp, exist_ok=True)
        check_safetensors(tmp)

        configs = {name: moe_ref.make_config(c) for name, c in make_fixture.PRESETS.items()}
        # Large balancing coefficients, so their gradients are not hidden under cross-entropy.
        configs["deepseek+big_aux"] = moe_ref.make_config(dict(
            make_fixture.PRESETS["deepseek"], aux_loss_alpha=1.0, seq_aux_alpha=1.0,
            z_loss_coef=0.5, tie_word_embeddings=False))
        configs["mixtral+big_aux"] = moe_ref.make_config(dict(
            make_fixture.PRESETS["mixtral"], aux_loss_alpha=1.0, seq_aux_alpha=1.0,
            z_loss_coef=0.5, norm_topk_prob=True, capacity_factor=1.25))
        # One expert per group (a group's score is its only choice), the limit at its tightest.
        configs["groups+single"] = moe_ref.make_config(dict(
            make_fixture.PRESETS["groups"], n_group=16, topk_group=4, aux_loss_alpha=1.0,
            seq_aux_alpha=1.0))
        # MLA with a direct q_proj (q_lora_rank null) and tied embeddings, one MTP module.
        configs["mla_mtp+direct_q"] = moe_ref.make_config(dict(
            make_fixture.PRESETS["mla_mtp"], q_lora_rank=None, tie_word_embeddings=True,
            num_nextn_predict_layers=1, aux_loss_alpha=1.0, z_loss_coef=0.5))
        configs["capacity"]["capacity_factor"] = 1.0
        for name in list(make_fixture.PRESETS) + ["mla_mtp+direct_q"]:
            check_dense_parts(name, configs[name], seed=4)
        for name in ("mla_mtp", "mla_mtp+direct_q"):
            check_mtp(name, configs[name], seed=6)
        for name, cfg in configs.items():
            dropped = check_moe_layer(name, cfg, seed=3)
            if cfg["capacity_factor"] > 0:
                check(dropped > 0, f"capacity {cfg['capacity_factor']} drops slots "
                                   f"({dropped} of {3 * 8 * cfg['num_experts_per_tok']})")
        for name, cfg in configs.items():
            check_finite_differences(name, cfg, seed=5)
        for name in make_fixture.PRESETS:
            check_end_to_end(name, tmp, args.threads)

    if FAILURES:
        print(f"selfcheck: {len(FAILURES)} FAILED")
        for f in FAILURES:
            print("  " + f)
        return 1
    print("selfcheck: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
