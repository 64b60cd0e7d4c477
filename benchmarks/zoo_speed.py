"""Zoo training throughput for the 2,464-parameter tiny CNN on MNIST-5k: models per second, measured fairly.

Modes: one-by-one (1 process, 1 thread), all cores (a pool of N single-threaded worker processes, forked
after the data are loaded, as the zoo builder does), batched vmap (`train_models_batched`, 1 process x
1 thread on the CPU; on CUDA when available).

Each run of a mode is a fresh process (cold: imports, data, allocator), the modes alternate and rotate
their order over the repeats (so none always runs first or last), and the table reports min and median
over repeats, next to the machine's measured bounds (matmul GFLOP/s, copy GB/s) and, for all cores, the
ideal of N x one-by-one. An earlier version ran the one-by-one baseline first and cold in the parent while
the forked workers inherited a warm parent: it reported 2.12x for 2 processes where order-controlled cold
runs measure about 1.8-1.95x.

    python benchmarks/zoo_speed.py [--models 8] [--epochs 5] [--repeats 3] [--gpu-models 1024] [--out speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MODES = ("one-by-one", "all-cores", "batched-vmap")


# ------------------------------------------------------------------------------------ one mode, in a child
def _one(args: tuple[int, int]) -> tuple[float, float]:
    """Test accuracy and CPU seconds of one model."""
    from igpg_hf.zoo.training import HyperParams, train_model

    i, epochs = args
    cpu = time.process_time()
    acc = train_model(_spec(), "mnist", HyperParams(seed=i, lr=3e-3, epochs=epochs), [epochs])[-1][2][
        "test_acc"
    ]
    return acc, time.process_time() - cpu


def _spec():
    from igpg_hf.zoo import architecture_for_task

    return architecture_for_task("mnist", "tiny_cnn")


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_mode(mode: str, n: int, epochs: int, procs: int, device: str) -> dict:
    """Train ``n`` models in ``mode`` in this process; seconds count training only (data loaded before)."""
    import multiprocessing as mp

    import torch

    from igpg_hf.zoo import load_task_data
    from igpg_hf.zoo.training import HyperParams, train_models_batched

    torch.set_num_threads(1)
    assert _spec().num_parameters() == 2464, _spec().num_parameters()
    data = load_task_data("mnist")  # loaded before the clock (and before forking workers)
    if device == "cuda":
        train_models_batched(
            _spec(), data, [HyperParams(seed=i, epochs=1) for i in range(8)], [1], device="cuda"
        )
        torch.cuda.synchronize()
    t, cpu = time.perf_counter(), time.process_time()
    if mode == "one-by-one":
        res = [_one((i, epochs)) for i in range(n)]
    elif mode == "all-cores":
        with mp.get_context("fork").Pool(procs, initializer=_init_worker) as pool:
            res = list(pool.imap_unordered(_one, [(i, epochs) for i in range(n)]))
    elif mode == "batched-vmap":
        hps = [HyperParams(seed=i, lr=3e-3, epochs=epochs) for i in range(n)]
        out = train_models_batched(_spec(), data, hps, [epochs], device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        per = (time.process_time() - cpu) / n
        res = [(r[-1][2]["test_acc"], per) for r in out if r]
    else:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "models": n,
        "cpu_seconds": sum(c for _, c in res),
        "mean_test_acc": sum(a for a, _ in res) / len(res),
    }


# ------------------------------------------------------------------------------------ driver
def _child(mode: str, args, device: str, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--device", device, "--models", str(n)]
    cmd += ["--epochs", str(args.epochs), "--procs", str(args.procs)]
    t = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_seconds"] = time.perf_counter() - t  # imports and data loading included
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=8, help="models per CPU mode")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process runs of every mode")
    ap.add_argument("--gpu-models", type=int, default=1024, help="models in the CUDA vmap batch")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, args.models, args.epochs, args.procs, args.device)))
        return

    import torch

    from igpg_hf.evaluation.hardware import measure_machine_bounds

    bounds = measure_machine_bounds(threads=tuple(sorted({1, args.procs})))
    runs = [(m, "cpu", args.models) for m in args.modes.split(",")]
    if torch.cuda.is_available():
        runs.append(("batched-vmap", "cuda", args.gpu_models))
    times: dict[tuple[str, str], list[dict]] = {(m, d): [] for m, d, _ in runs}
    for r in range(args.repeats):
        order = runs[r % len(runs) :] + runs[: r % len(runs)]  # rotate: each mode runs first equally often
        for mode, device, n in order:
            times[(mode, device)].append(
                _child(mode, args, device, n) | {"load_avg_before": os.getloadavg()[0]}
            )
    rows = []
    for (mode, device), rs in times.items():
        secs = [x["seconds"] for x in rs]
        n = rs[0]["models"]
        rows.append(
            {
                "mode": mode,
                "device": device,
                "layout": {"all-cores": f"{args.procs} processes x 1 thread"}.get(
                    mode, "1 process x 1 thread"
                ),
                "models": n,
                "repeats": len(rs),
                "min_seconds": min(secs),
                "median_seconds": statistics.median(secs),
                "models_per_second": n / min(secs),
                "median_models_per_second": n / statistics.median(secs),
                "median_process_seconds": statistics.median(x["process_seconds"] for x in rs),
                "cpu_seconds": statistics.median(x["cpu_seconds"] for x in rs),
                "mean_test_acc": statistics.mean(x["mean_test_acc"] for x in rs),
                "load_avg_max": max(x["load_avg_before"] for x in rs),
            }
        )
    base = next((r for r in rows if r["mode"] == "one-by-one"), None)
    for r in rows:
        if base:
            r["speedup_vs_one_by_one"] = r["models_per_second"] / base["models_per_second"]
            r["median_speedup_vs_one_by_one"] = (
                r["median_models_per_second"] / base["median_models_per_second"]
            )
        if base and r["mode"] == "all-cores":
            r["share_of_ideal"] = r["speedup_vs_one_by_one"] / args.procs  # ideal: N x one-by-one

    print(
        f"tiny CNN (2,464 params), MNIST-5k (4,000 train), {args.epochs} epochs, batch 64, Adam; {args.repeats} "
        f"fresh-process runs per mode, order rotated; {os.cpu_count()} CPU cores, torch {torch.__version__}"
    )
    gf = ", ".join(f"{k} thread(s) {v:.0f}" for k, v in bounds.matmul_gflops.items())
    print(
        f"machine bounds: fp32 matmul GFLOP/s {gf}; copy {bounds.copy_gb_s:.1f} GB/s; trivial op "
        f"{bounds.op_latency_us:.1f} us (load average {bounds.load_average:.1f})"
    )
    head = (
        f"{'mode':<14}{'device':<7}{'layout':<27}{'models':>7}{'min s':>8}{'median s':>9}{'models/s':>9}"
        f"{'speedup':>8}{'median':>8}{'ideal':>7}{'cpu s':>7}{'load':>6}{'acc':>7}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        ideal = f"{r['share_of_ideal']:.0%}" if "share_of_ideal" in r else ""
        print(
            f"{r['mode']:<14}{r['device']:<7}{r['layout'][:26]:<27}{r['models']:>7}{r['min_seconds']:>8.2f}"
            f"{r['median_seconds']:>9.2f}{r['models_per_second']:>9.3f}{r.get('speedup_vs_one_by_one', 0):>7.2f}x"
            f"{r.get('median_speedup_vs_one_by_one', 0):>7.2f}x{ideal:>7}{r['cpu_seconds']:>7.1f}"
            f"{r['load_avg_max']:>6.1f}{r['mean_test_acc']:>7.3f}"
        )
    if max(r["load_avg_max"] for r in rows) > 0.5:
        print("note: other processes were running (load average above); CPU speedups are pessimistic")
    if args.out:
        meta = {
            "epochs": args.epochs,
            "repeats": args.repeats,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "bounds": bounds.to_dict(),
        }
        from igpg_hf.files import atomic_write_json

        atomic_write_json(args.out, {"config": meta, "results": rows})


if __name__ == "__main__":
    main()
