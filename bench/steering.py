"""Benchmark: cylindrical steering analysis of 30 triples at one layer of SmolLM2, with forward passes per second.

    python bench/steering.py [--threads 2] [--repeats 3] [--concept dogs]

Times ``diagnostics.steering.run`` with its defaults (activations of all blocks, geometry,
baselines, the strength x penalty grid, per-triple strengths, neutral-text corruption, greedy
generations and the layer sweep) on the built-in concept's first 40 triples, of which 30 are
fitted and 10 held out, with no activation cache (each repeat reads them anew). The model load is
timed apart (it is not part of the analysis). Target: the analysis under 60 s.

Beside it, the two shortcuts that make it fast, each against the plain way, in this run:
activations of all blocks from one batched pass with hooks against one pass per text with
``output_hidden_states``, and next-token concept scores from a cached prompt prefix (one token per
steering vector) against a full forward pass per vector. Medians over the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concept", default="dogs")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)

    import torch

    from diagnostics import steering, steering_data
    from models import load

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    handle = load("builtin:smollm2")
    model, tokenizer = handle.module(), handle.tokenizer()
    print(f"model load (not part of the analysis): {time.perf_counter() - t0:.1f} s")

    triples = steering_data.builtin_triples(args.concept)[:40]
    totals, acts, steer, results = [], [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = steering.run(handle, {"concept": args.concept}, triples)
        totals.append(time.perf_counter() - start)
        acts.append(result.work["activation_s"])
        steer.append(result.work["steering_s"])
        results.append(result)
    r = results[-1]
    w = r.work
    total = statistics.median(totals)
    print(f"\nanalysis of {r.n_fit} fitted + {r.n_heldout} held-out triples at block {r.layer} of {r.n_layers} "
          f"(median of {args.repeats}): {total:.1f} s {'(target < 60 s: met)' if total < 60 else '(target < 60 s: MISSED)'}")
    print(f"  activations: {statistics.median(acts):.1f} s, {w['activation_passes']} batched passes, "
          f"{w['activation_tokens']:,} tokens, {w['activation_tokens'] / statistics.median(acts):.0f} tokens/s")
    print(f"  steering:    {statistics.median(steer):.1f} s, {w['steering_passes']} forward passes, {w['steering_tokens']:,} "
          f"tokens: {w['steering_passes'] / statistics.median(steer):.1f} passes/s, "
          f"{w['steering_tokens'] / statistics.median(steer):.0f} tokens/s")
    axis = [g for g in r.grid if g["p"] == 1.0]
    print("  concept gain along the axis (p = 1), nats: "
          + ", ".join(f"s={g['s']:g}: {g['concept_gain']:+.2f} (corruption {g['corruption']:.2f})" for g in axis))

    # Shortcut 1: hooks on all blocks in batched passes vs output_hidden_states one text at a time.
    texts = []
    for t in triples[:4]:
        p = steering.prompt_ids(tokenizer, t["prompt"], r.params["template"])
        texts += [p + tokenizer.encode(t[k], add_special_tokens=False) for k in ("positive", "negative")]
    with torch.no_grad():
        def plain():
            for ids in texts:
                model(input_ids=torch.tensor([ids]), output_hidden_states=True)

        def ours():
            steering.activations(model, tokenizer, triples[:4], position="mean", template=r.params["template"],
                                 batch_size=16)

        plain_t = statistics.median(_time(plain) for _ in range(args.repeats))
        ours_t = statistics.median(_time(ours) for _ in range(args.repeats))
    print(f"\nactivations of 8 texts: one pass per text with output_hidden_states {plain_t:.2f} s, "
          f"batched hooks {ours_t:.2f} s: ratio {plain_t / ours_t:.1f}x")

    # Shortcut 2: concept scores with a cached prefix vs a full forward pass per steering vector.
    block = steering.decoder_blocks(model)[r.layer]
    scorer = steering.Scorer(model, block, [t["ids"][0] for t in r.concept["tokens"]], 16)
    prompt = steering.prompt_ids(tokenizer, triples[0]["prompt"], r.params["template"])
    vectors = torch.randn(32, model.config.hidden_size) * r.mean_norm
    with torch.no_grad():
        def full():
            for v in vectors[:8]:
                with steering.steering_hook(block, v, "from_last"):
                    model(input_ids=torch.tensor([prompt]))

        full_t = statistics.median(_time(full) for _ in range(args.repeats)) / 8
        cached_t = statistics.median(_time(lambda: scorer.concept_scores(prompt, vectors)) for _ in range(args.repeats)) / 32
    print(f"concept score per steering vector: full forward {1e3 * full_t:.1f} ms, cached prefix {1e3 * cached_t:.1f} ms: "
          f"ratio {full_t / cached_t:.1f}x")
    return 0


def _time(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
