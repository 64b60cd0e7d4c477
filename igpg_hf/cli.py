"""`igpg-hf`: build zoos, train the VQ-VAE and the prior, generate weights, run the demo and the benchmark.

Each command builds the library's config and calls one library function; only this module prints. Options that
set a config come from that config's dataclass fields (`_config_options`): their CLI default is "unset", and the
value used is the config's own (or its preset's), so no default exists twice. Nothing heavy is imported before a
command runs (the option dataclasses live in torch-free modules).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
import re
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .evaluation.settings import GenerationSettings
from .training.args import DecoderTrainingArgs, PriorTrainingArgs, VQVAETrainingArgs
from .training.recipe import RECIPE_PRESETS, PipelineRecipe
from .training.zoo_presets import PRESETS as ZOO_PRESETS

app = typer.Typer(
    help="Instruction-guided neural-network weight generation (IGPG) on the Hugging Face stack.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
zoo_app = typer.Typer(help="Build and ingest model zoos (weight corpora).", no_args_is_help=True)
corpus_app = typer.Typer(help="Inspect and publish weight corpora.", no_args_is_help=True)
train_app = typer.Typer(
    help="Train a pipeline: the VQ-VAE (weights <-> tokens), then the prior (GPT-2), or both at once.",
    no_args_is_help=True,
)
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
    # datasets' own bars ("Generating train split") say nothing to a user; the library's progress bars stay
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "datasets" in sys.modules:  # already imported (a caller in the same process)
        sys.modules["datasets"].disable_progress_bars()


def _fail(e: Exception, flags: dict[str, str] | None = None) -> typing.NoReturn:
    """Print the error and exit with status 2. ``flags`` maps the library's keyword arguments that the message may
    name (``select_by='task_posterior'``, ``dataset=``) to this command's options, so that the user reads what to
    type (``--select-by task_posterior``, ``--dataset``)."""
    msg = str(e)
    for kw, flag in (flags or {}).items():
        msg = re.sub(
            rf"\b{kw}=(['\"]?)([\w.-]*)\1",
            lambda m, f=flag: f"{f} {m.group(2)}".removesuffix(" True").rstrip(),
            msg,
        )
        if "_" in kw:  # a bare keyword (``candidate_tasks nearest ...``); plain words such as "dataset" stay
            msg = re.sub(rf"(?<![\w-]){kw}\b", flag, msg)
    if flags:  # the CLI takes a registered task's name only
        msg = msg.replace(
            " (a (samples, labels) pair or a registered task name)", " (a registered task name)"
        )
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


# the pipeline's keyword arguments as `igpg-hf generate` options (for error messages)
_GENERATE_FLAGS = {
    "select_by": "--select-by",
    "candidate_tasks": "--candidate-tasks",
    "candidates_per_sample": "--candidates",
    "guidance_scale": "--guidance-scale",
    "match_known_task": "--match-known-task",
    "num_samples": "--num-samples",
    "alignment_samples": "--alignment-task",
    "align_labels": "--align-labels",
    "dataset": "--dataset",
    "architecture": "--architecture",
    "num_threads": "--threads",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "temperature": "--temperature",
}


# ------------------------------------------------------------------------------ options from config dataclasses
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def _simple_type(annotation: Any) -> type | None:
    """int, float, str or bool for a field annotation such as ``"int"`` or ``"float | None"``; else None."""
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, dict(_TYPES))  # the annotations of our own dataclasses
        except Exception:
            return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_args(annotation):
        annotation = args[0] if len(args) == 1 else None
    return annotation if annotation in (int, float, str, bool) else None


@dataclasses.dataclass(frozen=True)
class _Group:
    """Options for the simple fields of dataclass ``cls`` (``--{prefix}{field}``), collected into ``changes[key]``."""

    key: str
    cls: type
    prefix: str = ""
    only: tuple[str, ...] | None = None
    shown: Any = None  # an instance whose values the help shows as the default (e.g. the default preset's)


def _group_params(group: _Group) -> list[tuple[inspect.Parameter, str]]:
    out = []
    for f in dataclasses.fields(group.cls):
        tp = _simple_type(f.type)
        if tp is None or (group.only is not None and f.name not in group.only):
            continue
        name = f"{group.prefix}{f.name}"
        shown = getattr(group.shown, f.name) if group.shown is not None else f.default
        help_text = f"{group.cls.__name__}.{f.name} (default: " + (
            f"--preset's; demo: {shown!r})" if group.shown is not None else f"{shown!r})"
        )
        flag = name.replace("_", "-")
        decls = f"--{flag}/--no-{flag}" if tp is bool else f"--{flag}"
        option = typer.Option(decls, help=help_text, show_default=False)
        param = inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[tp | None, option]
        )
        out.append((param, f.name))
    return out


def _config_options(*groups: _Group) -> Callable:
    """Add an option per simple field of each group's dataclass to a command; it receives ``changes`` (group key
    -> {field: value}) holding only the options given, so every unset field keeps the config's own value."""

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "changes"]
        extra = [(g.key, p, field) for g in groups for p, field in _group_params(g)]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            changes: dict[str, dict[str, Any]] = {g.key: {} for g in groups}
            for key, param, field in extra:
                value = kwargs.pop(param.name)
                if value is not None:
                    changes[key][field] = value
            return fn(**kwargs, changes=changes)

        command.__signature__ = sig.replace(parameters=[*own, *(p for _, p, _ in extra)])
        return command

    return decorate


def _key_values(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """``["a=1", "b=[2, 3]", "c=fsq"]`` -> ``{"a": 1, "b": [2, 3], "c": "fsq"}`` (JSON values, else strings)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} takes FIELD=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _recipe(
    preset: str, changes: dict[str, dict[str, Any]], vqvae_config=None, prior_config=None
) -> PipelineRecipe:
    return PipelineRecipe.from_preset(preset).with_changes(
        changes.get("recipe"),
        changes.get("vqvae_training"),
        changes.get("prior_training"),
        _key_values(vqvae_config, "--vqvae-config"),
        _key_values(prior_config, "--prior-config"),
        changes.get("vqvae_decoder_training"),
    )


_DEMO_RECIPE = RECIPE_PRESETS["demo"]
RecipePreset = Annotated[
    str, typer.Option(help=f"Pipeline recipe (PipelineRecipe preset): {' | '.join(RECIPE_PRESETS)}.")
]
Corpus = Annotated[str, typer.Option(help="Corpus folder or Hub dataset repo id.")]
RunDir = Annotated[
    Path, typer.Option(help="Run folder: OUT/vqvae, OUT/prior (finished stages reused, killed ones resumed).")
]
VQVAEConfig = Annotated[
    list[str] | None,
    typer.Option(help="IGPGVQVAEConfig field change, FIELD=VALUE (repeatable), e.g. quantizer=fsq."),
]
PriorConfig = Annotated[
    list[str] | None,
    typer.Option(help="IGPGPriorConfig field change, FIELD=VALUE (repeatable), e.g. n_layer=6."),
]
_VQVAE_RECIPE = ("vqvae_preset", "align_checkpoints", "checkpoints", "runs_per_architecture")
_PRIOR_RECIPE = (
    "prior_preset",
    "text_encoder",
    "support_per_class",
    "n_positions",
    "max_n_positions",
    "align_checkpoints",
    "checkpoints",
    "runs_per_architecture",
    "prior_runs",
)


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
    preset: Annotated[str, typer.Option(help=f"ZooConfig preset: {' | '.join(ZOO_PRESETS)}.")] = "default",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="ZooConfig field change, FIELD=VALUE (repeatable), e.g. seeds=[0,1]."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes on CPU (default: all cores).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    verbose: Verbose = False,
) -> None:
    """Train a model zoo over a hyperparameter grid and store its checkpoints as a corpus (resumable)."""
    _setup(verbose)
    from .training.zoo_builder import ZooConfig, build_zoo, format_build_stats

    try:
        config = ZooConfig.from_preset(preset, **_key_values(set_, "--set"))
        corpus = build_zoo(config, out, num_workers=workers, device=device)
    except ValueError as e:
        _fail(e)
    _print_summary(corpus.summary())
    console.print(format_build_stats(corpus.build_stats))


@zoo_app.command("ingest")
def zoo_ingest(
    folder: Annotated[
        Path, typer.Argument(help="Folder of .safetensors/.pt state dicts with metadata.json.")
    ],
    out: Annotated[Path, typer.Option(help="Output corpus folder.")],
    metadata_file: Annotated[str, typer.Option(help="Metadata file inside FOLDER.")] = "metadata.json",
    on_error: Annotated[
        str,
        typer.Option(
            help="raise | skip: skip unreadable or non-finite checkpoints, listed in ingest_report.json"
        ),
    ] = "raise",
    verbose: Verbose = False,
) -> None:
    """Turn a folder of existing checkpoints into a corpus (bit-exact)."""
    _setup(verbose)
    from .corpus import ingest_folder

    try:
        corpus = ingest_folder(folder, out, metadata_file=metadata_file, on_error=on_error)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    _print_summary(corpus.summary())


def _print_summary(summary: dict) -> None:
    # the corpus stores accuracies as fractions (None when not recorded); people read percent
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
        console.print(f"streamed {sum(1 for _ in corpus)} checkpoints from {path}")
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
@train_app.command("vqvae")
@_config_options(
    _Group("recipe", PipelineRecipe, only=_VQVAE_RECIPE, shown=_DEMO_RECIPE),
    _Group("vqvae_training", VQVAETrainingArgs, shown=_DEMO_RECIPE.vqvae_training),
)
def train_vqvae_cmd(
    corpus: Corpus,
    out: RunDir,
    preset: RecipePreset = "demo",
    vqvae_config: VQVAEConfig = None,
    verbose: Verbose = False,
    changes: dict | None = None,
) -> None:
    """Train the VQ-VAE over chunks of the corpus's weights into OUT/vqvae (accelerate; resumable)."""
    _setup(verbose)
    from .training.pipeline import train_pipeline_vqvae

    try:
        model = train_pipeline_vqvae(corpus, _recipe(preset, changes, vqvae_config=vqvae_config), out)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    console.print(
        f"VQ-VAE ({model.config.quantizer}) saved to {out / 'vqvae' / 'final'} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters)"
    )


@train_app.command("prior")
@_config_options(
    _Group("recipe", PipelineRecipe, only=_PRIOR_RECIPE, shown=_DEMO_RECIPE),
    _Group("prior_training", PriorTrainingArgs, shown=_DEMO_RECIPE.prior_training),
)
def train_prior_cmd(
    corpus: Corpus,
    out: RunDir,
    vqvae: Annotated[
        Path | None,
        typer.Option(help="A trained VQ-VAE folder (default: OUT/vqvae/final, from `train vqvae`)."),
    ] = None,
    preset: RecipePreset = "demo",
    prior_config: PriorConfig = None,
    pipeline_out: Annotated[Path | None, typer.Option(help="Also save the whole pipeline here.")] = None,
    verbose: Verbose = False,
    changes: dict | None = None,
) -> None:
    """Train the conditioned GPT-2 prior on the corpus's token sequences into OUT/prior (accelerate; resumable)."""
    _setup(verbose)
    from .training.pipeline import train_pipeline

    vqvae = vqvae or out / "vqvae" / "final"
    if not (vqvae / "config.json").exists():
        _fail(ValueError(f"no trained VQ-VAE in {vqvae}: run `igpg-hf train vqvae` first or pass --vqvae"))
    try:
        pipe = train_pipeline(corpus, _recipe(preset, changes, prior_config=prior_config), out, vqvae=vqvae)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    if pipeline_out:
        pipe.save_pretrained(pipeline_out)
        console.print(f"pipeline saved to {pipeline_out}")
    console.print(f"prior saved to {out / 'prior' / 'final'} ({pipe.prior.num_parameters():,} parameters)")


@train_app.command("pipeline")
@_config_options(
    _Group("recipe", PipelineRecipe, shown=_DEMO_RECIPE),
    _Group("vqvae_training", VQVAETrainingArgs, prefix="vqvae_", shown=_DEMO_RECIPE.vqvae_training),
    _Group("prior_training", PriorTrainingArgs, prefix="prior_", shown=_DEMO_RECIPE.prior_training),
    _Group(
        "vqvae_decoder_training",
        DecoderTrainingArgs,
        prefix="decoder_",
        shown=_DEMO_RECIPE.vqvae_decoder_training,
    ),
)
def train_pipeline_cmd(
    corpus: Corpus,
    out: RunDir,
    preset: RecipePreset = "demo",
    vqvae_config: VQVAEConfig = None,
    prior_config: PriorConfig = None,
    verbose: Verbose = False,
    changes: dict | None = None,
) -> None:
    """Train VQ-VAE and prior on a corpus (`train_pipeline`) and save the pipeline to OUT/pipeline."""
    _setup(verbose)
    from .training.pipeline import train_pipeline

    try:
        pipe = train_pipeline(corpus, _recipe(preset, changes, vqvae_config, prior_config), out)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    pipe.save_pretrained(out / "pipeline")
    console.print(
        f"pipeline saved to {out / 'pipeline'} (VQ-VAE {pipe.vqvae.num_parameters():,}, prior "
        f"{pipe.prior.num_parameters():,} parameters)"
    )


# --------------------------------------------------------------------------------------- generate
@app.command("generate")
@_config_options(_Group("sampling", GenerationSettings, only=("temperature", "top_k", "top_p")))
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
    evaluate: Annotated[
        str | None, typer.Option(help="Report test accuracy on this registered task.")
    ] = None,
    align_labels: Annotated[
        bool,
        typer.Option(
            help="Reorder output units to fit labelled samples of --dataset (or --alignment-task); kept only "
            "where significant."
        ),
    ] = False,
    alignment_task: Annotated[
        str | None,
        typer.Option(help="Registered task whose samples decide --align-labels (default: --dataset)."),
    ] = None,
    match_known_task: Annotated[
        bool,
        typer.Option(
            help="Condition on the canonical instruction of the known task nearest to INSTRUCTION (by the prior's "
            "own text pooling) instead of INSTRUCTION itself: for wordings the prior was not trained on."
        ),
    ] = False,
    select_by: Annotated[
        str,
        typer.Option(
            help="'likelihood'; 'support_accuracy': draw candidates with and without the --dataset samples as "
            "condition and keep the most accurate on those samples; 'task_posterior' (no labels needed): keep the "
            "candidates the prior ties most to INSTRUCTION against the --candidate-tasks nearest other known tasks."
        ),
    ] = "likelihood",
    candidates: Annotated[int, typer.Option(min=1, help="Candidates drawn per sample and instruction.")] = 1,
    exclude_copies: Annotated[
        bool,
        typer.Option(
            help="Rank candidates that repeat a training checkpoint token for token last (with --candidates K: new "
            "weights whenever enough candidates are new)."
        ),
    ] = False,
    guidance_scale: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Classifier-free guidance on the instruction (1: none; the general pipeline's benchmark uses 1.25).",
        ),
    ] = 1.0,
    candidate_tasks: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --select-by support_accuracy: also draw candidates under the N nearest known tasks' "
            "instructions; with task_posterior: weigh each candidate against the N nearest other known tasks.",
        ),
    ] = 0,
    adapter: Annotated[
        str | None,
        typer.Option(
            help="Generate LoRA adapters instead: an adapter folder to follow, a base-model folder or a base "
            "identity (sha256:...) the pipeline was trained on. --out is then a folder of peft adapter folders."
        ),
    ] = None,
    rank: Annotated[
        int | None, typer.Option(help="With --adapter: the LoRA rank, if the pipeline saw several.")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="With --adapter --evaluate: the base-model folder (default: from the spec)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch threads (default: $IGPG_NUM_THREADS, else 1: one generation is small work, and more "
            "threads beside another busy process made it several times slower).",
        ),
    ] = None,
    changes: dict | None = None,
) -> None:
    """Generate weights for an architecture (or adapters of a base model) from an instruction and save them.

    Sampling defaults to GenerationSettings, the setting the demo and the benchmark measured.
    """
    _setup(False)
    if adapter is not None:
        return _generate_adapters(
            instruction, pipeline, adapter, rank, base, dataset, out, num_samples, seed, evaluate, changes
        )
    import torch
    from diffusers.utils import logging as diffusers_logging
    from safetensors.torch import save_file

    from .files import atomic_path
    from .pipeline_igpg import IGPGPipeline
    from .sampling import THREADS_ENV, generation_num_threads

    sampling = dataclasses.replace(GenerationSettings(), **changes["sampling"])
    try:
        threads = threads or generation_num_threads(0.0)  # $IGPG_NUM_THREADS, else 1
    except ValueError as e:
        _fail(e)
    os.environ[THREADS_ENV] = str(threads)  # the sampler's setting too
    torch.set_num_threads(threads)
    diffusers_logging.disable_progress_bar()
    from .conditioning.coverage import OutOfDistributionWarning

    try:
        pipe = IGPGPipeline.from_pretrained(pipeline)
        pipe.set_progress_bar_config(disable=True)
        # the prior's warnings are shown as lines of ours below, not with Python's source line
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OutOfDistributionWarning)
            res = pipe(
                instruction,
                architecture=architecture,
                dataset=dataset,
                num_samples=num_samples,
                seed=seed,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                align_labels=align_labels,
                alignment_samples=alignment_task,
                match_known_task=match_known_task,
                select_by=select_by.replace("-", "_"),  # task-posterior as well as task_posterior
                candidates_per_sample=candidates,
                exclude_copies=exclude_copies,
                candidate_tasks=candidate_tasks,
                guidance_scale=guidance_scale,
            )
    except (ValueError, TypeError, OSError) as e:
        _fail(e, _GENERATE_FLAGS)
    for w in caught:
        if issubclass(w.category, OutOfDistributionWarning):
            console.print(f"[bold yellow]warning:[/] {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for i, sd in enumerate(res.state_dicts):
        path = out if i == 0 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        with atomic_path(path) as tmp:
            save_file(
                {k: v.contiguous() for k, v in sd.items()},
                str(tmp),
                metadata={"instruction": instruction, "architecture": architecture},
            )
        msg = f"wrote {path}"
        if evaluate:
            from .evaluation.metrics import evaluate_state_dicts
            from .zoo.architectures import get_architecture

            try:
                acc = evaluate_state_dicts(get_architecture(architecture), [sd], evaluate)[0]
            except (RuntimeError, ValueError) as e:
                _fail(
                    ValueError(
                        f"--evaluate {evaluate}: the task's data do not fit --architecture ({e}); "
                        f"the weights were written to {path}"
                    )
                )
            msg += f"  test accuracy on {evaluate}: {acc:.1f} %"
        if res.support_accuracy is not None:
            msg += f"  accuracy on the --dataset samples {res.support_accuracy[i]:.1f} %"
        if res.task_posterior is not None:
            msg += f"  task posterior {res.task_posterior[i]:.2f}"
        if res.conditioning_instructions and res.conditioning_instructions[i] != instruction:
            msg += f"  (drawn under {res.conditioning_instructions[i]!r})"
        if res.label_alignments:
            a = res.label_alignments[i]
            msg += (
                f"  labels reordered (support accuracy {a.accuracy_before:.0f} -> {a.accuracy_after:.0f} %)"
                if a.applied
                else "  labels kept in order"
            )
        console.print(msg)
    console.print(
        f"generated {len(res.state_dicts)} model(s) in {res.seconds:.2f} s (temperature {sampling.temperature}, "
        f"top-k {sampling.top_k}, top-p {sampling.top_p})"
    )
    c = res.conditions
    if c is not None and c.nearest_tasks:
        console.print(
            "nearest known tasks (text-encoder similarity, the scale of the out-of-distribution check): "
            + ", ".join(f"{t} ({s:.2f})" for t, s in c.nearest_tasks)
            + ("  OUT OF DISTRIBUTION" if c.out_of_distribution else "")
            + ("  architecture never trained on" if c.architecture_known is False else "")
        )


def _generate_adapters(
    instruction, pipeline, adapter, rank, base, dataset, out, num_samples, seed, evaluate, changes
):
    """`generate --adapter`: peft adapter folders ``out/sample-{i}``, each with its test accuracy if asked."""
    from .adapters import adapter_accuracy, find_base_model
    from .pipeline_igpg import IGPGPipeline

    sampling = dataclasses.replace(GenerationSettings(), **changes["sampling"])
    out = Path("adapters") if out == Path("model.safetensors") else out  # the default names a file
    try:
        pipe = IGPGPipeline.from_pretrained(pipeline)
        spec = pipe.resolve_adapter(adapter, rank)
        res = pipe(
            instruction,
            adapter=spec,
            dataset=dataset,
            num_samples=num_samples,
            seed=seed,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
        )
        infos = [{"instruction": instruction, "pipeline": str(pipeline)} for _ in res.state_dicts]
        if evaluate:
            base_model = find_base_model(spec, base or (adapter if Path(adapter).is_dir() else None))
            for info, sd in zip(infos, res.state_dicts, strict=True):
                info.update(
                    evaluated_on=evaluate,
                    test_accuracy_percent=adapter_accuracy(base_model, sd, spec, evaluate),
                )
        folders = res.save_adapters(out, infos)
    except (ValueError, TypeError, OSError) as e:
        _fail(e)
    for folder, info in zip(folders, infos, strict=True):
        acc = info.get("test_accuracy_percent")
        console.print(
            f"wrote {folder}" + (f"  test accuracy on {evaluate}: {acc:.1f} %" if acc is not None else "")
        )
    console.print(
        f"generated {len(folders)} rank-{spec.r} adapter(s) of base {spec.base_model[:19]} in {res.seconds:.2f} s; "
        "load one with PeftModel.from_pretrained(base, folder)"
    )


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
    preset: Annotated[str, typer.Option(help="demo (about 13 min on 2 cores) | smoke (seconds)")] = "demo",
    verbose: Verbose = False,
) -> None:
    """End to end, offline: build a zoo, train VQ-VAE and prior, generate per task, compare with zoo and random init."""
    _setup(verbose)
    from .evaluation.demo import DemoConfig, DemoResult, run_demo

    try:
        res = run_demo(out, DemoConfig.from_preset(preset))
    except ValueError as e:
        _fail(e)
    table = Table(*DemoResult.COLUMNS, title=DemoResult.TITLE)
    for row in res.rows():
        table.add_row(*row)
    console.print(table)
    for line in res.summary_lines():
        console.print(line)
    console.print(
        f"results in {out / 'results.json'}, plot {out / 'results.png'}, pipeline {out / 'pipeline'}"
    )


# --------------------------------------------------------------------------------------- bench
@app.command("bench")
def bench_cmd(
    out: Annotated[
        Path, typer.Option(help="Output folder: report.md, results.json, plots (rerunning resumes).")
    ] = Path("bench_out"),
    preset: Annotated[
        str,
        typer.Option(
            help="smoke (about a minute) | default (README figures; hours on 2 cores: pick --parts) | gpu"
        ),
    ] = "default",
    parts: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated experiments to run, e.g. seen,speed (default: every default one)."
        ),
    ] = None,
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
        int | None, typer.Option(help="torch threads in the main process (default: the preset's).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Experiment config change, EXPERIMENT.FIELD=VALUE (repeatable), e.g. speed.samples=10.",
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Benchmark: the registered experiments (seen and unseen tasks, unseen architectures, VQ-VAE fidelity,
    novelty, speed; paper Tables 1, 3, Figs. 2, 3), with a report."""
    _setup(verbose)
    from .evaluation.benchmark import BenchConfig, run_benchmark

    try:
        changes = {k: v for k, v in (("workers", workers), ("threads", threads)) if v is not None}
        selected = [p.strip() for p in parts.split(",") if p.strip()] if parts else None
        config = BenchConfig.from_preset(preset, **changes).with_changes(_key_values(set_, "--set"))
        res = run_benchmark(out, config, pipeline=pipeline, corpus=corpus, parts=selected)
    except ValueError as e:
        _fail(e)
    for line in res.summary_lines():
        console.print(line)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
