"""Model and dataset cards: metadata through huggingface_hub's card classes, text from the ``hub_cards/`` templates.

Every card states what the Hub reads from its YAML front matter: ``library_name: igpg_hf`` (transformers alone
cannot load these models), the license, ``datasets:`` (the corpus repo the run trained on, when it came from
the Hub), ``base_model`` (when the prior started from a pretrained one) and a ``model-index`` holding the
results the training run measured (from the config's ``training_summary``). Templates are Jinja2, rendered
with ``ModelCard.from_template`` / ``DatasetCard.from_template``; `load_template` is the one place they are read.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import atomic_write_text

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard, EvalResult, ModelCard

__all__ = [
    "LICENSE",
    "PAPER_URL",
    "load_template",
    "project_url",
    "eval_results",
    "pipeline_card",
    "prior_card",
    "vqvae_card",
    "corpus_card",
    "write_card",
    "component_cards_disabled",
]

LICENSE = "apache-2.0"  # the project's license; cards default to it (edit the card to publish under another)
PAPER_URL = "https://arxiv.org/abs/2504.02012"
LIBRARY_NAME = "igpg_hf"
TASK = {"task_type": "other", "task_name": "Instruction-guided neural-network weight generation"}
# the templates live at the top of the repository (hub_cards/, as the design card asks) and ship in the wheel as the
# package data igpg_hf.hub_cards (setup.py maps that package onto the folder): the installed copy first, then a
# checkout's or an editable install's folder
_TEMPLATE_FOLDERS = (
    Path(__file__).resolve().parent / "hub_cards",
    Path(__file__).resolve().parents[1] / "hub_cards",
)
_components_only = contextvars.ContextVar("igpg_hf_component_save", default=False)


def load_template(name: str) -> str:
    """The text of ``hub_cards/<name>`` (e.g. ``"model_card.md"``), from the installed package data or a checkout.

    A missing template is a FileNotFoundError naming where it was looked for, never a stub card.
    """
    for folder in _TEMPLATE_FOLDERS:
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8")
    try:
        resource = resources.files("igpg_hf.hub_cards") / name
        if resource.is_file():
            return resource.read_text(encoding="utf-8")
    except ModuleNotFoundError:
        pass
    raise FileNotFoundError(
        f"card template {name!r} is missing: looked in {', '.join(map(str, _TEMPLATE_FOLDERS))} and the package "
        "data igpg_hf.hub_cards; reinstall igpg_hf (the wheel ships hub_cards/)"
    )


def project_url() -> str | None:
    """The project's home page from the installed package metadata, or None (cards then link nothing)."""
    from importlib import metadata

    try:
        meta = metadata.metadata("igpg_hf")
    except metadata.PackageNotFoundError:
        return None
    for entry in meta.get_all("Project-URL") or []:
        url = entry.split(",", 1)[-1].strip()
        if url.startswith("https://") and url.rstrip("/") not in (
            "https://github.com",
            "https://huggingface.co",
        ):
            return url
    home = (meta.get("Home-page") or "").strip()
    return home if home.startswith("https://") and home.rstrip("/") != "https://github.com" else None


def _number(x: Any) -> float | int | None:
    if (
        isinstance(x, bool)
        or not isinstance(x, (int, float))
        or (isinstance(x, float) and not math.isfinite(x))
    ):
        return None
    return x if isinstance(x, int) else round(float(x), 6)


def _dataset(summary: dict) -> dict[str, str]:
    repo = summary.get("corpus_repo_id")
    name = str(summary.get("corpus") or repo or "weight corpus")
    return {"dataset_type": repo or "igpg-weight-corpus", "dataset_name": name}


# (summary key, metric type, metric name, split) of the figures a training run records
_TRAINING_METRICS = {
    "prior": [("prior_final_loss", "loss", "prior training loss (final, nats per token)", "train")],
    "vqvae": [
        ("final_recon_mse", "mse", "reconstruction MSE of normalized weights (final)", "train"),
        ("final_perplexity", "perplexity", "codebook perplexity (final)", "train"),
    ],
}
# nested dicts of measured figures (e.g. the demo's evaluation of the pipeline on its tasks' test splits)
_RESULT_BLOCKS = {"demo_results": "test", "results": "test"}


def eval_results(summary: dict | None, kind: str) -> list[EvalResult]:
    """The measured figures of a ``training_summary`` as ``EvalResult`` entries (the card's ``model-index``)."""
    from huggingface_hub import EvalResult

    summary = dict(summary or {})
    data, out = _dataset(summary), []
    for key, metric_type, metric_name, split in _TRAINING_METRICS.get(kind, []):
        value = _number(summary.get(key))
        if value is not None:
            result = dict(
                dataset_split=split, metric_type=metric_type, metric_name=metric_name, metric_value=value
            )
            out.append(EvalResult(**TASK, **data, **result))
    tasks = {**data, "dataset_name": f"test splits of the tasks in {data['dataset_name']}"}
    for block, split in _RESULT_BLOCKS.items():
        for key, raw in (summary.get(block) or {}).items():
            value = _number(raw)
            if value is not None:
                result = dict(
                    dataset_split=split,
                    metric_type=key,
                    metric_name=key.replace("_", " "),
                    metric_value=value,
                )
                out.append(EvalResult(**TASK, **tasks, **result))
    return out


def _details(summary: dict | None) -> list[tuple[str, str]]:
    """Settings of the run that are not results: steps, sequence counts, the corpus."""
    skip = {"corpus_repo_id", *_RESULT_BLOCKS, *(m[0] for ms in _TRAINING_METRICS.values() for m in ms)}
    return [
        (k, str(v)) for k, v in (summary or {}).items() if k not in skip and not isinstance(v, (dict, list))
    ]


def _model_card(template: str, kind: str, summary: dict | None, model_name: str, tags: list[str], **values):
    from huggingface_hub import ModelCard, ModelCardData

    summary = dict(summary or {})
    results = eval_results(summary, kind)
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        license=LICENSE,
        tags=["igpg", "weight-generation", "neural-network-weights", *tags],
        datasets=[summary["corpus_repo_id"]] if summary.get("corpus_repo_id") else None,
        base_model=summary.get("base_model") or None,
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    return ModelCard.from_template(
        data,
        template_str=load_template(template),
        paper_url=PAPER_URL,
        project_url=project_url(),
        results=results,
        details=_details(summary),
        **values,
    )


def _params(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"


def pipeline_card(pipe) -> ModelCard:
    """The card of a saved `IGPGPipeline`: components, what the prior knows, its training summary and results."""
    from .conditioning.coverage import known_conditions_markdown

    vq, pr = pipe.vqvae.config, pipe.prior.config
    summary = getattr(pr, "training_summary", None)
    return _model_card(
        "model_card.md",
        "prior",
        summary,
        "igpg-pipeline",
        ["hypernetwork"],
        prior_params=_params(pipe.prior),
        prior=pr,
        vqvae_params=_params(pipe.vqvae),
        vqvae=vq,
        codebook_size=vq.vocab_size,
        text_encoder=pr.text_encoder_name or type(pipe.text_encoder).__name__,
        corpus=(summary or {}).get("corpus") or "not recorded",
        known_conditions=known_conditions_markdown(pr),
    )


def prior_card(model) -> ModelCard:
    """The card of a saved `IGPGPriorModel`."""
    summary = getattr(model.config, "training_summary", None)
    return _model_card(
        "prior_card.md", "prior", summary, "igpg-prior", ["gpt2"], params=_params(model), config=model.config
    )


def vqvae_card(model) -> ModelCard:
    """The card of a saved `IGPGVQVAEModel`."""
    summary = getattr(model.config, "training_summary", None)
    return _model_card(
        "vqvae_card.md",
        "vqvae",
        summary,
        "igpg-vqvae",
        ["vq-vae", "weight-tokenizer"],
        params=_params(model),
        config=model.config,
        codebook_size=model.config.vocab_size,
    )


def _size_category(n: int) -> str:
    for limit, name in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _listing(items: list[str], most: int = 3) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def corpus_card(summary: dict) -> DatasetCard:
    """The dataset card of a weight corpus, from its `WeightCorpus.summary` (the content of corpus.json)."""
    import json

    from huggingface_hub import DatasetCard, DatasetCardData

    families, tasks = list(summary.get("families") or []), list(summary.get("tasks") or {})
    name = f"IGPG weight corpus: {_listing(families) or 'no'} networks on {_listing(tasks) or 'no tasks'}"
    data = DatasetCardData(
        pretty_name=name,
        license=LICENSE,
        tags=["igpg", "model-zoo", "neural-network-weights", "weight-generation"],
        size_categories=[_size_category(summary["num_checkpoints"])],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    )

    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.4f}"

    rows = [
        f"| {t} | {a['checkpoints']} | {fmt(a['mean'])} | {fmt(a['min'])} | {fmt(a['max'])} | {a['count']} |"
        for t, a in summary["tasks"].items()
    ]
    return DatasetCard.from_template(
        data,
        template_str=load_template("dataset_card.md"),
        title=name,
        paper_url=PAPER_URL,
        project_url=project_url(),
        num_checkpoints=summary["num_checkpoints"],
        num_rows=summary["num_rows"],
        families=families,
        num_tasks=len(tasks),
        task_table="\n".join(rows),
        summary_json=json.dumps(summary, indent=2),
    )


def write_card(card: ModelCard | DatasetCard, folder: str | os.PathLike) -> Path:
    """Write ``card`` as ``folder/README.md`` atomically; returns the path."""
    return atomic_write_text(Path(folder) / "README.md", str(card))


@contextlib.contextmanager
def component_cards_disabled() -> Iterator[None]:
    """While a pipeline saves its components into subfolders, the models write no cards of their own."""
    token = _components_only.set(True)
    try:
        yield
    finally:
        _components_only.reset(token)


def component_cards_enabled() -> bool:
    """False inside `component_cards_disabled`."""
    return not _components_only.get()
