#!/usr/bin/python3
"""Writes the PyTorch ground truth for one checkpoint and one batch (DESIGN.md section 4).

    /usr/bin/python3 tests/reference/reference.py --checkpoint DIR --batch FILE --out FILE \
        [--steps 10] [--lr 1e-2 --beta1 0.9 --beta2 0.95 --eps 1e-8 --weight-decay 0.1] \
        [--threads 1] [--dtype float32|float64]

DIR holds config.json and model.safetensors (F32, HF names); FILE is a safetensors with
"tokens" I32 [B, T+1]. The output safetensors (all F32) holds:
    logits [B, T, V], loss [1], ce [1]       from the initial weights
    mtp_logits.<k> [B, T-1-k, V], mtp_ce [D] the MTP modules' (num_nextn_predict_layers = D > 0)
    grad.<name>                              gradient of loss at the initial weights, every
                                             trainable parameter (tied: embed_tokens only)
    step_losses [steps]                      loss before each AdamW step (step 0 == loss)
    final.<name>                             every parameter and balancing bias after the steps
"""

import argparse
import sys
import os

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_ref  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="dir with config.json, model.safetensors")
    ap.add_argument("--batch", required=True, help="safetensors with tokens I32 [B, T+1]")
    ap.add_argument("--out", required=True, help="output safetensors")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--quiet", action="store_true", help="no summary on stderr")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cfg, state = moe_ref.load_checkpoint(args.checkpoint)
    batch, _ = moe_ref.read_safetensors(args.batch)
    if "tokens" not in batch:
        raise SystemExit(f"[reference] {args.batch}: no tensor 'tokens' (have {list(batch)})")
    tokens = batch["tokens"]
    if tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.dtype not in (torch.int32, torch.int64):
        raise SystemExit(f"[reference] {args.batch}: tokens must be I32 [B, T+1], got "
                         f"{tokens.dtype} {list(tokens.shape)}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= cfg["vocab_size"]:
        raise SystemExit(f"[reference] tokens out of [0, {cfg['vocab_size']})")

    model = moe_ref.build_model(cfg, state, dtype)
    res = moe_ref.train(model, tokens, args.steps, lr=args.lr, beta1=args.beta1,
                        beta2=args.beta2, eps=args.eps, weight_decay=args.weight_decay)

    f32 = torch.float32
    out = {"logits": res["initial"]["logits"].to(f32),
           "loss": res["initial"]["loss"].reshape(1).to(f32),
           "ce": res["initial"]["ce"].reshape(1).to(f32)}
    if res["initial"]["mtp_ce"]:
        for k, lk in enumerate(res["initial"]["mtp_logits"]):
            out[f"mtp_logits.{k}"] = lk.to(f32)
        out["mtp_ce"] = torch.stack(res["initial"]["mtp_ce"]).to(f32)
    for name, g in res["grads"].items():
        out["grad." + name] = g.to(f32)
    out["step_losses"] = torch.tensor(res["step_losses"], dtype=torch.float64).to(f32)
    for name, t in moe_ref.full_state(model).items():
        out["final." + name] = t.to(f32)
    moe_ref.write_safetensors(args.out, out, metadata={
        "dtype": args.dtype, "steps": args.steps, "lr": args.lr, "beta1": args.beta1,
        "beta2": args.beta2, "eps": args.eps, "weight_decay": args.weight_decay,
        "torch": torch.__version__})

    if not args.quiet:
        ini = res["initial"]
        B, T = tokens.shape[0], tokens.shape[1] - 1
        mtp = "".join(f" mtp_ce[{k}]={float(c):.6f}" for k, c in enumerate(ini["mtp_ce"]))
        print(f"[reference] B={B} T={T} dtype={args.dtype} loss={float(ini['loss']):.6f} "
              f"ce={float(ini['ce']):.6f}{mtp}", file=sys.stderr)
        for i, st in enumerate(ini["moe"]):
            layer = cfg["first_k_dense_replace"] + i
            print(f"[reference] layer {layer} (MoE): load={st['load'].tolist()} dropped={st['dropped']} "
                  f"aux={float(st['aux_loss']):.3e} seq_aux={float(st['seq_aux_loss']):.3e} "
                  f"z={float(st['z_loss']):.3e}", file=sys.stderr)
        print("[reference] step_losses " + " ".join(f"{l:.5f}" for l in res["step_losses"]),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
