"""Speed measurements of generation, each against a measured bound (for the speed experiment and benchmarks).

Every comparison interleaves its modes over repeats (A B A B ...), so a machine that gets busier or quieter
during the run moves both alike, and reports min and median seconds. Figures measured beside other work
are pessimistic: the results carry the load average.

- `compare_sampling`: the decode loop against ``generate()`` and against a real no-cache decode (our loop
  recomputing the whole sequence each step: transformers turns ``use_cache=False`` back on for
  ``inputs_embeds``), tokens checked identical;
- `sampling_speed_summary`: those at 1 and 100 samples, with tokens/s against the weight-read bound
  (batch 1) and the FLOP bound (batch 100) of `measure_machine_bounds`;
- `busy_neighbour_slowdown`: how much slower a call gets beside one busy process;
- `generation_cost_by_size`: time, tokens/s and peak memory of sampling + decoding against parameter count.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..modeling_prior import IGPGConditions, IGPGPriorModel
from ..sampling import SamplingConfig, sample_weight_tokens, torch_threads
from .hardware import MachineBounds, measure_machine_bounds, peak_memory

__all__ = [
    "MODES",
    "compare_sampling",
    "sampling_speed_summary",
    "busy_neighbour_slowdown",
    "generation_cost_by_size",
    "prior_flops_per_token",
]

# sample_weight_tokens options of each mode
MODES: dict[str, dict[str, Any]] = {
    "loop": {},
    "generate": {"backend": "generate"},
    "no_cache": {"use_cache": False},
}


def _null_condition() -> IGPGConditions:
    return IGPGConditions(block_index=torch.zeros(1, dtype=torch.long))


def prior_flops_per_token(prior: IGPGPriorModel, context: int = 0) -> float:
    """Matrix-product FLOPs of one decode step per row: 2 x (block and head weights) + attention over ``context``."""
    cfg = prior.config
    weights = sum(
        p.numel() for n, p in prior.transformer.h.named_parameters() if n.endswith("weight") and p.ndim == 2
    )
    return 2.0 * (weights + prior.lm_head.weight.numel()) + 4.0 * cfg.n_layer * cfg.n_embd * context


def _stats(times: list[float]) -> dict[str, float]:
    return {"min_seconds": min(times), "median_seconds": statistics.median(times), "repeats": len(times)}


def compare_sampling(
    prior: IGPGPriorModel,
    num_tokens: int,
    num_samples: int,
    modes: Sequence[str] = ("loop", "generate"),
    repeats: int = 3,
    sampling: SamplingConfig | None = None,
    cond: IGPGConditions | None = None,
    num_threads: int | None = 1,
) -> dict[str, Any]:
    """Time ``sample_weight_tokens`` in each mode of ``MODES``, interleaved, from the same seeded stream.

    Returns {mode: {min_seconds, median_seconds, repeats, tokens_per_second (best), min/median_cpu_seconds (this
    process's CPU time: on a shared machine a steadier measure of the work than wall time)}, "tokens_identical": bool
    (every mode drew the same tokens), "num_tokens", "num_samples", "threads", "load_average"}.
    """
    cond = cond or _null_condition()
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, torch.Tensor] = {}
    load = os.getloadavg()[0]
    for _ in range(repeats):
        for m in modes:
            t, c = time.perf_counter(), time.process_time()
            out = sample_weight_tokens(
                prior,
                cond,
                num_tokens,
                num_samples,
                sampling,
                generator=torch.Generator().manual_seed(0),
                num_threads=num_threads,
                **MODES[m],
            )
            times[m].append(time.perf_counter() - t)
            cpu[m].append(time.process_time() - c)
            tokens.setdefault(m, out.tokens)
    res: dict[str, Any] = {}
    for m in modes:
        res[m] = _stats(times[m]) | {
            "tokens_per_second": num_tokens * num_samples / min(times[m]),
            "min_cpu_seconds": min(
                cpu[m]
            ),  # this process's CPU time: less moved by other jobs than wall time
            "median_cpu_seconds": statistics.median(cpu[m]),
        }
    first = tokens[modes[0]]
    res["tokens_identical"] = all(torch.equal(first, t) for t in tokens.values())
    res.update(
        num_tokens=num_tokens,
        num_samples=num_samples,
        threads=num_threads or torch.get_num_threads(),
        load_average=[load, os.getloadavg()[0]],
    )
    return res


def sampling_speed_summary(
    prior: IGPGPriorModel,
    num_tokens: int,
    samples: tuple[int, int] = (1, 100),
    repeats: int = 3,
    sampling: SamplingConfig | None = None,
    bounds: MachineBounds | None = None,
    num_threads: int = 1,
) -> dict[str, Any]:
    """The loop against ``generate()`` and against a no-cache decode at one and at many samples, with bounds.

    ``summary`` holds ``sampling_speedup_{n}`` (loop over generate(), same run), ``cache_speedup_{n}`` (cached
    over no-cache loop), ``loop_tokens_per_second_{n}``, and the loop's share of its bound: the weight-read bound
    (read bandwidth / weight bytes per step) at one sample, the FLOP bound (matmul GFLOP/s at ``num_threads``
    / FLOPs per token) at many.
    """
    weight_bytes = (
        4 * sum(p.numel() for p in prior.transformer.h.parameters()) + 4 * prior.lm_head.weight.numel()
    )
    bounds = bounds or measure_machine_bounds(threads=(num_threads,), read_bytes=weight_bytes)
    flops = prior_flops_per_token(prior, context=prior.config.num_prefix_tokens + num_tokens // 2)
    out: dict[str, Any] = {"bounds": bounds.to_dict(), "flops_per_token": flops, "weight_bytes": weight_bytes}
    summary: dict[str, Any] = {}
    with torch_threads(num_threads):
        for n in samples:
            modes = ("loop", "generate", "no_cache") if n == samples[0] else ("loop", "generate")
            r = compare_sampling(prior, num_tokens, n, modes, repeats, sampling, num_threads=num_threads)
            out[f"samples_{n}"] = r
            loop = r["loop"]["tokens_per_second"]
            summary[f"sampling_speedup_{n}"] = r["generate"]["min_seconds"] / r["loop"]["min_seconds"]
            summary[f"sampling_cpu_speedup_{n}"] = (
                r["generate"]["min_cpu_seconds"] / r["loop"]["min_cpu_seconds"]
            )
            summary[f"loop_tokens_per_second_{n}"] = loop
            summary[f"generate_tokens_per_second_{n}"] = r["generate"]["tokens_per_second"]
            if "no_cache" in r:
                summary[f"cache_speedup_{n}"] = r["no_cache"]["min_seconds"] / r["loop"]["min_seconds"]
            summary[f"tokens_identical_{n}"] = r["tokens_identical"]
    n1, nb = samples
    read_bound = bounds.read_gb_s * 1e9 / weight_bytes
    flop_bound = bounds.matmul_gflops[num_threads] * 1e9 / flops
    summary.update(
        weight_read_bound_tokens_per_second_1=read_bound,
        loop_share_of_read_bound_1=summary[f"loop_tokens_per_second_{n1}"] / read_bound,
        **{
            f"flop_bound_tokens_per_second_{nb}": flop_bound,
            f"loop_share_of_flop_bound_{nb}": summary[f"loop_tokens_per_second_{nb}"] / flop_bound,
        },
    )
    out["summary"] = summary
    return out


_BUSY = "while True: pass"


def busy_neighbour_slowdown(fn: Callable[[], Any], repeats: int = 3) -> dict[str, Any]:
    """Seconds of ``fn()`` on its own and beside one busy process (``python -c "while True: pass"``), alternated.

    Returns {quiet: stats, busy: stats, slowdown (median busy / median quiet), load_average}. "Quiet" means no
    process of ours competes; other work on the machine loads both alike.
    """
    fn()  # warm-up
    quiet, busy = [], []
    load = os.getloadavg()[0]
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        quiet.append(time.perf_counter() - t)
        hog = subprocess.Popen([sys.executable, "-c", _BUSY])
        try:
            time.sleep(0.2)  # let it reach the scheduler
            t = time.perf_counter()
            fn()
            busy.append(time.perf_counter() - t)
        finally:
            hog.kill()
            hog.wait()
    return {
        "quiet": _stats(quiet),
        "busy": _stats(busy),
        "slowdown": statistics.median(busy) / statistics.median(quiet),
        "load_average": [load, os.getloadavg()[0]],
    }


def generation_cost_by_size(
    prior: IGPGPriorModel,
    vqvae,
    architectures: Sequence[Any],
    num_samples: int = 1,
    sampling: SamplingConfig | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per architecture (preset name, spec dict or ArchSpec): parameters, tokens, sampling and decoding seconds,
    tokens/s and peak memory above the start (MB) of generating ``num_samples`` models with ``prior`` and
    ``vqvae``. Sizes the prior cannot produce (more blocks than ``max_blocks``) come back with ``skipped``.
    ``progress``: a bar over each model's tokens on a terminal."""
    from ..progress import progress_bar
    from ..weights import WeightLayout
    from ..zoo.architectures import get_architecture

    rows = []
    for arch in architectures:
        spec = get_architecture(arch)
        module = spec.build()
        layout = WeightLayout.from_module(module)
        n_tok = vqvae.num_tokens(layout)
        row: dict[str, Any] = {"architecture": spec.text(), "parameters": layout.num_float, "tokens": n_tok}
        pos = prior.weight_positions(layout) if prior.uses_structure else None

        def sample(n=n_tok, pos=pos, params=layout.num_float):
            with progress_bar(n * num_samples, f"sampling {params:,} parameters", progress) as bar:
                return sample_weight_tokens(
                    prior,
                    _null_condition(),
                    n,
                    num_samples,
                    sampling,
                    seed=0,
                    positions=pos,
                    progress=lambda k: bar.update(k * num_samples),
                )

        try:
            sampled, s_sec, s_mb, method = peak_memory(sample)
        except ValueError as e:  # more blocks than the prior can produce
            rows.append(row | {"skipped": str(e)})
            continue
        fill = module.state_dict()
        _, d_sec, d_mb, _ = peak_memory(
            lambda t=sampled.tokens, lay=layout, f=fill: vqvae.decode_batch(t, lay, fill=f)
        )
        rows.append(
            row
            | {
                "sampling_seconds": s_sec,
                "decode_seconds": d_sec,
                "seconds": s_sec + d_sec,
                "tokens_per_second": n_tok * num_samples / s_sec,
                "sampling_peak_mb": s_mb,
                "decode_peak_mb": d_mb,
                "peak_mb": max(s_mb, d_mb),
                "model_mb": 4 * layout.num_float / 2**20,
                "memory_method": method,
                "load_average": os.getloadavg()[0],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m igpg_hf.evaluation.speed_measures``: the issue-15 sampling figures, for a rerun on idle cores."""
    import argparse
    import json

    ap = argparse.ArgumentParser(
        description="Sampling speed of the decode loop vs generate(), against bounds."
    )
    ap.add_argument("--pipeline", help="a pipeline folder (default: a random prior of the 'demo' preset)")
    ap.add_argument("--tokens", type=int, default=164, help="tokens per model (164: the demo's tiny CNN)")
    ap.add_argument("--samples", default="1,100", help="the two batch sizes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--busy-repeats", type=int, default=5, help="0: skip the busy-neighbour measurement")
    ap.add_argument("--out", help="write everything as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.pipeline:
        from ..pipeline_igpg import IGPGPipeline

        prior = IGPGPipeline.from_pretrained(args.pipeline).prior.eval()
    else:
        from ..configuration_igpg import IGPGPriorConfig

        torch.manual_seed(0)
        # absolute positions: the loop is compared with transformers' generate(), which cannot embed token places
        prior = IGPGPriorModel(
            IGPGPriorConfig.from_preset("demo", vocab_size=512, position_scheme="absolute")
        ).eval()
    n1, nb = (int(x) for x in args.samples.split(","))
    res = sampling_speed_summary(prior, args.tokens, (n1, nb), args.repeats)
    if args.busy_repeats:
        res["busy_neighbour"] = busy_neighbour_slowdown(
            lambda: sample_weight_tokens(prior, _null_condition(), args.tokens, n1, seed=0), args.busy_repeats
        )
        res["summary"]["busy_neighbour_slowdown"] = res["busy_neighbour"]["slowdown"]
    res["summary"]["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(res["summary"], indent=1))
    if args.out:
        from ..files import atomic_write_json

        atomic_write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
