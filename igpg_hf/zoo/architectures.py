"""Architecture specs: JSON-serializable descriptions that build `nn.Module`s and standardized text.

Four families, all in plain torch (no torchvision):
- ``cnn``: the tiny-zoo CNN of Schürholt et al. (2,464 params on 1x28x28, 10,853 on 3x32x32);
- ``mlp``: any depth and width;
- ``cnn1d``: a 1-D CNN for MNIST-1D;
- ``resnet``: a small CIFAR-style ResNet parameterized by blocks per stage ``[n1, n2, n3]`` and width.

``spec.text()`` is the standardized architecture description that conditions the prior, e.g.
``"cnn: conv channels [8, 6, 4], kernels [5, 5, 2], pool [1, 1, 0], fc [20], input 1x28x28, classes 10, activation tanh"``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "ArchSpec",
    "get_architecture",
    "list_architectures",
    "architecture_for_task",
    "initialize_weights",
    "FAMILIES",
    "ACTIVATIONS",
    "INITIALIZATIONS",
]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
INITIALIZATIONS = (
    "default",
    "uniform",
    "normal",
    "kaiming_uniform",
    "kaiming_normal",
    "xavier_uniform",
    "xavier_normal",
)

# family -> required fields (with types for validation) and defaults
_FIELDS: dict[str, dict[str, Any]] = {
    "cnn": {
        "in_channels": 1,
        "input_size": 28,
        "channels": [8, 6, 4],
        "kernels": [5, 5, 2],
        "pool": [1, 1, 0],
        "fc": [20],
        "num_classes": 10,
        "activation": "tanh",
        "dropout": 0.0,
    },
    "mlp": {"in_features": 64, "hidden": [32], "num_classes": 10, "activation": "relu", "dropout": 0.0},
    "cnn1d": {
        "in_channels": 1,
        "length": 40,
        "channels": [8, 8],
        "kernels": [5, 5],
        "pool": [1, 1],
        "fc": [32],
        "num_classes": 10,
        "activation": "relu",
        "dropout": 0.0,
    },
    "resnet": {
        "in_channels": 1,
        "input_size": 28,
        "blocks": [1, 1, 1],
        "width": 8,
        "num_classes": 10,
        "norm": "batch",
        "activation": "relu",
    },
}
FAMILIES = tuple(_FIELDS)

_LIST, _INT = r"\[[0-9, ]*\]", r"[0-9]+"
# `ArchSpec.text()` per family, read back by `ArchSpec.from_text`
_TEXT_PATTERNS = {
    "cnn": re.compile(
        rf"cnn: conv channels (?P<channels>{_LIST}), kernels (?P<kernels>{_LIST}), pool (?P<pool>{_LIST}), "
        rf"fc (?P<fc>{_LIST}), input (?P<in_channels>{_INT})x(?P<input_size>{_INT})x(?P<input_size2>{_INT}), "
        rf"classes (?P<num_classes>{_INT}), activation (?P<activation>\w+)"
    ),
    "mlp": re.compile(
        rf"mlp: input (?P<in_features>{_INT}), hidden (?P<hidden>{_LIST}), classes (?P<num_classes>{_INT}), "
        rf"activation (?P<activation>\w+)"
    ),
    "cnn1d": re.compile(
        rf"cnn1d: conv channels (?P<channels>{_LIST}), kernels (?P<kernels>{_LIST}), pool (?P<pool>{_LIST}), "
        rf"fc (?P<fc>{_LIST}), input (?P<in_channels>{_INT})x(?P<length>{_INT}), classes (?P<num_classes>{_INT}), "
        rf"activation (?P<activation>\w+)"
    ),
    "resnet": re.compile(
        rf"resnet: layers (?P<blocks>{_LIST}), width (?P<width>{_INT}), batch norm: (?P<norm>true|false), "
        rf"input (?P<in_channels>{_INT})x(?P<input_size>{_INT})x(?P<input_size2>{_INT}), "
        rf"classes (?P<num_classes>{_INT})"
    ),
}


@dataclass(frozen=True)
class ArchSpec:
    """A buildable, describable architecture: a family name and its fields."""

    family: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.family not in _FIELDS:
            raise ValueError(f"unknown architecture family {self.family!r}; known: {', '.join(FAMILIES)}")
        unknown = set(self.params) - set(_FIELDS[self.family])
        if unknown:
            raise ValueError(
                f"unknown field(s) {sorted(unknown)} for architecture family {self.family!r}; "
                f"allowed: {sorted(_FIELDS[self.family])}"
            )
        full = {**_FIELDS[self.family], **self.params}
        object.__setattr__(self, "params", full)
        act = full.get("activation")
        if act is not None and act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
        if self.family in ("cnn", "cnn1d") and not (
            len(full["channels"]) == len(full["kernels"]) == len(full["pool"])
        ):
            raise ValueError(
                f"{self.family}: channels, kernels and pool must have the same length, got {full}"
            )
        if self.family == "resnet" and (len(full["blocks"]) != 3 or min(full["blocks"]) < 1):
            raise ValueError(
                f"resnet: blocks must be three positive integers [n1, n2, n3], got {full['blocks']!r}"
            )

    # -- serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **self.params}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        d = dict(d)
        if "family" not in d:
            raise ValueError(f"architecture dict needs a 'family' field, got keys {sorted(d)}")
        return cls(d.pop("family"), d)

    @classmethod
    def from_json(cls, s: str) -> ArchSpec:
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_text(cls, text: str) -> ArchSpec:
        """The spec whose `text` is ``text`` (fields the description leaves out, such as dropout, get their
        defaults; none of them changes the weights' layout). ValueError when ``text`` is not such a description.

        >>> ArchSpec.from_text("mlp: input 4, hidden [16], classes 3, activation relu").params["hidden"]
        [16]
        """
        m = _TEXT_PATTERNS.get(text.split(":", 1)[0].strip()) if isinstance(text, str) else None
        found = m.fullmatch(text.strip()) if m is not None else None
        if found is None:
            raise ValueError(
                f"not an architecture description (ArchSpec.text()): {text!r}; e.g. "
                f"{_PRESETS['mlp_small'].text()!r}"
            )
        family, g = text.split(":", 1)[0].strip(), found.groupdict()
        params: dict[str, Any] = {}
        for key, value in g.items():
            if key == "norm":
                params[key] = "batch" if value == "true" else "none"
            elif key == "activation":
                params[key] = value
            else:
                params[key] = ast.literal_eval(value)
        if params.pop("input_size2", params.get("input_size")) != params.get("input_size"):
            raise ValueError(f"only square inputs are described this way, got {text!r}")
        return cls(family, params)

    def replace(self, **changes) -> ArchSpec:
        return ArchSpec(self.family, {**self.params, **changes})

    # -- description -------------------------------------------------------------------------
    def text(self) -> str:
        """Standardized description that conditions the prior (same spec -> same text)."""
        p = self.params
        if self.family == "cnn":
            return (
                f"cnn: conv channels {p['channels']}, kernels {p['kernels']}, pool {p['pool']}, fc {p['fc']}, "
                f"input {p['in_channels']}x{p['input_size']}x{p['input_size']}, classes {p['num_classes']}, "
                f"activation {p['activation']}"
            )
        if self.family == "mlp":
            return (
                f"mlp: input {p['in_features']}, hidden {p['hidden']}, classes {p['num_classes']}, "
                f"activation {p['activation']}"
            )
        if self.family == "cnn1d":
            return (
                f"cnn1d: conv channels {p['channels']}, kernels {p['kernels']}, pool {p['pool']}, fc {p['fc']}, "
                f"input {p['in_channels']}x{p['length']}, classes {p['num_classes']}, activation {p['activation']}"
            )
        return (
            f"resnet: layers {p['blocks']}, width {p['width']}, batch norm: {str(p['norm'] == 'batch').lower()}, "
            f"input {p['in_channels']}x{p['input_size']}x{p['input_size']}, classes {p['num_classes']}"
        )

    # -- construction ------------------------------------------------------------------------
    def build(self) -> nn.Module:
        """Instantiate the module (default PyTorch initialization)."""
        return _BUILDERS[self.family](self.params)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.build().parameters())

    def input_shape(self) -> tuple[int, ...]:
        p = self.params
        if self.family in ("cnn", "resnet"):
            return (p["in_channels"], p["input_size"], p["input_size"])
        if self.family == "cnn1d":
            return (p["in_channels"], p["length"])
        return (p["in_features"],)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """conv -> act -> (pool) blocks, flatten, fully connected head; 2-D or 1-D."""

    def __init__(self, p: dict[str, Any], dims: int):
        super().__init__()
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if dims == 2 else (nn.Conv1d, nn.MaxPool1d)
        act = ACTIVATIONS[p["activation"]]
        size = p["input_size"] if dims == 2 else p["length"]
        c_in = p["in_channels"]
        self.features = nn.Sequential()
        for i, (c, k, pl) in enumerate(zip(p["channels"], p["kernels"], p["pool"], strict=True)):
            self.features.add_module(f"conv{i + 1}", conv(c_in, c, k))
            self.features.add_module(f"act{i + 1}", act())
            size = size - k + 1
            if pl:
                self.features.add_module(f"pool{i + 1}", pool(2))
                size //= 2
            if p["dropout"]:
                self.features.add_module(f"drop{i + 1}", nn.Dropout(p["dropout"]))
            c_in = c
        if size < 1:
            raise ValueError(f"architecture shrinks the input to nothing: {p}")
        n_in = c_in * size**dims
        self.head = _mlp_head(n_in, p["fc"], p["num_classes"], act, p["dropout"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _mlp_head(n_in: int, hidden: list[int], n_out: int, act, dropout: float) -> nn.Sequential:
    head = nn.Sequential()
    for i, h in enumerate(hidden):
        head.add_module(f"fc{i + 1}", nn.Linear(n_in, h))
        head.add_module(f"act{i + 1}", act())
        if dropout:
            head.add_module(f"drop{i + 1}", nn.Dropout(dropout))
        n_in = h
    head.add_module(f"fc{len(hidden) + 1}", nn.Linear(n_in, n_out))
    return head


class MLP(nn.Module):
    def __init__(self, p: dict[str, Any]):
        super().__init__()
        self.head = _mlp_head(
            p["in_features"], p["hidden"], p["num_classes"], ACTIVATIONS[p["activation"]], p["dropout"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: bool, act):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not norm)
        self.bn1 = nn.BatchNorm2d(c_out) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not norm)
        self.bn2 = nn.BatchNorm2d(c_out) if norm else nn.Identity()
        self.act = act()
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=not norm),
                nn.BatchNorm2d(c_out) if norm else nn.Identity(),
            )

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): stem, three stages of BasicBlocks (width w, 2w, 4w), pooled head."""

    def __init__(self, p: dict[str, Any]):
        super().__init__()
        norm, act, w = p["norm"] == "batch", ACTIVATIONS[p["activation"]], p["width"]
        self.conv1 = nn.Conv2d(p["in_channels"], w, 3, 1, 1, bias=not norm)
        self.bn1 = nn.BatchNorm2d(w) if norm else nn.Identity()
        self.act = act()
        c_in, stages = w, []
        for s, n in enumerate(p["blocks"]):
            c_out = w * 2**s
            blocks = [
                BasicBlock(c_in if i == 0 else c_out, c_out, 2 if (s > 0 and i == 0) else 1, norm, act)
                for i in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c_in, p["num_classes"])

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


_BUILDERS = {
    "cnn": lambda p: ConvNet(p, 2),
    "cnn1d": lambda p: ConvNet(p, 1),
    "mlp": MLP,
    "resnet": ResNet,
}


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

_PRESETS: dict[str, ArchSpec] = {
    # Schürholt et al. tiny zoo: 2,464 params on MNIST-like input.
    "tiny_cnn": ArchSpec("cnn", {}),
    # Its RGB sibling for CIFAR-10/SVHN/STL-10 (32x32): 10,853 params.
    "tiny_cnn_rgb": ArchSpec(
        "cnn",
        {
            "in_channels": 3,
            "input_size": 32,
            "channels": [16, 32, 15],
            "kernels": [3, 3, 3],
            "pool": [1, 1, 1],
            "fc": [20],
        },
    ),
    # A base for LoRA adapters on 28x28 tasks (46,730 params): wide enough that rank-2/4 factors on conv2 and fc1
    # adapt it to rotations, flips and noise (issue 11).
    "lora_base_cnn": ArchSpec(
        "cnn", {"channels": [16, 32], "kernels": [5, 5], "pool": [1, 1], "fc": [64], "activation": "relu"}
    ),
    "mlp_small": ArchSpec("mlp", {"in_features": 64, "hidden": [32], "activation": "relu"}),
    "mlp_tabular": ArchSpec(
        "mlp", {"in_features": 20, "hidden": [16], "num_classes": 4, "activation": "relu"}
    ),
    "cnn1d_small": ArchSpec("cnn1d", {}),
    "resnet_small": ArchSpec("resnet", {"in_channels": 1, "input_size": 8, "blocks": [1, 1, 1], "width": 4}),
    # ResNet-20/32/44/56 analogues at width 16 (CIFAR): blocks [3,3,3], [5,5,5], [7,7,7], [9,9,9].
    "resnet20": ArchSpec("resnet", {"in_channels": 3, "input_size": 32, "blocks": [3, 3, 3], "width": 16}),
    "resnet56": ArchSpec("resnet", {"in_channels": 3, "input_size": 32, "blocks": [9, 9, 9], "width": 16}),
}


def list_architectures() -> list[str]:
    """Names of architecture presets."""
    return sorted(_PRESETS)


def get_architecture(name: str | dict | ArchSpec, **overrides) -> ArchSpec:
    """An architecture preset by name (or a dict/ArchSpec), with optional field overrides."""
    if isinstance(name, ArchSpec):
        spec = name
    elif isinstance(name, dict):
        spec = ArchSpec.from_dict(name)
    elif isinstance(name, str) and name.strip().startswith("{"):
        spec = ArchSpec.from_json(name)
    elif name in _PRESETS:
        spec = _PRESETS[name]
    else:
        raise ValueError(
            f"unknown architecture {name!r}; presets: {', '.join(list_architectures())} "
            f"(or pass a dict with a 'family' field among {', '.join(FAMILIES)})"
        )
    return spec.replace(**overrides) if overrides else spec


def architecture_for_task(task, name: str | None = None, **overrides) -> ArchSpec:
    """The architecture `name` (default: the task's default) adapted to the task's input shape and classes."""
    from .tasks import get_task

    t = get_task(task)
    spec = get_architecture(name or t.default_architecture)
    shape = t.input_shape
    fit: dict[str, Any] = {"num_classes": t.num_classes}
    if spec.family in ("cnn", "resnet"):
        if len(shape) != 3:
            raise ValueError(
                f"architecture family {spec.family!r} needs image input, task {t.name!r} has shape {shape}"
            )
        fit.update(in_channels=shape[0], input_size=shape[1])
    elif spec.family == "cnn1d":
        if len(shape) != 2:
            raise ValueError(
                f"architecture family 'cnn1d' needs 1-D signals, task {t.name!r} has shape {shape}"
            )
        fit.update(in_channels=shape[0], length=shape[1])
    else:
        fit["in_features"] = math.prod(shape)
    return spec.replace(**fit, **overrides)


def initialize_weights(
    module: nn.Module, scheme: str = "default", generator: torch.Generator | None = None
) -> nn.Module:
    """Re-initialize conv/linear weights with one of INITIALIZATIONS (biases to zero unless 'default')."""
    if scheme not in INITIALIZATIONS:
        raise ValueError(f"unknown initialization {scheme!r}; known: {', '.join(INITIALIZATIONS)}")
    if scheme == "default":
        return module
    with torch.no_grad():
        for m in module.modules():
            if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                continue
            w = m.weight
            if scheme == "uniform":
                w.uniform_(-0.1, 0.1, generator=generator)
            elif scheme == "normal":
                w.normal_(0, 0.05, generator=generator)
            elif scheme == "kaiming_uniform":
                nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=generator)
            elif scheme == "kaiming_normal":
                nn.init.kaiming_normal_(w, nonlinearity="relu", generator=generator)
            elif scheme == "xavier_uniform":
                nn.init.xavier_uniform_(w, generator=generator)
            else:
                nn.init.xavier_normal_(w, generator=generator)
            if m.bias is not None:
                m.bias.zero_()
    return module
