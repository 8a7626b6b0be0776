#!/usr/bin/python3
"""Makes test inputs for reference.py without the C++ code: a checkpoint directory
(config.json + model.safetensors with random weights) and a batch of random tokens.

    /usr/bin/python3 tests/reference/make_fixture.py --preset deepseek --out DIR \
        [--config JSON_FILE_OR_TEXT] [--set key=value ...] [--seed 0] \
        [--bias normal:0.05 | --bias 0.1,-0.2,...] [--batch-size 2 --seq 16] [--batch FILE]

Weights follow the init rules of src/model/params.cpp: normal(0, initializer_range), o_proj and
every down_proj normal(0, initializer_range / sqrt(2 L)) (MTP blocks too; eh_proj
initializer_range), RMSNorm weights 1 (MLA latent norms and MTP norms too). The balancing
bias is zeros unless --bias gives it (the same values for every MoE layer, or normal draws).
The batch (default DIR/batch.safetensors) holds "tokens" I32 [B, T+1].
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_ref  # noqa: E402

_SMALL = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "head_dim": 8,
          "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
          "moe_intermediate_size": 16, "max_position_embeddings": 64}

PRESETS = {
    # (a) Mixtral-like: softmax top-2 of 8, no shared experts, GQA 4/2, every layer MoE.
    "mixtral": dict(_SMALL, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=0,
                    first_k_dense_replace=0, scoring_func="softmax"),
    # (b) DeepSeek-like: sigmoid top-4 of 16, one shared expert, first layer dense,
    #     normalized and scaled gates, every balancing term on (use with --bias).
    "deepseek": dict(_SMALL, num_hidden_layers=3, n_routed_experts=16, num_experts_per_tok=4,
                     n_shared_experts=1, first_k_dense_replace=1, scoring_func="sigmoid",
                     norm_topk_prob=True, routed_scaling_factor=2.5, aux_loss_alpha=0.01,
                     seq_aux_alpha=0.001, z_loss_coef=0.001, bias_update_rate=0.001,
                     tie_word_embeddings=True),
    # (c) capacity_factor 1.0: Mixtral-like routing with drops.
    "capacity": dict(_SMALL, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                     first_k_dense_replace=0, scoring_func="softmax", capacity_factor=1.0,
                     aux_loss_alpha=0.01),
    # (d) DeepSeek-V3 group-limited routing: sigmoid top-4 of 16 in 4 groups of 4, each token
    #     within its best 2 groups; every layer MoE, balancing bias (use with --bias).
    "groups": dict(_SMALL, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                   n_shared_experts=1, first_k_dense_replace=0, scoring_func="sigmoid",
                   norm_topk_prob=True, routed_scaling_factor=2.5, bias_update_rate=0.001),
    # (e) TeleChat3 / DeepSeek-V3 architecture: MLA with a compressed query (q_lora_rank) and
    #     decoupled RoPE, two sequential MTP modules (loss weight 0.3), group-limited sigmoid
    #     routing (16 experts in 4 groups, 2 per token, top-4) with scaled gates, a dense first
    #     layer, the sequence-wise balance loss and the balancing bias (use with --bias).
    "mla_mtp": dict(_SMALL, num_hidden_layers=2, num_key_value_heads=4, head_dim=4,
                    attention="mla", q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=6,
                    qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=16,
                    num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                    first_k_dense_replace=1, scoring_func="sigmoid", norm_topk_prob=True,
                    routed_scaling_factor=2.5, seq_aux_alpha=0.001, bias_update_rate=0.001,
                    num_nextn_predict_layers=2, mtp_loss_weight=0.3),
}
PRESET_BIAS = {"mixtral": None, "deepseek": "normal:0.05", "capacity": None,
               "groups": "normal:0.05", "mla_mtp": "normal:0.05"}


def parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def bias_fn(spec, E, seed):
    """None, 'normal:STD' (independent draws per layer) or 'v0,v1,...' (E values, every layer)."""
    if not spec:
        return None
    if spec.startswith("normal:"):
        std = float(spec.split(":", 1)[1])
        return lambda layer: torch.randn(E, generator=torch.Generator().manual_seed(
            seed * 1000 + 17 + layer)) * std
    values = [float(v) for v in spec.split(",")]
    if len(values) != E:
        raise SystemExit(f"[make_fixture] --bias has {len(values)} values, expected E = {E}")
    return lambda layer: torch.tensor(values)


def random_tokens(B, T, V, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, V, (B, T + 1), generator=gen, dtype=torch.int64).to(torch.int32)


def make_fixture(out_dir, cfg, seed=0, bias=None, batch_size=2, seq=16, batch_path=None):
    """Writes the checkpoint and the batch; returns (cfg, state, tokens)."""
    cfg = moe_ref.make_config(cfg, origin="make_fixture")
    state = moe_ref.init_state(cfg, seed, bias_fn(bias, cfg["n_routed_experts"], seed))
    moe_ref.save_checkpoint(out_dir, cfg, state)
    tokens = random_tokens(batch_size, seq, cfg["vocab_size"], seed)
    moe_ref.write_safetensors(batch_path or os.path.join(out_dir, "batch.safetensors"),
                              {"tokens": tokens})
    return cfg, state, tokens


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="start from a test config")
    ap.add_argument("--config", help="config JSON: a file or the JSON text itself")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config key (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bias", help="balancing bias: 'normal:STD' or E comma-separated values "
                                   "(default: the preset's, else zeros)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--batch", help="batch file to write (default DIR/batch.safetensors)")
    args = ap.parse_args(argv)

    cfg = dict(PRESETS[args.preset]) if args.preset else {}
    if args.config:
        text = args.config
        if not text.lstrip().startswith("{"):
            with open(text) as f:
                text = f.read()
        cfg.update(json.loads(text))
    for kv in args.set:
        k, _, v = kv.partition("=")
        cfg[k] = parse_value(v)
    bias = args.bias if args.bias is not None else PRESET_BIAS.get(args.preset)
    cfg, state, tokens = make_fixture(args.out, cfg, args.seed, bias, args.batch_size, args.seq,
                                      args.batch)
    n = sum(t.numel() for t in state.values())
    print(f"[make_fixture] {args.out}: {len(state)} tensors, {n} values; batch "
          f"{list(tokens.shape)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
