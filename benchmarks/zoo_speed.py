"""Zoo training throughput for the 2,464-parameter tiny CNN on MNIST-5k: models per second.

Modes: one-by-one (1 process, 1 thread), all CPU cores (N processes x 1 thread), and batched vmap
(`train_models_batched`) on CUDA when available and always on the CPU (1 process x 1 thread: with more threads a
busy machine oversubscribes its cores, which made CPU vmap ~20x slower in one measurement).

    python benchmarks/zoo_speed.py [--models 8] [--epochs 5] [--gpu-models 1024] [--out speed.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time

import torch

from igpg_hf.zoo import architecture_for_task, load_task_data
from igpg_hf.zoo.training import HyperParams, train_model, train_models_batched

SPEC = architecture_for_task("mnist", "tiny_cnn")


def _hp(i: int, epochs: int) -> HyperParams:
    return HyperParams(seed=i, lr=3e-3, epochs=epochs)


def _one(args: tuple[int, int]) -> tuple[float, float]:
    """Test accuracy and CPU seconds of one model."""
    i, epochs = args
    cpu = time.process_time()
    acc = train_model(SPEC, "mnist", _hp(i, epochs), [epochs])[-1][2]["test_acc"]
    return acc, time.process_time() - cpu


def _init_worker() -> None:
    torch.set_num_threads(1)


def one_by_one(n: int, epochs: int) -> tuple[float, list[tuple[float, float]]]:
    t = time.perf_counter()
    res = [_one((i, epochs)) for i in range(n)]
    return time.perf_counter() - t, res


def all_cores(n: int, epochs: int, procs: int) -> tuple[float, list[tuple[float, float]]]:
    t = time.perf_counter()  # data are loaded before the fork, as the zoo builder's workers load theirs once
    with mp.get_context("fork").Pool(procs, initializer=_init_worker) as pool:
        accs = list(pool.imap_unordered(_one, [(i, epochs) for i in range(n)]))
    return time.perf_counter() - t, accs


def batched(n: int, epochs: int, device: str) -> tuple[float, list[tuple[float, float]]]:
    data = load_task_data("mnist")
    if device == "cuda":
        torch.cuda.synchronize()
    t, cpu = time.perf_counter(), time.process_time()
    out = train_models_batched(SPEC, data, [_hp(i, epochs) for i in range(n)], [epochs], device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    cpu = (time.process_time() - cpu) / n
    return time.perf_counter() - t, [(r[-1][2]["test_acc"], cpu) for r in out if r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=8, help="models per CPU mode")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--gpu-models", type=int, default=1024, help="models in the CUDA vmap batch")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    assert SPEC.num_parameters() == 2464, SPEC.num_parameters()
    load_task_data("mnist")  # warm the cache (and the forked workers' copy)
    rows = []

    def record(mode: str, device: str, layout: str, n: int, run) -> None:
        load = os.getloadavg()[0]
        seconds, res = run()  # res: (test accuracy, CPU seconds) per model
        rows.append(
            {
                "mode": mode,
                "device": device,
                "layout": layout,
                "models": n,
                "seconds": round(seconds, 2),
                "models_per_second": round(n / seconds, 3),
                "cpu_seconds": round(sum(c for _, c in res), 1),
                "load_avg_before": round(load, 2),
                "mean_test_acc": round(sum(a for a, _ in res) / len(res), 4),
            }
        )

    n, ep = args.models, args.epochs
    if torch.cuda.is_available():
        batched(8, 1, "cuda")  # warm-up (kernels, allocator)
        record(
            "batched-vmap",
            "cuda",
            torch.cuda.get_device_name(),
            args.gpu_models,
            lambda: batched(args.gpu_models, ep, "cuda"),
        )
    torch.set_num_threads(1)  # the CPU modes run on one thread per process
    record("one-by-one", "cpu", "1 process x 1 thread", n, lambda: one_by_one(n, ep))
    record("all-cores", "cpu", f"{args.procs} processes x 1 thread", n, lambda: all_cores(n, ep, args.procs))
    record("batched-vmap", "cpu", "1 process x 1 thread", n, lambda: batched(n, ep, "cpu"))
    base = next(r["models_per_second"] for r in rows if r["mode"] == "one-by-one")
    for r in rows:
        r["speedup_vs_one_by_one"] = round(r["models_per_second"] / base, 2)

    print(
        f"tiny CNN (2,464 params), MNIST-5k (4,000 train), {args.epochs} epochs, batch 64, Adam; "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}"
    )
    head = (
        f"{'mode':<14}{'device':<8}{'layout':<28}{'models':>7}{'seconds':>9}{'models/s':>10}{'speedup':>9}"
        f"{'cpu s':>8}{'load':>6}{'acc':>7}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['mode']:<14}{r['device']:<8}{r['layout'][:27]:<28}{r['models']:>7}{r['seconds']:>9.2f}"
            f"{r['models_per_second']:>10.3f}{r['speedup_vs_one_by_one']:>8.2f}x{r['cpu_seconds']:>8.1f}"
            f"{r['load_avg_before']:>6.1f}{r['mean_test_acc']:>7.3f}"
        )
    if max(r["load_avg_before"] for r in rows) > 0.5:
        print("note: other processes were running (load average above); CPU speedups are pessimistic")
    if args.out:
        meta = {
            "epochs": args.epochs,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"config": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
