"""Micro-benchmark: the cost of one inference thinking step with and without the context cache.

For a TransformerPP (default dim 256, depth 4, heads 4), context 512 tokens, candidate 64 tokens,
batch 4, with continuous candidates (batch, 64, dim) embedded by a Linear and an EnergyHead:

  (a) cached:   candidate tokens against the cached context keys/values, then grad w.r.t. the candidate
  (b) uncached: the whole [context ; candidate] sequence under context_candidate_mask, then grad
  (c) reference: forward + backward of the same model on the candidate tokens alone (no context)

Each step is autograd.grad(energy.sum(), candidate) with no create_graph (inference thinking).
The three are timed round-robin (so machine noise hits them alike) after a warm-up; the table
reports median wall time and the ratios a/c (target <= 1.5) and b/c.

    python evaluation/think_step_cost.py --threads 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from ebt_forecast.nn import EnergyHead, TransformerConfig, TransformerPP, context_candidate_mask


def build(args) -> tuple[nn.Module, TransformerPP, nn.Linear, EnergyHead]:
    torch.manual_seed(0)
    backbone = TransformerPP(TransformerConfig(dim=args.dim, depth=args.depth, heads=args.heads,
                                               ffn_multiplier=args.ffn_multiplier))
    embed = nn.Linear(args.dim, args.dim)
    head = EnergyHead(args.dim)
    model = nn.ModuleDict({"backbone": backbone, "embed": embed, "head": head}).eval()
    return model, backbone, embed, head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn-multiplier", type=float, default=2.0)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--candidate", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=30, help="timed rounds of (a) and (c)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--uncached-every", type=int, default=3, help="time (b) in every n-th round only")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop timing after this (at least --min-repeats rounds)")
    p.add_argument("--min-repeats", type=int, default=6)
    p.add_argument("--json", type=str, default=None, help="also write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, backbone, embed, head = build(args)
    params = sum(t.numel() for t in model.parameters())
    backbone_params = sum(t.numel() for t in backbone.parameters())
    b, lc, lq, d = args.batch, args.context, args.candidate, args.dim
    g = torch.Generator().manual_seed(0)
    context_tokens = torch.randn(b, lc, d, generator=g)
    candidate = torch.randn(b, lq, d, generator=g)
    ctx_pos, cand_pos = torch.arange(lc), torch.arange(lc, lc + lq)
    all_pos = torch.arange(lc + lq)
    full_mask = context_candidate_mask(lc, lq)
    with torch.no_grad():  # encoded once per window, outside the thinking loop
        _, cache = backbone.encode_context(context_tokens, ctx_pos)

    def step_cached():
        x = candidate.detach().requires_grad_(True)
        e = head(backbone.forward_with_context(embed(x), cand_pos, cache))
        return torch.autograd.grad(e.sum(), x)[0]

    def step_uncached():
        x = candidate.detach().requires_grad_(True)
        h = backbone(torch.cat([context_tokens, embed(x)], dim=1), all_pos, full_mask)[:, lc:]
        return torch.autograd.grad(head(h).sum(), x)[0]

    def step_alone():
        x = candidate.detach().requires_grad_(True)
        e = head(backbone(embed(x), torch.arange(lq)))
        return torch.autograd.grad(e.sum(), x)[0]

    # the cached and uncached steps compute the same gradient
    ga, gb = step_cached(), step_uncached()
    max_diff = float((ga - gb).abs().max())
    assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-4), f"cached and uncached gradients differ by {max_diff}"

    steps = {"a_cached": step_cached, "b_uncached": step_uncached, "c_candidate_only": step_alone}
    times: dict[str, list[float]] = {k: [] for k in steps}
    start = time.perf_counter()
    rounds = 0
    for r in range(args.warmup + args.repeats):
        timed = r >= args.warmup
        for name, fn in steps.items():
            # (b) is several times dearer than (a) and (c): time it every `uncached_every` rounds
            if name == "b_uncached" and timed and (r - args.warmup) % args.uncached_every:
                continue
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if timed:
                times[name].append(dt)
        rounds += timed
        if timed and rounds >= args.min_repeats and time.perf_counter() - start > args.max_seconds:
            break  # keep the whole run short on a loaded machine
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio_a = med["a_cached"] / med["c_candidate_only"]
    ratio_b = med["b_uncached"] / med["c_candidate_only"]

    setup = (f"TransformerPP dim={d} depth={args.depth} heads={args.heads} ffn={args.ffn_multiplier}x "
             f"({backbone_params:,} backbone params, {params:,} with candidate Linear + EnergyHead); "
             f"batch={b}, context={lc} tokens, candidate={lq} tokens; torch {torch.__version__}, "
             f"threads={torch.get_num_threads()}, {platform.machine()}; medians of {len(times['a_cached'])} (a), "
             f"{len(times['b_uncached'])} (b), {len(times['c_candidate_only'])} (c) interleaved runs after "
             f"{args.warmup} warm-up rounds; cached-vs-uncached grad max diff {max_diff:.1e}")
    rows = [
        ("(a) cached context: candidate fwd + grad", med["a_cached"], ratio_a),
        ("(b) no cache: [context ; candidate] fwd + grad", med["b_uncached"], ratio_b),
        ("(c) candidate alone (no context): fwd + grad", med["c_candidate_only"], 1.0),
    ]
    print(setup)
    print()
    print("| step | median ms | / (c) |")
    print("|---|---:|---:|")
    for label, t, ratio in rows:
        print(f"| {label} | {t * 1e3:.1f} | {ratio:.2f} |")
    print()
    verdict = "meets" if ratio_a <= 1.5 else "misses"
    print(f"a/c = {ratio_a:.2f} ({verdict} the <= 1.5 target), b/c = {ratio_b:.2f}, b/a = {med['b_uncached'] / med['a_cached']:.1f}")

    if args.json:
        out = {
            "config": {"dim": d, "depth": args.depth, "heads": args.heads, "ffn_multiplier": args.ffn_multiplier,
                       "backbone_params": backbone_params, "total_params": params, "batch": b,
                       "context_tokens": lc, "candidate_tokens": lq, "threads": torch.get_num_threads(),
                       "repeats": {k: len(v) for k, v in times.items()}, "warmup": args.warmup, "torch": torch.__version__},
            "median_s": med,
            "all_s": times,
            "ratio_a_over_c": ratio_a,
            "ratio_b_over_c": ratio_b,
            "target_a_over_c": 1.5,
            "meets_target": ratio_a <= 1.5,
            "cached_vs_uncached_grad_max_diff": max_diff,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
