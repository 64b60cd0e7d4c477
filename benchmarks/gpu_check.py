"""The CUDA paths of a trained pipeline: generation on CPU and GPU, model CPU offload, label alignment on GPU.

    python benchmarks/gpu_check.py --pipeline demo_out/pipeline --out gpu_check.json

Prints and writes (JSON) for each device: seconds to generate 1 and N models (after one warm-up call),
how many samples are copies of training checkpoints, and mean test accuracy of the first 10 on the
task; then the same call under ``enable_model_cpu_offload()`` (which devices the components sit on
after it), and a label-aligned call for a held-out label permutation. ``--pipeline`` is a saved
pipeline, or a folder holding only ``prior/`` and ``vqvae/`` (the packaged text encoder is loaded).
Needs a CUDA device for the GPU rows; on a CPU-only machine it measures the CPU rows and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from igpg_hf import IGPGPipeline, IGPGPriorModel, IGPGVQVAEModel, get_task
from igpg_hf.conditioning import load_text_encoder
from igpg_hf.evaluation.metrics import evaluate_state_dicts
from igpg_hf.zoo import get_architecture


def load(path: str) -> IGPGPipeline:
    p = Path(path)
    if (p / "model_index.json").exists():
        return IGPGPipeline.from_pretrained(p)
    enc, tok = load_text_encoder()
    return IGPGPipeline(
        vqvae=IGPGVQVAEModel.from_pretrained(p / "vqvae"),
        prior=IGPGPriorModel.from_pretrained(p / "prior"),
        text_encoder=enc,
        tokenizer=tok,
    )


def timed(pipe: IGPGPipeline, n: int, task: str, spec, sync: bool, **kw) -> tuple[float, object]:
    if sync:
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = pipe(
        get_task(task).instruction, architecture=spec, dataset=task, num_samples=n, seed=0, top_p=0.9, **kw
    )
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--pipeline", default="demo_out/pipeline", help="saved pipeline, or a folder with prior/ and vqvae/"
    )
    ap.add_argument("--task", default="mnist", help="a task the pipeline was trained on")
    ap.add_argument("--held-out", default="mnist_permute4", help="a label-permuted task it never saw")
    ap.add_argument("--architecture", default="tiny_cnn")
    ap.add_argument("--num-models", type=int, default=100)
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()

    spec = get_architecture(args.architecture)
    pipe = load(args.pipeline)
    res: dict = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "pipeline": args.pipeline,
        "task": args.task,
        "devices": {},
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        pipe.to(dev)
        sync = dev == "cuda"
        timed(pipe, 1, args.task, spec, sync)  # warm-up: kernels, caches
        t1, _ = timed(pipe, 1, args.task, spec, sync)
        tn, out = timed(pipe, args.num_models, args.task, spec, sync)
        acc = evaluate_state_dicts(
            spec, [{k: v.cpu() for k, v in sd.items()} for sd in out.state_dicts[:10]], args.task
        )
        row = {
            "generate_1_seconds": t1,
            f"generate_{args.num_models}_seconds": tn,
            "seconds_per_model": tn / args.num_models,
            "copies": sum(out.is_copy) if out.is_copy is not None else None,
            "mean_accuracy_first_10": sum(acc) / len(acc),
            "state_dict_device": str(next(iter(out.state_dicts[0].values())).device),
        }
        if sync:
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["devices"][dev] = row
        print(dev, json.dumps(row))
    if torch.cuda.is_available():
        pipe.to("cpu")
        pipe.enable_model_cpu_offload()
        t, out = timed(pipe, 10, args.task, spec, True)
        acc = evaluate_state_dicts(
            spec, [{k: v.cpu() for k, v in sd.items()} for sd in out.state_dicts], args.task
        )
        res["cpu_offload"] = {
            "generate_10_seconds": t,
            "mean_accuracy": sum(acc) / len(acc),
            "component_devices_after": {
                n: str(getattr(pipe, n).device) for n in ("text_encoder", "prior", "vqvae")
            },
        }
        print("offload", json.dumps(res["cpu_offload"]))
        pipe.to("cuda")  # turns offload off
    dev = devices[-1]
    t, out = timed(pipe, 10, args.held_out, spec, dev == "cuda", align_labels=True)
    acc = evaluate_state_dicts(
        spec, [{k: v.cpu() for k, v in sd.items()} for sd in out.state_dicts], args.held_out
    )
    plain = evaluate_state_dicts(
        spec,
        [
            {k: v.cpu() for k, v in sd.items()}
            for sd in timed(pipe, 10, args.held_out, spec, dev == "cuda")[1].state_dicts
        ],
        args.held_out,
    )
    res["label_alignment"] = {
        "device": dev,
        "task": args.held_out,
        "seconds_10": t,
        "applied": sum(a.applied for a in out.label_alignments),
        "mean_accuracy_aligned": sum(acc) / len(acc),
        "mean_accuracy_plain": sum(plain) / len(plain),
    }
    print("label alignment", json.dumps(res["label_alignment"]))
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
