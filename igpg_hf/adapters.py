"""LoRA adapters as data: a base model known by its content, adapter specs, and peft adapter folders.

- A **base model** is a folder (``config.json`` + ``model.safetensors``, `save_base_model`) whose identity is
  ``"sha256:<hex>"`` over its entries' names, dtypes, shapes and bytes (`state_dict_sha256`): renaming the
  folder or re-saving it keeps the identity, changing one weight changes it.
- An **adapter spec** (`AdapterSpec`) is what the generator needs to know about an adapter without its values:
  the peft config (``adapter_config.json``), the state-dict layout peft saves, the base's identity and, for
  bases built from an `ArchSpec`, that architecture. ``spec.text()`` is the description that conditions the
  prior, as ``ArchSpec.text()`` is for whole networks.
- An **adapter folder** is what ``peft`` writes and reads: ``adapter_config.json`` + ``adapter_model.safetensors``;
  `save_adapter` adds ``igpg_adapter.json`` (base identity, task, accuracy), which peft ignores. Such a folder
  loads with ``PeftModel.from_pretrained(base, folder)``.

``peft`` is imported only by the functions that build peft models (`AdapterSpec.from_base`, `load_adapter`).
Corpus rows of adapters carry ``hyperparams["peft_config"]`` and ``hyperparams["base_model"]`` (the identity);
`adapter_base_of` reads it back, and a corpus holds adapters of one base only.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_directory
from .weights import WeightLayout
from .zoo.architectures import ArchSpec

__all__ = [
    "AdapterSpec",
    "BaseModel",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "ADAPTER_INFO",
    "adapter_accuracy",
    "adapter_base_of",
    "base_model_identity",
    "find_base_model",
    "is_base_model_folder",
    "adapter_specs_of",
    "adapter_text",
    "load_adapter",
    "load_base_model",
    "read_adapter_folder",
    "save_adapter",
    "save_base_model",
    "state_dict_sha256",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_INFO = "igpg_adapter.json"  # ours, beside peft's files: base identity, task, accuracy
BASE_CONFIG = "config.json"
BASE_WEIGHTS = "model.safetensors"
_BASE_FORMAT = "igpg_base_model"


def state_dict_sha256(state_dict: dict[str, torch.Tensor] | nn.Module) -> str:
    """``"sha256:<64 hex>"`` of a state dict: every entry's name, dtype, shape and bytes, in name order."""
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------------------------------ base model
@dataclass
class BaseModel:
    """A base network with its identity: ``module`` (eval mode), ``identity`` ("sha256:..."), ``arch_spec``
    (None for a module that no `ArchSpec` describes), ``name`` (what adapters record as
    ``base_model_name_or_path``), ``info`` (free JSON: how it was trained, its accuracy)."""

    module: nn.Module
    identity: str
    arch_spec: ArchSpec | None = None
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The base's description in adapter texts: its architecture text, else its name, else its identity."""
        return self.arch_spec.text() if self.arch_spec is not None else (self.name or self.identity[:19])


def save_base_model(
    module: nn.Module,
    folder: str | os.PathLike,
    arch_spec: ArchSpec | None = None,
    name: str | None = None,
    info: dict[str, Any] | None = None,
) -> BaseModel:
    """Write ``folder/config.json`` and ``folder/model.safetensors`` at once; return the `BaseModel` (identity).

    ``name`` defaults to the folder path. ``arch_spec`` lets `load_base_model` rebuild the module.
    """
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    identity = state_dict_sha256(sd)
    name = str(folder) if name is None else name
    config = {
        "format": _BASE_FORMAT,
        "sha256": identity,
        "name": name,
        "arch_spec": arch_spec.to_dict() if arch_spec is not None else None,
        "info": info or {},
    }
    with atomic_directory(folder) as tmp:
        save_file(sd, str(tmp / BASE_WEIGHTS), metadata={"format": "pt", "sha256": identity})
        (tmp / BASE_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return BaseModel(module.eval(), identity, arch_spec, name, dict(info or {}))


def is_base_model_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a base-model folder written by `save_base_model`."""
    path = Path(folder) / BASE_CONFIG
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == _BASE_FORMAT
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


def base_model_identity(folder: str | os.PathLike) -> str:
    """The identity a base-model folder records (its weights are not read; `load_base_model` checks them)."""
    if not is_base_model_folder(folder):
        raise ValueError(f"{folder} is not a base-model folder ({BASE_CONFIG} + {BASE_WEIGHTS})")
    return json.loads((Path(folder) / BASE_CONFIG).read_text(encoding="utf-8"))["sha256"]


def load_base_model(folder: str | os.PathLike, module: nn.Module | None = None) -> BaseModel:
    """The base model saved in ``folder`` (built from its arch spec, or loaded into ``module``), hash checked.

    ValueError if the folder is not a base-model folder, has no arch spec and no ``module`` is given, or its
    weights no longer match the recorded identity.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / BASE_CONFIG
    if not cfg_path.is_file() or not (folder / BASE_WEIGHTS).is_file():
        raise ValueError(f"{folder} is not a base-model folder ({BASE_CONFIG} + {BASE_WEIGHTS})")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("format") != _BASE_FORMAT:
        raise ValueError(f"{cfg_path} is not an igpg_hf base-model config (format {cfg.get('format')!r})")
    sd = load_file(str(folder / BASE_WEIGHTS))
    identity = state_dict_sha256(sd)
    if identity != cfg["sha256"]:
        raise ValueError(
            f"{folder}: the weights hash to {identity}, the config records {cfg['sha256']}: "
            "the base model was changed after it was saved"
        )
    spec = ArchSpec.from_dict(cfg["arch_spec"]) if cfg.get("arch_spec") else None
    if module is None:
        if spec is None:
            raise ValueError(f"{folder} records no arch_spec: pass the module to load the weights into")
        module = spec.build()
    module.load_state_dict(sd, strict=True)
    return BaseModel(module.eval(), identity, spec, cfg.get("name") or str(folder), cfg.get("info") or {})


# ------------------------------------------------------------------------------------------ adapter spec
def _jsonable(config: Any) -> dict[str, Any]:
    """A peft config (object or dict) as plain JSON data (sets become sorted lists, enums their values)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def conv(x: Any) -> Any:
        if isinstance(x, enum.Enum):  # PeftType, TaskType (str enums)
            return conv(x.value)
        if isinstance(x, (set, frozenset)):
            return sorted(conv(v) for v in x)
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {str(k): conv(v) for k, v in x.items()}
        return x if x is None or isinstance(x, (int, float, str, bool)) else str(x)

    return conv(d)


def adapter_text(
    peft_config: dict[str, Any], base_model: str, base_arch: ArchSpec | dict | None = None
) -> str:
    """The description of an adapter that conditions the prior, e.g. ``"lora adapter: rank 4, alpha 8; on
    features.conv2, head.fc1; trained in full head.fc2; base cnn: conv channels [16, 32], ..."`` (the base's
    architecture text when known, else the start of its identity)."""
    c = peft_config
    targets = c.get("target_modules") or []
    targets = sorted(targets) if isinstance(targets, list) else [str(targets)]
    full = sorted(c.get("modules_to_save") or [])
    if isinstance(base_arch, dict):
        base_arch = ArchSpec.from_dict(base_arch)
    base = base_arch.text() if base_arch is not None else str(base_model)[:19]
    parts = [
        f"{str(c.get('peft_type', 'adapter')).lower()} adapter: rank {c.get('r')}, alpha {c.get('lora_alpha')}"
    ]
    parts.append(f"on {', '.join(targets)}")
    if full:
        parts.append(f"trained in full {', '.join(full)}")
    return "; ".join(parts) + f"; base {base}"


@dataclass
class AdapterSpec:
    """What an adapter is, without its values: peft config, state-dict layout, base identity (and architecture).

    ``base_model`` is the base's identity, ``"sha256:..."`` when known (`state_dict_sha256`), else the name
    in ``adapter_config.json``. The layout's entries are kept in name order (the order of a safetensors file).
    Two specs are equal when all four fields are.
    """

    peft_config: dict[str, Any]
    layout: WeightLayout
    base_model: str
    base_arch: ArchSpec | None = None

    def __post_init__(self):
        if isinstance(self.layout, (str, list)):
            self.layout = (
                WeightLayout.from_json(self.layout)
                if isinstance(self.layout, str)
                else WeightLayout.from_list(self.layout)
            )
        # entries in name order, as safetensors files store them: a spec read from a folder, one derived from peft
        # and the zoo's corpus rows then share one layout
        self.layout = WeightLayout(sorted(self.layout.entries, key=lambda e: e.name))
        if isinstance(self.base_arch, dict):
            self.base_arch = ArchSpec.from_dict(self.base_arch)
        if not isinstance(self.peft_config, dict) or "peft_type" not in self.peft_config:
            raise ValueError(f"peft_config must be a dict with a 'peft_type', got {self.peft_config!r}")
        if not self.base_model:
            raise ValueError("base_model (the base's identity, e.g. 'sha256:...') must be a non-empty string")

    # -- what it is ----------------------------------------------------------------------------
    @property
    def peft_type(self) -> str:
        return str(self.peft_config["peft_type"])

    @property
    def r(self) -> int | None:
        """The LoRA rank (None for other adapter types)."""
        return self.peft_config.get("r")

    @property
    def num_parameters(self) -> int:
        """Values in the adapter (its trainable parameters: LoRA factors and ``modules_to_save`` copies)."""
        return self.layout.num_float

    def text(self) -> str:
        """Standardized description that conditions the prior (same spec -> same text); see `adapter_text`."""
        return adapter_text(self.peft_config, self.base_model, self.base_arch)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (`from_dict` inverts it)."""
        return {
            "peft_config": self.peft_config,
            "layout": self.layout.to_list(),
            "base_model": self.base_model,
            "base_arch": self.base_arch.to_dict() if self.base_arch is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterSpec:
        return cls(d["peft_config"], d["layout"], d["base_model"], d.get("base_arch"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdapterSpec) and self.to_dict() == other.to_dict()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_base(
        cls, base: BaseModel | nn.Module, peft_config: Any, base_model: str | None = None
    ) -> AdapterSpec:
        """The spec of ``peft_config`` (a peft ``LoraConfig`` or its dict) applied to ``base``.

        The layout is the one peft saves (``get_peft_model_state_dict`` on a copy of the base). ``base_model``
        defaults to the base's identity (`BaseModel.identity`, or the hash of a module's state dict).
        """
        from peft import PeftConfig, get_peft_model, get_peft_model_state_dict

        module = base.module if isinstance(base, BaseModel) else base
        cfg = PeftConfig.from_peft_type(**peft_config) if isinstance(peft_config, dict) else peft_config
        cfg = copy.deepcopy(cfg)
        if isinstance(base, BaseModel) and not cfg.base_model_name_or_path:
            cfg.base_model_name_or_path = base.name or None
        probe = copy.deepcopy(cfg)
        probe.base_model_name_or_path = None  # peft would warn that it renames it for a plain nn.Module
        peft_model = get_peft_model(copy.deepcopy(module), probe)
        layout = WeightLayout.from_state_dict(get_peft_model_state_dict(peft_model))
        data = _jsonable(cfg)
        data["inference_mode"] = True
        identity = base_model or (base.identity if isinstance(base, BaseModel) else state_dict_sha256(module))
        return cls(data, layout, identity, base.arch_spec if isinstance(base, BaseModel) else None)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> AdapterSpec:
        """The spec of an adapter folder (its config, its weights' layout, the identity in igpg_adapter.json)."""
        config, state_dict, info = read_adapter_folder(folder)
        identity = info.get("base_model") or config.get("base_model_name_or_path")
        if not identity:
            raise ValueError(
                f"{folder}: no base identity ({ADAPTER_INFO} 'base_model' or adapter_config.json "
                "'base_model_name_or_path')"
            )
        return cls(config, WeightLayout.from_state_dict(state_dict), identity, info.get("base_arch"))


# ------------------------------------------------------------------------------------------ folders
def read_adapter_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(adapter_config.json, the adapter's state dict, igpg_adapter.json or {}) of a peft adapter folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"{folder} is not a peft adapter folder ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    info_path = folder / ADAPTER_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    return config, load_file(str(folder / ADAPTER_WEIGHTS)), info


def save_adapter(
    folder: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    spec: AdapterSpec,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a peft adapter folder (config, safetensors weights, ``igpg_adapter.json``) at once; returns it.

    ``state_dict`` must match ``spec.layout`` (peft's key names); ``info`` (task, instruction, accuracy, ...)
    goes into ``igpg_adapter.json`` beside the base identity. ValueError naming the first mismatching entry.
    """
    from safetensors.torch import save_file

    spec.layout.validate(state_dict)
    sd = {e.name: state_dict[e.name].detach().cpu().contiguous() for e in spec.layout.entries}
    record = {
        "base_model": spec.base_model,
        "base_arch": spec.base_arch.to_dict() if spec.base_arch is not None else None,
        **(info or {}),
    }
    with atomic_directory(folder) as tmp:
        save_file(sd, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(spec.peft_config, indent=2) + "\n", encoding="utf-8")
        (tmp / ADAPTER_INFO).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return Path(folder)


def load_adapter(
    base: BaseModel | nn.Module,
    adapter: str | os.PathLike | dict[str, torch.Tensor],
    spec: AdapterSpec | None = None,
) -> nn.Module:
    """A peft model (eval mode) of a copy of ``base`` with an adapter folder, or a state dict of ``spec``.

    A folder goes through ``PeftModel.from_pretrained``; a state dict through ``set_peft_model_state_dict``.
    ValueError if keys are missing or unexpected, or the spec's base identity is not the base's.
    """
    from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    module = copy.deepcopy(base.module if isinstance(base, BaseModel) else base)
    if isinstance(adapter, (str, os.PathLike)):
        return PeftModel.from_pretrained(module, str(adapter)).eval()
    if spec is None:
        raise ValueError("a state-dict adapter needs its AdapterSpec (spec=)")
    if (
        isinstance(base, BaseModel)
        and spec.base_model.startswith("sha256:")
        and spec.base_model != base.identity
    ):
        raise ValueError(f"adapter is for base {spec.base_model}, the base given is {base.identity}")
    spec.layout.validate(adapter)
    config = PeftConfig.from_peft_type(**{**spec.peft_config, "inference_mode": True})
    config.base_model_name_or_path = None  # peft warns that it renames it for a plain nn.Module
    model = get_peft_model(module, config)
    result = set_peft_model_state_dict(model, adapter)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k or "modules_to_save" in k]
    if unexpected or missing:
        raise ValueError(
            f"adapter does not fit the base: missing keys {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


def find_base_model(spec: AdapterSpec, folder: str | os.PathLike | None = None) -> BaseModel:
    """The base model of ``spec``: from ``folder``, else from the folder its peft config names
    (``base_model_name_or_path``); ValueError if neither is a base-model folder with the spec's identity."""
    for candidate in (folder, spec.peft_config.get("base_model_name_or_path")):
        if candidate and is_base_model_folder(candidate):
            base = load_base_model(candidate)
            if spec.base_model.startswith("sha256:") and base.identity != spec.base_model:
                raise ValueError(
                    f"{candidate} holds base {base.identity}, the adapter is for {spec.base_model}"
                )
            return base
    raise ValueError(
        f"no base-model folder for {spec.base_model[:19]}: pass the folder (saved with save_base_model) "
        f"explicitly; the adapter config names {spec.peft_config.get('base_model_name_or_path')!r}"
    )


def adapter_accuracy(
    base: BaseModel | nn.Module, state_dict: dict[str, torch.Tensor], spec: AdapterSpec, task: Any
) -> float:
    """Test accuracy in percent of ``base`` with an adapter on a registered task (NaN if a weight is not finite)."""
    from .zoo.tasks import load_task_data
    from .zoo.training import evaluate

    if not all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point()):
        return float("nan")
    data = load_task_data(task)
    return 100.0 * evaluate(load_adapter(base, state_dict, spec), data.x_test, data.y_test)[0]


def adapter_specs_of(checkpoints) -> list[dict[str, Any]]:
    """The distinct `AdapterSpec` dicts of the adapters among corpus checkpoints (rows with a peft config)."""
    out: dict[str, dict] = {}
    for c in checkpoints:
        hp = getattr(c.metadata, "hyperparams", None) or {}
        if adapter_base_of(hp) is None:
            continue
        spec = AdapterSpec(hp["peft_config"], c.layout, adapter_base_of(hp) or "unknown", hp.get("base_arch"))
        d = spec.to_dict()
        out.setdefault(json.dumps(d, sort_keys=True), d)
    return list(out.values())


def adapter_base_of(hyperparams: dict[str, Any] | None) -> str | None:
    """The base identity of a corpus row's hyperparameters if the row is an adapter (has a peft config), else None."""
    hp = hyperparams or {}
    if not isinstance(hp.get("peft_config"), dict):
        return None
    base = hp.get("base_model") or hp["peft_config"].get("base_model_name_or_path")
    return str(base) if base else ""
