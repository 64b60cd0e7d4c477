"""`igpg-hf`: build zoos, train tokenizer and prior, generate weights, run the demo and the benchmark.

Each command builds a config and calls one library function; only this module prints.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Instruction-guided neural-network weight generation (IGPG) on the Hugging Face stack.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
zoo_app = typer.Typer(help="Build and ingest model zoos (weight corpora).", no_args_is_help=True)
corpus_app = typer.Typer(help="Inspect and publish weight corpora.", no_args_is_help=True)
train_app = typer.Typer(help="Train the tokenizer (VQ-VAE) and the prior (GPT-2).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
app.add_typer(corpus_app, name="corpus")
app.add_typer(train_app, name="train")
# a log file or pipe gets the full table (rich would fold it to 80 columns)
console = Console(width=None if sys.stdout.isatty() else 150)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress of the library at INFO level.")]


def _setup(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _fail(e: Exception) -> None:
    console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


# --------------------------------------------------------------------------------------- listings
@app.command("tasks")
def tasks_cmd(held_out: Annotated[bool, typer.Option(help="Only the held-out tasks.")] = False) -> None:
    """List the registered tasks with their instructions (held-out ones are never in the default zoo)."""
    from .zoo.tasks import get_task, list_tasks

    table = Table("task", "classes", "input", "held out", "instruction")
    for n in list_tasks(held_out=True if held_out else None):
        t = get_task(n)
        table.add_row(
            n,
            str(t.num_classes),
            "x".join(map(str, t.input_shape)),
            "yes" if t.held_out else "",
            t.instruction,
        )
    console.print(table)


@app.command("architectures")
def architectures_cmd() -> None:
    """List architecture presets with parameter counts and their text descriptions."""
    from .zoo.architectures import get_architecture, list_architectures

    table = Table("preset", "parameters", "description")
    for n in list_architectures():
        s = get_architecture(n)
        table.add_row(n, f"{s.num_parameters():,}", s.text())
    console.print(table)


# --------------------------------------------------------------------------------------- zoo
@zoo_app.command("build")
def zoo_build(
    out: Annotated[Path, typer.Option(help="Output corpus folder (an existing one is resumed).")],
    preset: Annotated[
        str, typer.Option(help="tiny | demo | default | related | finetuned | gpu")
    ] = "default",
    workers: Annotated[int | None, typer.Option(help="Worker processes on CPU (default: all cores).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    verbose: Verbose = False,
) -> None:
    """Train a model zoo over a hyperparameter grid and store its checkpoints as a corpus (resumable)."""
    _setup(verbose)
    from .zoo.builder import ZooConfig, build_zoo

    try:
        corpus = build_zoo(ZooConfig.from_preset(preset), out, num_workers=workers, device=device)
    except ValueError as e:
        _fail(e)
    stats = json.loads((out / "build_stats.json").read_text()) if (out / "build_stats.json").exists() else {}
    _print_summary(corpus.summary())
    if stats:
        console.print(
            f"trained {stats.get('runs_trained', stats.get('runs', '?'))} runs, "
            f"{stats.get('checkpoints', '?')} checkpoints in {stats.get('seconds', 0):.0f} s "
            f"({stats.get('models_per_second', 0):.2f} models/s)"
        )


@zoo_app.command("ingest")
def zoo_ingest(
    folder: Annotated[
        Path, typer.Argument(help="Folder of .safetensors/.pt state dicts with metadata.json.")
    ],
    out: Annotated[Path, typer.Option(help="Output corpus folder.")],
    metadata_file: Annotated[str, typer.Option(help="Metadata file inside FOLDER.")] = "metadata.json",
    verbose: Verbose = False,
) -> None:
    """Turn a folder of existing checkpoints into a corpus (bit-exact)."""
    _setup(verbose)
    from .corpus import ingest_folder

    try:
        corpus = ingest_folder(folder, out, metadata_file=metadata_file)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    _print_summary(corpus.summary())


def _print_summary(summary: dict) -> None:
    # the corpus stores accuracies as fractions (None when not recorded); show percent
    fmt = lambda x: "n/a" if x is None else f"{100 * x:.1f}"  # noqa: E731
    table = Table("task", "checkpoints", "mean test acc %", "min", "max")
    for task, s in sorted(summary.get("tasks", {}).items()):
        table.add_row(
            task, str(s.get("checkpoints")), fmt(s.get("mean")), fmt(s.get("min")), fmt(s.get("max"))
        )
    console.print(table)
    console.print({k: v for k, v in summary.items() if k != "tasks"})


# --------------------------------------------------------------------------------------- corpus
@corpus_app.command("info")
def corpus_info(
    path: Annotated[str, typer.Argument(help="Local corpus folder or Hub dataset repo id.")],
    streaming: Annotated[
        bool, typer.Option(help="Stream rows instead of loading (counts by iterating).")
    ] = False,
) -> None:
    """Summarize a corpus: checkpoints, tasks, architectures, accuracies."""
    _setup(False)
    from .corpus import WeightCorpus

    try:
        corpus = WeightCorpus.load(path, streaming=streaming)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    if streaming:
        n = sum(1 for _ in corpus)
        console.print(f"streamed {n} checkpoints from {path}")
    else:
        _print_summary(corpus.summary())


@corpus_app.command("push")
def corpus_push(
    path: Annotated[Path, typer.Argument(help="Local corpus folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub dataset repo id, e.g. user/mnist-zoo.")],
    private: bool = False,
) -> None:
    """Upload a corpus folder (parquet shards + dataset card) to the Hugging Face Hub."""
    _setup(False)
    from .corpus import WeightCorpus

    console.print(WeightCorpus.load(str(path)).push_to_hub(repo_id, private=private))


# --------------------------------------------------------------------------------------- train
@train_app.command("tokenizer")
def train_tokenizer_cmd(
    corpus: Annotated[str, typer.Option(help="Corpus folder or Hub repo id.")],
    out: Annotated[Path, typer.Option(help="Run folder (resumed if it holds a checkpoint).")],
    preset: Annotated[str, typer.Option(help="IGPGVQVAEConfig preset: tiny | demo | base")] = "demo",
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-3,
    normalization: Annotated[str, typer.Option(help="layer | delta | none")] = "layer",
    quantizer: Annotated[str, typer.Option(help="gumbel | vq | fsq")] = "gumbel",
    streaming: bool = False,
    verbose: Verbose = False,
) -> None:
    """Train the VQ-VAE tokenizer over chunks of the corpus's weights (accelerate; resumable)."""
    _setup(verbose)
    from .configuration_igpg import IGPGVQVAEConfig
    from .corpus import WeightCorpus
    from .training import TokenizerTrainingArgs, train_tokenizer

    try:
        cfg = IGPGVQVAEConfig.from_preset(preset, normalization=normalization, quantizer=quantizer)
        model = train_tokenizer(
            WeightCorpus.load(corpus, streaming=streaming),
            cfg,
            out,
            TokenizerTrainingArgs(steps=steps, batch_size=batch_size, lr=lr),
        )
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    console.print(
        f"tokenizer saved to {out / 'final'} ({sum(p.numel() for p in model.parameters()):,} parameters)"
    )


@train_app.command("prior")
def train_prior_cmd(
    corpus: Annotated[str, typer.Option(help="Corpus folder or Hub repo id.")],
    tokenizer: Annotated[Path, typer.Option(help="Trained tokenizer folder (…/final).")],
    out: Annotated[Path, typer.Option(help="Run folder (resumed if it holds a checkpoint).")],
    preset: Annotated[str, typer.Option(help="IGPGPriorConfig preset: tiny | demo | small | paper")] = "demo",
    steps: int = 1000,
    batch_size: int = 16,
    lr: float = 2e-3,
    pipeline_out: Annotated[Path | None, typer.Option(help="Also save the whole pipeline here.")] = None,
    streaming: bool = False,
    verbose: Verbose = False,
) -> None:
    """Train the conditioned GPT-2 prior on the corpus's token sequences (accelerate; resumable)."""
    _setup(verbose)
    from .conditioning import load_text_encoder
    from .configuration_igpg import IGPGPriorConfig
    from .corpus import WeightCorpus
    from .modeling_vqvae import IGPGVQVAEModel
    from .pipeline_igpg import IGPGPipeline
    from .training import PriorTrainingArgs, train_prior

    try:
        vq = IGPGVQVAEModel.from_pretrained(tokenizer)
        checkpoints = list(WeightCorpus.load(corpus, streaming=streaming))
        longest = max(vq.num_tokens(c.layout) for c in checkpoints)
        n_pos = max(IGPGPriorConfig.PRESETS[preset]["n_positions"], min(longest + 4, 1024))
        cfg = IGPGPriorConfig.from_preset(
            preset,
            vocab_size=vq.config.vocab_size,
            tokens_per_chunk=vq.config.tokens_per_chunk,
            n_positions=n_pos,
        )
        enc, tok = load_text_encoder()
        prior = train_prior(
            checkpoints, vq, enc, tok, cfg, out, PriorTrainingArgs(steps=steps, batch_size=batch_size, lr=lr)
        )
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    if pipeline_out:
        IGPGPipeline(vqvae=vq, prior=prior, text_encoder=enc, tokenizer=tok).save_pretrained(pipeline_out)
        console.print(f"pipeline saved to {pipeline_out}")
    console.print(f"prior saved to {out / 'final'}")


# --------------------------------------------------------------------------------------- generate
@app.command("generate")
def generate_cmd(
    instruction: Annotated[
        str, typer.Argument(help="What the network should do, e.g. 'Classify handwritten digits'.")
    ],
    pipeline: Annotated[str, typer.Option(help="Pipeline folder or Hub repo id.")] = "demo_out/pipeline",
    architecture: Annotated[
        str, typer.Option(help="Preset name (see `igpg-hf architectures`) or a JSON spec.")
    ] = "tiny_cnn",
    dataset: Annotated[
        str | None, typer.Option(help="Registered task whose samples condition the prior.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output .safetensors (sample i>0 gets a -i suffix).")] = Path(
        "model.safetensors"
    ),
    num_samples: int = 1,
    seed: int = 0,
    temperature: float = 0.8,
    top_k: int | None = None,
    evaluate: Annotated[
        str | None, typer.Option(help="Report test accuracy on this registered task.")
    ] = None,
    align_labels: Annotated[
        bool,
        typer.Option(
            help="Reorder output units to fit labelled samples of --dataset "
            "(or --alignment-task); kept only where significant."
        ),
    ] = False,
    alignment_task: Annotated[
        str | None,
        typer.Option(help="Registered task whose samples decide --align-labels (default: --dataset)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch threads (default: $IGPG_NUM_THREADS, else 1: one generation is small work, and more "
            "threads beside another busy process made it several times slower).",
        ),
    ] = None,
) -> None:
    """Generate weights for an architecture from an instruction and save them as safetensors."""
    _setup(False)
    import torch
    from diffusers.utils import logging as diffusers_logging
    from safetensors.torch import save_file

    from .pipeline_igpg import IGPGPipeline
    from .sampling import THREADS_ENV, generation_num_threads

    try:
        threads = threads or generation_num_threads(0.0)  # $IGPG_NUM_THREADS, else 1
    except ValueError as e:
        _fail(e)
    os.environ[THREADS_ENV] = str(threads)  # the sampler's setting too
    torch.set_num_threads(threads)
    diffusers_logging.disable_progress_bar()
    try:
        pipe = IGPGPipeline.from_pretrained(pipeline)
        pipe.set_progress_bar_config(disable=True)
        res = pipe(
            instruction,
            architecture=architecture,
            dataset=dataset,
            num_samples=num_samples,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            align_labels=align_labels,
            alignment_samples=alignment_task,
        )
    except (ValueError, TypeError, OSError) as e:
        _fail(e)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, sd in enumerate(res.state_dicts):
        path = out if i == 0 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        tmp = path.with_name(path.name + ".tmp")
        save_file(
            {k: v.contiguous() for k, v in sd.items()},
            str(tmp),
            metadata={"instruction": instruction, "architecture": architecture},
        )
        os.replace(tmp, path)
        msg = f"wrote {path}"
        if evaluate:
            from .evaluation.metrics import evaluate_state_dicts
            from .zoo.architectures import get_architecture

            msg += f"  test accuracy on {evaluate}: {evaluate_state_dicts(get_architecture(architecture), [sd], evaluate)[0]:.1f} %"
        if res.label_alignments:
            a = res.label_alignments[i]
            msg += (
                f"  labels reordered (support accuracy {a.accuracy_before:.0f} -> {a.accuracy_after:.0f} %)"
                if a.applied
                else "  labels kept in order"
            )
        console.print(msg)
    console.print(f"generated {len(res.state_dicts)} model(s) in {res.seconds:.2f} s")


@app.command("push")
def push_cmd(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline folder.")],
    repo_id: Annotated[str, typer.Argument(help="Hub model repo id (without a namespace: yours).")],
    private: bool = False,
) -> None:
    """Upload a saved pipeline folder as it is (components, model_index.json, model card); it must load first."""
    _setup(False)
    from .hub import push_pipeline_folder

    try:
        commit = push_pipeline_folder(pipeline, repo_id, private=private)
    except (ValueError, OSError) as e:
        _fail(e)
    console.print(f"pushed {pipeline} to {commit.repo_url.repo_id}: {commit}")


# --------------------------------------------------------------------------------------- demo
@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Output folder (rerunning resumes).")] = Path("demo_out"),
    preset: Annotated[str, typer.Option(help="demo (about 10 min on 2 cores) | smoke (seconds)")] = "demo",
    verbose: Verbose = False,
) -> None:
    """End to end, offline: build a zoo, train tokenizer and prior, generate per task, compare with zoo and random init."""
    _setup(verbose)
    from .evaluation.demo import DemoConfig, run_demo

    try:
        res = run_demo(out, DemoConfig.from_preset(preset))
    except ValueError as e:
        _fail(e)
    table = Table(
        "task",
        "zoo mean",
        "recon",
        "generated mean",
        "best",
        "gen/zoo",
        "random init",
        "copies",
        "new-only mean",
        "new/zoo",
        "new novelty",
        title="generated weights vs the zoo (test accuracy %, no fine-tuning)",
    )
    for task, r in res["tasks"].items():
        n = len(r["generated_acc"])
        new = (
            [
                f"{r['new_only_mean_acc']:.1f}",
                f"{r['new_only_over_zoo']:.3f}",
                f"{statistics.median(r['new_only_novelty']):.3f}",
            ]
            if "new_only_acc" in r
            else ["-"] * 3
        )
        table.add_row(
            task,
            f"{r['zoo_mean_acc']:.1f}",
            f"{r['recon_acc']:.1f}",
            f"{r['generated_mean_acc']:.1f}",
            f"{r['generated_best_acc']:.1f}",
            f"{r['generated_over_zoo']:.3f}",
            f"{r['random_init_acc']:.1f}",
            f"{r['copies']}/{n}"
            + (f" ({r['copies_of_other_tasks']} of other tasks)" if r["copies_of_other_tasks"] else ""),
            *new,
        )
    console.print(table)
    s = res["summary"]
    if s["total_copies"]:
        console.print(
            f"[yellow]{s['total_copies']} of {s['total_samples']} samples are token-for-token copies of "
            "training checkpoints: on those, the generator is retrieving, not generating.[/]"
        )
    if "new_only_working" in s:
        console.print(
            f"new-only sampling (copies excluded): {s['new_only_working']} of {s['total_samples']} samples reach "
            f"90 % of their zoo's mean; their mean novelty is {s['new_only_mean_novelty']:.3f} (for scale: adjacent "
            f"epochs of one training run {s['adjacent_epochs_novelty']:.3f}, a copy 0)"
        )
    console.print(
        f"generate 1 model: {res['generate_seconds_one']:.2f} s; 100 models: {res['generate_seconds_100']:.2f} s"
    )
    console.print(
        f"total {res['timings']['total_seconds']:.0f} s; results in {out / 'results.json'}, plot {out / 'results.png'}, "
        f"pipeline {out / 'pipeline'}"
    )


# --------------------------------------------------------------------------------------- bench
@app.command("bench")
def bench_cmd(
    out: Annotated[
        Path, typer.Option(help="Output folder: report.md, results.json, plots (rerunning resumes).")
    ] = Path("bench_out"),
    preset: Annotated[
        str, typer.Option(help="smoke (about a minute) | default (README figures, < 1 h on 2 cores) | gpu")
    ] = "default",
    pipeline: Annotated[
        str | None, typer.Option(help="Reuse a trained pipeline for the seen tasks (with --corpus).")
    ] = None,
    corpus: Annotated[
        str | None, typer.Option(help="The corpus that --pipeline was trained on, e.g. demo_out/zoo.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes for zoo training and fine-tuning (default: the preset's).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads in the main process (default: torch's).")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Benchmark: seen and unseen tasks, unseen architectures, tokenizer fidelity, novelty, speed (paper Tables 1, 3; Figs. 2, 3)."""
    _setup(verbose)
    from .evaluation.benchmark import BenchConfig, run_benchmark

    try:
        changes = {k: v for k, v in (("workers", workers), ("threads", threads)) if v is not None}
        res = run_benchmark(out, BenchConfig.from_preset(preset, **changes), pipeline=pipeline, corpus=corpus)
    except ValueError as e:
        _fail(e)
    seen, nov = res["seen"], res["novelty"]
    console.print(
        f"seen tasks: generated / zoo at epoch 0 = {seen['mean_generated_over_zoo']:.3f} "
        f"({'meets' if seen['meets_95_percent_of_zoo'] else 'misses'} the 0.95 target)"
    )
    for kind, v in res["unseen"]["zoos"].items():
        for task, r in v["tasks"].items():
            h = r["head_start"]
            console.print(
                f"unseen {task} ({kind}): step {h['step']}: generated {h['generated']:.1f}, random init "
                f"{h['random_init']:.1f}, best retrieval {h['best_retrieval']:.1f}"
            )
            if "head_start_aligned" in r:
                a = r["head_start_aligned"]
                console.print(
                    f"  label-aligned: step {a['step']}: generated {a['generated']:.1f}, random init "
                    f"{a['random_init']:.1f}, best retrieval (aligned or not) {a['best_retrieval']:.1f}"
                )
    console.print(
        f"copies of training checkpoints: {nov['seen']['copies']}/{nov['seen']['models']} (seen tasks)"
    )
    console.print(
        f"total {res['timings']['total_seconds']:.0f} s; report {out / 'report.md'}, results {out / 'results.json'}"
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
