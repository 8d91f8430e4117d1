"""Benchmark: steering 30 triples of SmolLM2 with the default grid and nulls, against the 3-minute target.

    python bench/steering.py [--threads 2] [--repeats 1] [--concept dogs]

Times ``diagnostics.steering.run`` with its defaults on the built-in concept's first 30 triples
(22 fitted, 8 held out and steered): activations of every block for the concept and its control
set, geometry with bootstrap intervals, then on every held-out prompt the unsteered row, the
self-steering grid, one random direction of the same norm per steered vector (the null) and the
four directions at every strength, each scored in a teacher-forced window and by a 32-token greedy
continuation, and the perplexity of neutral text under every distinct vector. The model load is
timed apart (it is not part of the analysis). Target: under 180 s on this 2-core machine.

Beside it, in this run, the two batched paths against the plain way on one held-out prompt and a
few vectors: the window score (one packed pass with a 4-D mask over every slot and every form's
prefixes, after the cached prompt) against one full pass per (slot, form), and the continuation
(the rows of one prompt decoded together from their cached prompt) against ``generate`` one row
at a time. Medians over the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_S = 180.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--concept", default="dogs")
    parser.add_argument("--rows", type=int, default=4, help="vectors in the batched-vs-plain comparison")
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

    triples = steering_data.builtin_triples(args.concept)[:30]
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = steering.run(handle, {"concept": args.concept}, triples)
        runs.append((time.perf_counter() - start, result))
    total = statistics.median(t for t, _ in runs)
    r = runs[-1][1]
    w = r.work
    p = r.params
    print(f"\n{r.n_fit} fitted + {r.n_heldout} held-out triples, block {r.layer} ({p['hook']}), strengths "
          f"{p['strengths']} x penalties {p['penalties']}, {p['null_draws']} null draw(s): {w['steered_rows']} steered "
          f"rows, {w['unique_vectors']} distinct vectors")
    print(f"analysis (median of {args.repeats}): {total:.1f} s = {total / TARGET_S:.2f} x the {TARGET_S:.0f} s target "
          f"({'met' if total <= TARGET_S else 'MISSED'})")
    parts = {"activations (concept + control)": w["activation_s"], "steered prompts (prefill, window, continuation)":
             w["generation_s"], "neutral-text perplexity": w["perplexity_s"]}
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<48} {seconds:6.1f} s  {seconds / total:5.0%}")
    print(f"  steering: {w['steering_passes']} passes, {w['steering_tokens']:,} tokens, "
          f"{w['steering_tokens'] / max(w['steering_s'], 1e-9):.0f} tokens/s; window block {w['query_tokens_per_row']} "
          f"query tokens per row")
    print(f"verdict: {r.summary['verdict']}\n{r.summary['axis_gain']}")

    # The batched paths against the plain way, on the first held-out prompt.
    forms = steering.concept_forms(tokenizer, p["tokens"])
    blocks = steering.decoder_blocks(model)
    held = triples[int(r.self_steering[0]["index"])]
    prompt = steering.prompt_ids(tokenizer, held["prompt"], p["template"])
    window = steering.response_ids(tokenizer, held["negative"], p["template"])[:p["window"]]
    V = torch.randn(args.rows, r.hidden_size, generator=torch.Generator().manual_seed(0)) * r.unit_value * 4
    steerer = steering.Steerer(model, blocks[r.layer], forms, hook=p["hook"], tokens=p["steer_tokens"],
                               batch_size=p["batch_size"], eos_ids={tokenizer.eos_token_id})

    def batched():
        steerer.prompt_rows(prompt, window, V, p["gen_tokens"], 0.0, 0)

    def plain_window():
        with torch.no_grad():
            for v in V:
                with steering.steering_hook(blocks[r.layer], v, hook=p["hook"], tokens="all"):
                    for t in range(len(window)):
                        for f in forms.ids:
                            model(input_ids=torch.tensor([prompt + window[:t] + list(f)]), use_cache=False)

    def plain_generate():
        with torch.no_grad():
            for v in V:
                with steering.steering_hook(blocks[r.layer], v, hook=p["hook"], tokens="all"):
                    model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=p["gen_tokens"], min_new_tokens=p["gen_tokens"], do_sample=False,
                                   pad_token_id=tokenizer.eos_token_id)

    timings = {name: [] for name in ("batched", "plain window", "plain generate")}
    for _ in range(max(1, args.repeats)):
        for name, fn in (("batched", batched), ("plain window", plain_window), ("plain generate", plain_generate)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    ours = statistics.median(timings["batched"])
    plain = statistics.median(timings["plain window"]) + statistics.median(timings["plain generate"])
    print(f"\none prompt, {args.rows} vectors, window {len(window)} x {len(forms.ids)} forms + {p['gen_tokens']} tokens:")
    print(f"  batched (packed window + shared decoding): {ours:.2f} s")
    print(f"  plain (a pass per slot and form, generate per row): {plain:.2f} s "
          f"(window {statistics.median(timings['plain window']):.2f} s, generate "
          f"{statistics.median(timings['plain generate']):.2f} s)")
    print(f"  speed-up: {plain / ours:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
