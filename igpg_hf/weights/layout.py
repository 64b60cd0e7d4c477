"""Exact state-dict layout: names, shapes and dtypes; bytes and vector round trips.

`WeightLayout` is the contract between a module and its weights as data:
- ``to_bytes`` / ``from_bytes`` store a whole state dict (any dtype, buffers included) bit for bit;
- ``vectorize`` / ``devectorize`` give the floating-point entries as one float32 vector in
  state-dict order, which for every torch layer is the paper's ``vec(W) ⊕ b`` per layer;
- ``layer_slices`` groups that vector by layer (module prefix) for layer-wise chunking.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["LayoutEntry", "WeightLayout", "check_tensor", "layer_name", "match_layout"]

_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def check_tensor(name: str, value: Any) -> None:
    """TypeError naming ``name`` unless ``value`` is a dense tensor with data and a supported dtype.

    Meta tensors (no data), sparse or quantized layouts and unsupported dtypes would otherwise fail later inside
    torch with errors that name no entry.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
    if value.is_meta:
        raise TypeError(
            f"state dict entry {name!r} is a meta tensor (shape only, no values); load real weights"
        )
    if value.layout != torch.strided or value.is_quantized:
        raise TypeError(
            f"state dict entry {name!r} has layout {value.layout}{' (quantized)' if value.is_quantized else ''}; "
            "only dense tensors are supported (convert with .to_dense() / .dequantize())"
        )
    if str(value.dtype).removeprefix("torch.") not in _DTYPES:
        raise TypeError(
            f"state dict entry {name!r} has unsupported dtype {value.dtype}; supported: {', '.join(_DTYPES)}"
        )


def layer_name(entry_name: str) -> str:
    """The layer an entry belongs to: its module prefix (``head.fc1.weight`` -> ``head.fc1``)."""
    return entry_name.rsplit(".", 1)[0] if "." in entry_name else entry_name


@dataclass(frozen=True)
class LayoutEntry:
    """One state-dict entry."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.torch_dtype).element_size()


class WeightLayout:
    """Ordered names, shapes and dtypes of a state dict, with exact serialization both ways."""

    def __init__(self, entries: list[LayoutEntry]):
        if not entries:
            raise ValueError("a weight layout needs at least one entry")
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError("duplicate entry names in layout")
        self.entries = list(entries)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> WeightLayout:
        """The layout of a state dict, in its key order; TypeError naming an entry that is not plain tensor data."""
        entries = []
        for k, v in state_dict.items():
            check_tensor(k, v)
            entries.append(LayoutEntry(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")))
        return cls(entries)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> WeightLayout:
        return cls.from_state_dict(module.state_dict())

    def to_list(self) -> list[list[Any]]:
        return [[e.name, list(e.shape), e.dtype] for e in self.entries]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    @classmethod
    def from_list(cls, items: list) -> WeightLayout:
        return cls([LayoutEntry(n, tuple(int(s) for s in shape), dt) for n, shape, dt in items])

    @classmethod
    def from_json(cls, s: str) -> WeightLayout:
        return cls.from_list(json.loads(s))

    def __eq__(self, other) -> bool:
        return isinstance(other, WeightLayout) and self.entries == other.entries

    def __repr__(self) -> str:
        return f"WeightLayout({len(self.entries)} entries, {self.num_float} float values)"

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def float_entries(self) -> list[LayoutEntry]:
        return [e for e in self.entries if e.is_float]

    @property
    def num_float(self) -> int:
        """Number of floating-point values: the length of ``vectorize``'s output."""
        return sum(e.numel for e in self.float_entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    # -- validation -----------------------------------------------------------------------------
    def validate(self, state_dict: dict[str, torch.Tensor], check_finite: bool = True) -> None:
        """Raise ValueError naming the first key, shape or dtype mismatch, or non-finite weights."""
        missing = [e.name for e in self.entries if e.name not in state_dict]
        extra = [k for k in state_dict if k not in {e.name for e in self.entries}]
        if missing or extra:
            raise ValueError(
                f"state dict does not match layout: missing keys {missing[:5]}, unexpected keys {extra[:5]}"
            )
        for e in self.entries:
            t = state_dict[e.name]
            check_tensor(e.name, t)
            if tuple(t.shape) != e.shape:
                raise ValueError(
                    f"state dict entry {e.name!r} has shape {tuple(t.shape)}, layout expects {e.shape}"
                )
            if str(t.dtype).removeprefix("torch.") != e.dtype:
                raise ValueError(f"state dict entry {e.name!r} has dtype {t.dtype}, layout expects {e.dtype}")
            if check_finite and e.is_float and not torch.isfinite(t).all():
                raise ValueError(f"state dict entry {e.name!r} contains NaN or infinite values")

    # -- exact bytes ----------------------------------------------------------------------------
    def to_bytes(self, state_dict: dict[str, torch.Tensor]) -> bytes:
        """All entries, in layout order, as raw little-endian bytes (bit-exact for every dtype)."""
        self.validate(state_dict, check_finite=False)
        parts = [
            state_dict[e.name].detach().cpu().contiguous().reshape(-1).view(torch.uint8) for e in self.entries
        ]
        return torch.cat(parts).numpy().tobytes()

    def from_bytes(self, data: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
        """Inverse of ``to_bytes``, bit for bit, whatever the entries' sizes and alignment."""
        if len(data) != self.nbytes:
            raise ValueError(f"weight bytes have length {len(data)}, layout expects {self.nbytes}")
        out, off = {}, 0
        for e in self.entries:
            n = e.nbytes
            # each entry gets its own buffer: a view at an offset that is not a multiple of the element size
            # fails (an fp16 entry of 3 values before an fp32 one), so entries are never viewed in place
            raw = torch.empty(n, dtype=torch.uint8)
            if n:
                raw.numpy()[:] = memoryview(data)[off : off + n]
            out[e.name] = raw.view(e.torch_dtype).reshape(e.shape)
            off += n
        return out

    def arrange(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of ``state_dict`` in this layout's order, matched by name (ValueError naming missing keys)."""
        missing = [e.name for e in self.entries if e.name not in state_dict]
        if missing:
            raise ValueError(f"state dict lacks the layout's entries {missing[:5]}")
        return {e.name: state_dict[e.name] for e in self.entries}

    def check_finite(self, vector: torch.Tensor, what: str = "weights") -> None:
        """ValueError naming ``what`` and every entry of the vector (D,) that holds NaN or infinite values."""
        if torch.isfinite(vector).all():
            return
        bad = [
            f"{e.name!r} ({int((~torch.isfinite(vector[s])).sum())} of {e.numel})"
            for e, s in self.entry_slices()
            if not torch.isfinite(vector[s]).all()
        ]
        raise ValueError(f"{what}: NaN or infinite values in {', '.join(bad[:5])}")

    # -- float vector ---------------------------------------------------------------------------
    def vectorize(self, state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        """Floating-point entries concatenated in state-dict order as one float32 vector (D,)."""
        self.validate(state_dict, check_finite=False)
        return torch.cat([state_dict[e.name].detach().reshape(-1).float().cpu() for e in self.float_entries])

    def devectorize(
        self, vector: torch.Tensor, fill: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Inverse of ``vectorize``; non-float entries (e.g. BatchNorm counters) come from ``fill`` or zeros."""
        if vector.ndim != 1 or vector.numel() != self.num_float:
            raise ValueError(
                f"weight vector has shape {tuple(vector.shape)}, layout expects ({self.num_float},)"
            )
        out, off = {}, 0
        for e in self.entries:
            if e.is_float:
                out[e.name] = vector[off : off + e.numel].reshape(e.shape).to(e.torch_dtype).clone()
                off += e.numel
            elif fill is not None and e.name in fill:
                out[e.name] = fill[e.name].clone()
            else:
                out[e.name] = torch.zeros(e.shape, dtype=e.torch_dtype)
        return out

    def entry_slices(self) -> list[tuple[LayoutEntry, slice]]:
        """Where each float entry lives in the vector."""
        out, off = [], 0
        for e in self.float_entries:
            out.append((e, slice(off, off + e.numel)))
            off += e.numel
        return out

    def layer_slices(self) -> list[tuple[str, slice]]:
        """Contiguous vector ranges per layer (module prefix): the paper's per-layer ``vec(W) ⊕ b``."""
        out: list[tuple[str, slice]] = []
        for e, s in self.entry_slices():
            name = layer_name(e.name)
            if out and out[-1][0] == name and out[-1][1].stop == s.start:
                out[-1] = (name, slice(out[-1][1].start, s.stop))
            else:
                out.append((name, s))
        return out


def match_layout(target: WeightLayout, *trained: list | None) -> WeightLayout:
    """The layout to encode or decode ``target``'s weights in, given the layouts a model was trained on.

    Entries are matched by name, never by position. ``trained`` are lists of layouts (`WeightLayout` or
    ``to_list()`` form; None or empty lists are skipped), e.g. ``prior.config.trained_layouts``:

    - a trained layout with the same entry names gives the order (safetensors files store keys sorted, so a
      model trained on them learned that order); shapes and dtypes come from ``target``;
    - a trained layout with the same shapes and dtypes under other names is a ValueError naming the differing
      keys (a wrapper prefix such as DDP's ``module.``, or renamed layers: decoding by position would scramble);
    - otherwise ``target`` itself: a new architecture, in its module's order.
    """
    layouts = [
        t if isinstance(t, WeightLayout) else WeightLayout.from_list(t) for lst in trained for t in lst or ()
    ]
    names = {e.name for e in target.entries}
    by_name = {e.name: e for e in target.entries}
    for lay in layouts:
        if {e.name for e in lay.entries} == names:
            return WeightLayout([by_name[e.name] for e in lay.entries])
    signature = sorted((e.shape, e.dtype) for e in target.entries)
    for lay in layouts:
        if sorted((e.shape, e.dtype) for e in lay.entries) == signature:
            ours = [e.name for e in target.entries if e.name not in {x.name for x in lay.entries}]
            theirs = [e.name for e in lay.entries if e.name not in names]
            raise ValueError(
                "the architecture's entries have the shapes of a layout the model was trained on but other "
                f"names: {ours[:5]} here, {theirs[:5]} in training. Weights are matched by name: rename the "
                "entries (or re-ingest the training checkpoints without wrapper prefixes such as 'module.')"
            )
    return target
