"""Benchmark: this Muon's step against stock torch.optim.Muon, the trace recorder's overhead, and the
wall time of the default digits comparison.

    python bench/optimizer_overhead.py [--threads 1] [--repeats 7] [--steps 500] [--chars-steps 150]
                                       [--default-comparison]

1. Muon step time on the matrix parameters of both built-in benchmarks (digits MLP: 256x64 and
   256x256; character transformer: eight 64x64 attention matrices, 256x64 and 64x256 MLP
   matrices), with the same fixed gradients: ``diagnostics.optimizers.Muon`` (fp32
   Newton-Schulz) against ``torch.optim.Muon`` (Newton-Schulz in bf16). Target: ratio >= 1.
2. The recorder's overhead at its default interval: the same training loop (same seed, same
   batches) run with and without a :class:`TraceRecorder`, for AdamW and Muon on both
   benchmarks, routed and tracked as the default comparison does (scope hidden_only);
   overhead = extra time / time without. Target: <= 10 %.
3. With --default-comparison: the wall time of the page's and CLI's default digits comparison
   (every default optimizer x the default learning-rate sweep x the default seeds), the cost a
   user pays for one press of Run. Target: a few minutes on 2 cores.

Medians over the repeats, all in this one process; OMP_NUM_THREADS and torch's thread count are
set from --threads before torch is imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_time(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=500, help="digits training steps per timed loop (part 2)")
    parser.add_argument("--chars-steps", type=int, default=150, help="character-transformer steps per timed loop")
    parser.add_argument("--default-comparison", action="store_true",
                        help="also time the default digits comparison once (minutes)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)

    import torch

    from diagnostics import optimizer_traces as ot
    from diagnostics.optimizers import Muon, build
    from diagnostics.trace_recorder import TraceRecorder

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}, "
          f"medians of {args.repeats}")

    print("\n1. Muon step time on the benchmarks' matrices (ms per step; ratio = stock / this)")
    shapes = {"digits": [(256, 64), (256, 256)],
              "chars": [(64, 64)] * 8 + [(256, 64), (64, 256)] * 2}
    for bench, bench_shapes in shapes.items():
        gen = torch.Generator().manual_seed(0)
        weights = [torch.randn(s, generator=gen) * 0.05 for s in bench_shapes]
        grads = [torch.randn(s, generator=gen) for s in bench_shapes]
        times = {}
        for label, cls in (("this Muon (fp32)", Muon), ("torch.optim.Muon (bf16)", torch.optim.Muon)):
            params = [torch.nn.Parameter(w.clone()) for w in weights]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt = cls(params, lr=0.02, weight_decay=0.0)
            opt.step()  # warm-up: allocates the momentum buffers
            times[label] = median_time(lambda: [opt.step() for _ in range(20)], args.repeats) / 20
        mine, stock = times["this Muon (fp32)"], times["torch.optim.Muon (bf16)"]
        print(f"  {bench:7s} {len(bench_shapes):2d} matrices: this {1e3 * mine:7.3f} ms, stock {1e3 * stock:7.3f} ms, "
              f"ratio {stock / mine:5.2f}x {'(target >= 1: met)' if stock >= mine else '(target >= 1: MISSED)'}")

    scope = ot.DEFAULTS["scopes"][0]
    print(f"\n2. Recorder overhead at the default interval (every={ot.DEFAULTS['every']}, "
          f"alpha_every={ot.DEFAULTS['alpha_every']}, plus the initial alphas; scope {scope})")
    for bench_name, steps in (("digits", args.steps), ("chars", args.chars_steps)):
        bench = ot.benchmark(bench_name)
        for opt_name in ("adamw", "muon"):
            def loop(record: bool) -> None:
                torch.manual_seed(0)
                model = bench.build_model()
                opt, _ = build(opt_name, model, scope=scope, head=bench.head, input_layers=bench.input_layers)
                rec = None
                if record:
                    # The matrices the benchmarks' runs track: those a matrix optimizer takes.
                    names = ot.tracked_matrices(bench, model, [scope])
                    rec = TraceRecorder(model, opt, every=ot.DEFAULTS["every"], alpha_every=ot.DEFAULTS["alpha_every"],
                                        matrices=names)
                batches = bench.batches(torch.Generator().manual_seed(1))
                for _ in range(steps):
                    x, y = next(batches)
                    loss = bench.loss(model, x, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if rec is not None:
                        rec.log_loss(loss.detach())
                if rec is not None:
                    rec.close()

            loop(True)  # warm-up
            pairs = []
            for _ in range(args.repeats):
                plain = median_time(lambda: loop(False), 1)
                recorded = median_time(lambda: loop(True), 1)
                pairs.append((plain, recorded))
            plain = statistics.median(p for p, _ in pairs)
            recorded = statistics.median(r for _, r in pairs)
            overhead = (recorded - plain) / plain
            print(f"  {bench_name:7s} {opt_name:6s} {steps} steps: {1e3 * plain / steps:7.3f} ms a step plain, "
                  f"{1e3 * recorded / steps:7.3f} ms recorded: overhead {100 * overhead:5.1f} % "
                  f"{'(target <= 10 %: met)' if overhead <= 0.10 else '(target <= 10 %: MISSED)'}")

    if args.default_comparison:
        params = ot.check_params({})
        runs = len(ot.plan(params))
        print(f"\n3. The default digits comparison: {runs} runs ({len(params['optimizers'])} optimizers x "
              f"{len(params['lr_scales'])} rates x {params['seeds']} seeds) of {params['steps']} steps, "
              f"scope {', '.join(params['scopes'])}")
        start = time.perf_counter()
        result = ot.run(params)
        wall = time.perf_counter() - start
        print(f"  wall time {wall:.0f} s ({wall / 60:.1f} min; load average {os.getloadavg()[0]:.2f}) "
              f"{'(target <= 5 min: met)' if wall <= 300 else '(target <= 5 min: MISSED)'}")
        print("  " + ot.protocol_text(result))
        table = result.compare()[["name", "lr", "test_loss_at_best_val", "test_loss_at_best_val_lo",
                                  "test_loss_at_best_val_hi", "test_loss_ratio_to_adamw"]]
        print("  " + table.to_string(index=False, float_format=lambda x: f"{x:.4g}").replace("\n", "\n  "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
