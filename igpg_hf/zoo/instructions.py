"""Many wordings per task: a small grammar of instructions, split by wording into training and held-out sets.

A registered task is a data source plus transforms (`igpg_hf.zoo.tasks`). Its wordings are

    template  x  source phrase  x  modifier phrase

e.g. ``"Can you build a network that recognises {x}?"`` with ``"digits written by hand on paper"`` and
``", spun by {d} degrees counter-clockwise"``. Every template and phrase carries a *split*:

- ``"train"``: the prior trains on wordings made only of training pieces (the task's canonical instruction and
  its registered paraphrases are training wordings too);
- ``"calibration"``: wordings made only of calibration pieces calibrate the out-of-distribution threshold
  (`igpg_hf.conditioning.coverage`), and are never used to train or to evaluate;
- ``"evaluation"``: wordings made only of evaluation pieces measure robustness (the ``instructions`` experiment).

The split is by wording (templates and synonyms), not by task: every task has wordings in every split, and a
held-out wording shares no template or synonym with any training wording. Phrases also carry a register
(``short`` names such as "MNIST", ``plain`` descriptions with or without sizes and class counts, ``colloquial``
ones). Everything is deterministic: the same task always gives the same wordings in the same order.

`UNRELATED_INSTRUCTIONS` is the committed list of instructions a classifier generator cannot serve (translation,
regression, speech, detection, generation, other classification domains, ...), split the same way into
calibration and evaluation halves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .tasks import TaskSpec, get_task

__all__ = [
    "SPLITS",
    "Phrase",
    "Wording",
    "task_wordings",
    "training_instructions",
    "heldout_instructions",
    "unrelated_instructions",
    "grammar_pieces",
    "UNRELATED_INSTRUCTIONS",
]

SPLITS = ("train", "calibration", "evaluation")


@dataclass(frozen=True)
class Phrase:
    """One template or synonym of the grammar, its split and register."""

    text: str
    split: str = "train"
    register: str = "plain"


@dataclass(frozen=True)
class Wording:
    """One instruction for a task and the grammar pieces it was made of (all of one split)."""

    text: str
    task: str
    split: str
    pieces: tuple[str, ...]  # template, source phrase, modifier phrase ("" when the task has none)
    register: str


def _p(split: str, register: str, *texts: str) -> list[Phrase]:
    return [Phrase(t, split, register) for t in texts]


# ------------------------------------------------------------------------------------------------------------
# Templates: how a request is put. {x} is the task description (source phrase + modifier phrase).
# ------------------------------------------------------------------------------------------------------------
TEMPLATES: list[Phrase] = [
    *_p(
        "train",
        "plain",
        "Classify {x}",
        "Generate weights for a network that classifies {x}",
        "I need a classifier of {x}",
        "Recognize {x}",
        "Weights for classifying {x}",
        "A network for {x}",
        "Predict the labels of {x}",
    ),
    *_p("train", "short", "{x}"),
    *_p("train", "colloquial", "Train me a model on {x}"),
    *_p("calibration", "plain", "Looking for a net that labels {x}", "Need weights to categorise {x}"),
    *_p("calibration", "colloquial", "Make me a model that sorts {x}"),
    *_p(
        "evaluation",
        "plain",
        "Can you build a network that recognises {x}?",
        "Set up a classifier for {x}",
        "Produce parameters of a model that identifies {x}",
    ),
    *_p("evaluation", "colloquial", "Give me a model to tell apart {x}", "My task is sorting {x}"),
]

# ------------------------------------------------------------------------------------------------------------
# Sources: what the inputs are. {k} is the generator seed of the synthetic sources.
# ------------------------------------------------------------------------------------------------------------
SOURCES: dict[str, list[Phrase]] = {
    "mnist": [
        *_p("train", "short", "MNIST", "MNIST digits"),
        *_p(
            "train",
            "plain",
            "handwritten digits 0-9 from 28x28 grayscale images",
            "handwritten digits",
            "28x28 handwritten digit images into 10 classes",
            "the MNIST handwritten digit dataset",
        ),
        *_p("train", "colloquial", "scribbled numbers from 0 to 9"),
        *_p("calibration", "plain", "grayscale pictures of hand-written numbers in ten classes"),
        *_p("calibration", "colloquial", "numbers jotted down by hand"),
        *_p("evaluation", "short", "the MNIST dataset"),
        *_p("evaluation", "plain", "hand-drawn numerals zero through nine in 28 by 28 pixel images"),
        *_p("evaluation", "colloquial", "digits that people wrote on paper"),
    ],
    "digits": [
        *_p("train", "short", "sklearn digits", "8x8 digits"),
        *_p(
            "train",
            "plain",
            "handwritten digits 0-9 from 8x8 grayscale images",
            "handwritten digits",
            "the optical recognition of handwritten digits dataset",
        ),
        *_p("train", "colloquial", "tiny blurry digit images"),
        *_p("calibration", "plain", "low-resolution 8 by 8 scans of handwritten numbers"),
        *_p("calibration", "short", "load_digits"),
        *_p("evaluation", "short", "the UCI digits data"),
        *_p("evaluation", "plain", "hand-written numerals zero to nine at 8x8 pixels"),
        *_p("evaluation", "colloquial", "little pixelated pictures of handwritten numbers"),
    ],
    "mnist1d": [
        *_p("train", "short", "MNIST-1D"),
        *_p(
            "train",
            "plain",
            "the digits 0-9 of MNIST-1D from 40-sample one-dimensional signals",
            "one-dimensional MNIST signals",
            "1-D digit signals of length 40 into 10 classes",
        ),
        *_p("train", "colloquial", "wiggly 1D curves that stand for digits"),
        *_p("calibration", "plain", "digit patterns drawn as 1-D sequences"),
        *_p("calibration", "short", "MNIST 1D"),
        *_p("evaluation", "short", "the MNIST1D benchmark"),
        *_p("evaluation", "plain", "ten digit classes encoded as forty-point one-dimensional series"),
        *_p("evaluation", "colloquial", "squiggly signals, each one a digit"),
    ],
    "iris": [
        *_p("train", "short", "Iris", "the iris dataset"),
        *_p(
            "train",
            "plain",
            "iris flowers into 3 species from 4 measurements",
            "iris species from sepal and petal measurements",
        ),
        *_p("train", "colloquial", "which kind of iris a flower is"),
        *_p("calibration", "plain", "three iris varieties from flower dimensions"),
        *_p("calibration", "short", "Fisher iris"),
        *_p("evaluation", "short", "Fisher's iris data"),
        *_p("evaluation", "plain", "setosa, versicolor or virginica from petal and sepal lengths and widths"),
        *_p("evaluation", "colloquial", "the species of an iris plant from four numbers about its flower"),
    ],
    "wine": [
        *_p("train", "short", "Wine", "the wine dataset"),
        *_p(
            "train",
            "plain",
            "wines into 3 cultivars from 13 chemical measurements",
            "wine cultivars from a chemical analysis",
        ),
        *_p("train", "colloquial", "which grower a wine came from"),
        *_p("calibration", "plain", "three wine grape cultivars from chemistry"),
        *_p("calibration", "short", "UCI wine"),
        *_p("evaluation", "short", "the wine recognition data"),
        *_p("evaluation", "plain", "the cultivar of Italian wines from thirteen chemical properties"),
        *_p("evaluation", "colloquial", "the origin of a wine from its lab test results"),
    ],
    "breast_cancer": [
        *_p("train", "short", "breast cancer", "the breast cancer dataset"),
        *_p(
            "train",
            "plain",
            "breast tumours as malignant or benign from 30 cell measurements",
            "tumours as benign or malignant from cell nucleus features",
        ),
        *_p("train", "colloquial", "whether a breast lump is cancer"),
        *_p("calibration", "plain", "benign versus malignant breast masses from biopsy features"),
        *_p("calibration", "short", "WDBC"),
        *_p("evaluation", "short", "the Wisconsin diagnostic breast cancer data"),
        *_p("evaluation", "plain", "malignant or benign tumours from thirty features of cell nuclei"),
        *_p("evaluation", "colloquial", "whether a breast biopsy shows cancer or not"),
    ],
    "synthetic": [
        *_p("train", "short", "synthetic dataset {k}"),
        *_p(
            "train",
            "plain",
            "synthetic 20-feature data into 4 clusters (generator seed {k})",
            "make_classification data with seed {k}",
            "the synthetic 4-class problem number {k}",
        ),
        *_p("train", "colloquial", "made-up tabular data, version {k}"),
        *_p("calibration", "plain", "generated 20-dimensional data with seed {k}"),
        *_p("calibration", "short", "synthetic set {k}"),
        *_p("evaluation", "short", "toy dataset #{k}"),
        *_p("evaluation", "plain", "artificial four-class data with twenty features from random seed {k}"),
        *_p("evaluation", "colloquial", "fake random data, variant {k}"),
    ],
}

# ------------------------------------------------------------------------------------------------------------
# Modifiers: how a task changes its source. {d}: degrees; {dw}: degrees in words; {k}: permutation number.
# ------------------------------------------------------------------------------------------------------------
MODIFIERS: dict[str, list[Phrase]] = {
    "rotate": [
        *_p(
            "train",
            "plain",
            ", rotated by {d} degrees",
            " rotated {d}°",
            ", turned {d} degrees",
            " at a rotation of {d} degrees",
        ),
        *_p("train", "colloquial", ", rotated {dw} degrees"),
        *_p("calibration", "plain", ", tilted {d} degrees", " with a {d}-degree rotation"),
        *_p(
            "evaluation",
            "plain",
            ", spun by {d} degrees counter-clockwise",
            " that were rotated through {d}°",
        ),
        *_p("evaluation", "colloquial", ", turned round by {dw} degrees"),
    ],
    "flip_lr": [
        *_p("train", "plain", ", mirrored left to right", ", flipped horizontally"),
        *_p("train", "colloquial", " in mirror image"),
        *_p("calibration", "plain", ", reflected left-right"),
        *_p("evaluation", "plain", ", reflected across the vertical axis"),
        *_p("evaluation", "colloquial", ", as seen in a looking glass"),
    ],
    "reverse": [  # a left-right flip of 1-D signals
        *_p("train", "plain", ", time-reversed", ", reversed in time"),
        *_p("train", "colloquial", ", with the signal run backwards"),
        *_p("calibration", "plain", ", read from end to start"),
        *_p("evaluation", "plain", ", with the time axis flipped"),
        *_p("evaluation", "colloquial", ", played in reverse"),
    ],
    "flip_ud": [
        *_p("train", "plain", ", flipped upside down", ", flipped vertically"),
        *_p("train", "colloquial", ", mirrored top to bottom"),
        *_p("calibration", "plain", ", reflected top-bottom"),
        *_p("evaluation", "plain", ", reflected across the horizontal axis"),
        *_p("evaluation", "colloquial", ", with top and bottom swapped by a mirror"),
    ],
    "invert": [
        *_p(
            "train",
            "plain",
            ", with inverted intensities (white background)",
            ", with inverted intensities",
            ", color-inverted",
        ),
        *_p("train", "colloquial", " as negative images"),
        *_p("calibration", "plain", ", with black and white swapped"),
        *_p("evaluation", "plain", ", in inverted colours: dark strokes on a white background"),
        *_p("evaluation", "colloquial", ", shown like photographic negatives"),
    ],
    "noise": [
        *_p(
            "train",
            "plain",
            ", corrupted by strong Gaussian pixel noise",
            ", with added Gaussian noise",
            ", with heavy Gaussian noise",
        ),
        *_p("train", "colloquial", ", very noisy"),
        *_p("calibration", "plain", ", buried in random noise"),
        *_p("evaluation", "plain", ", with strong additive noise on every value"),
        *_p("evaluation", "colloquial", ", degraded by lots of random static"),
    ],
    "permute_labels": [
        *_p(
            "train",
            "plain",
            ", with labels permuted (permutation {k})",
            ", with shuffled labels (permutation {k})",
            " under label permutation {k}",
        ),
        *_p("train", "short", " perm{k}"),
        *_p("calibration", "plain", ", classes renamed by permutation {k}"),
        *_p("evaluation", "plain", ", whose class labels are scrambled with permutation number {k}"),
        *_p("evaluation", "colloquial", ", using the mixed-up label order #{k}"),
    ],
    "evenodd": [
        *_p("train", "plain", " as even or odd", ": even versus odd", " by parity"),
        *_p("calibration", "colloquial", ", odd or even?"),
        *_p("evaluation", "plain", ": is the digit even or odd"),
        *_p("evaluation", "colloquial", ", sorted into even and odd numbers"),
    ],
    "lt5": [
        *_p("train", "plain", " as below five or not", ": smaller than 5 versus 5 and above"),
        *_p("train", "colloquial", " as low (0-4) or high (5-9)"),
        *_p("calibration", "plain", ", under five or not"),
        *_p("evaluation", "plain", ": is the digit less than five"),
        *_p("evaluation", "colloquial", ", split into small digits and big digits at 5"),
    ],
    "3v8": [
        *_p("train", "plain", ": tell a 3 from an 8", ": 3 versus 8"),
        *_p("train", "colloquial", ", only threes and eights"),
        *_p("calibration", "colloquial", ": 3 or 8?"),
        *_p("evaluation", "plain", ": distinguish the digit 3 from the digit 8"),
        *_p("evaluation", "colloquial", ", just the 3s against the 8s"),
    ],
    "0to4": [
        *_p("train", "plain", ", only the digits 0 to 4", ", restricted to digits 0-4"),
        *_p("train", "short", ", classes 0, 1, 2, 3, 4"),
        *_p("calibration", "plain", ", digits zero to four only"),
        *_p("evaluation", "plain", ", limited to the first five digits (0 through 4)"),
        *_p("evaluation", "colloquial", ", keeping just the 0s, 1s, 2s, 3s and 4s"),
    ],
}

# degree-specific phrases (a quarter turn ...), added to the rotation phrases of those angles
_ROTATION_SPECIAL: dict[int, list[Phrase]] = {
    90: [
        *_p("train", "colloquial", ", turned a quarter turn counter-clockwise"),
        *_p("evaluation", "colloquial", ", rotated a quarter turn to the left"),
    ],
    180: [
        *_p("train", "colloquial", ", turned half a turn"),
        *_p("evaluation", "colloquial", ", rotated by a half turn"),
    ],
    270: [
        *_p("train", "colloquial", ", turned a quarter turn clockwise"),
        *_p("evaluation", "colloquial", ", rotated a quarter turn to the right"),
    ],
}

_NUMBER_WORDS = {
    30: "thirty",
    45: "forty-five",
    60: "sixty",
    90: "ninety",
    120: "one hundred and twenty",
    135: "one hundred and thirty-five",
    150: "one hundred and fifty",
    180: "one hundred and eighty",
    270: "two hundred and seventy",
}

# ------------------------------------------------------------------------------------------------------------
# Unrelated instructions: nothing a classifier of these sources can do. Calibration and evaluation halves.
# ------------------------------------------------------------------------------------------------------------
UNRELATED_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "calibration": (
        "Translate English sentences into French",
        "Predict house prices from square footage",
        "Transcribe spoken English audio into text",
        "Detect pedestrians and cars in street camera images",
        "Generate photorealistic images of cats from text prompts",
        "Summarize long news articles in three sentences",
        "Forecast tomorrow's electricity demand from past hourly load",
        "Segment tumours in brain MRI scans",
        "Classify movie reviews as positive or negative",
        "Recommend songs to users from their listening history",
        "Play Atari Breakout from raw pixels with reinforcement learning",
        "Answer questions about a paragraph of Wikipedia text",
        "Estimate the depth of every pixel in a photo",
        "Classify emails as spam or not spam",
        "Write a short poem about the sea",
        "Predict a person's age from a photo of their face",
        "Cluster customers by purchasing behaviour",
        "Generate Python code from a natural language description",
        "Identify bird species from their songs",
        "What is the weather going to be like tomorrow?",
        "Detect fraudulent credit card transactions",
        "Denoise speech recordings made in a noisy cafe",
        "Classify CIFAR-10 photos of airplanes, cars and animals",
        "Caption images with a sentence describing them",
        "Predict protein structure from an amino acid sequence",
    ),
    "evaluation": (
        "Translate German text into English",
        "Predict the selling price of a used car from its mileage",
        "Convert speech to text for phone calls",
        "Find and box every face in a group photo",
        "Generate new music in the style of Bach",
        "Write a summary of a scientific paper",
        "Forecast stock prices for next week",
        "Segment roads and buildings in satellite images",
        "Classify tweets by sentiment",
        "Suggest movies a user might like",
        "Control a robot arm to pick up objects",
        "Build a chatbot that answers customer support questions",
        "Estimate the pose of a human body in a video",
        "Detect toxic comments in online forums",
        "Compose a limerick about a cat",
        "Predict how long a patient will stay in hospital",
        "Group news articles into topics without labels",
        "Autocomplete the next word a user types",
        "Recognize the language spoken in an audio clip",
        "How do I bake sourdough bread?",
        "Detect anomalies in server log files",
        "Separate vocals from the instruments in a song",
        "Classify ImageNet photos into a thousand categories",
        "Generate a 3D model of a chair from a sketch",
        "Predict the boiling point of a molecule from its structure",
    ),
}


# ------------------------------------------------------------------------------------------------------------
# Grammar
# ------------------------------------------------------------------------------------------------------------
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _modifier(spec: TaskSpec) -> tuple[str | None, dict[str, Any]]:
    """(modifier key, its format values) of a task built from one source and at most one transform."""
    if not spec.transforms:
        return "", {}
    if len(spec.transforms) > 1:
        return None, {}
    kind, arg = spec.transforms[0]
    if kind == "rotate":
        d = int(arg) if float(arg).is_integer() else arg
        return "rotate", {"d": d, "dw": _NUMBER_WORDS.get(d, str(d))}
    if kind == "flip":
        if arg == "lr":
            return ("reverse" if len(spec.input_shape) == 2 else "flip_lr"), {}
        return "flip_ud", {}
    if kind in ("invert", "noise"):
        return kind, {}
    if kind == "permute_labels":
        return "permute_labels", {"k": arg}
    if kind == "relabel":
        m = list(arg)
        if m == [i % 2 for i in range(len(m))]:
            return "evenodd", {}
        if m == [int(i >= 5) for i in range(10)]:
            return "lt5", {}
        if m == [-1, -1, -1, 0, -1, -1, -1, -1, 1, -1]:
            return "3v8", {}
        if m == [0, 1, 2, 3, 4, -1, -1, -1, -1, -1]:
            return "0to4", {}
    return None, {}


def _source(spec: TaskSpec) -> tuple[str | None, dict[str, Any]]:
    if spec.source in SOURCES:
        return spec.source, {}
    if spec.source.startswith("synthetic"):
        return "synthetic", {"k": int(spec.source.removeprefix("synthetic"))}
    return None, {}


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def task_wordings(task: str | TaskSpec, split: str = "train") -> list[Wording]:
    """Every wording of ``task`` made of ``split`` pieces only, in a fixed order (no duplicates).

    Training wordings start with the task's canonical instruction and its registered paraphrases. A task whose
    source or transforms the grammar does not describe (a user task) has only those, and no held-out wordings.
    Raises ValueError on an unknown task or split.
    """
    _check_split(split)
    spec = get_task(task)
    out: list[Wording] = []
    seen: set[str] = set()

    def add(text: str, pieces: tuple[str, ...], register: str) -> None:
        if text not in seen:
            seen.add(text)
            out.append(Wording(text, spec.name, split, pieces, register))

    if split == "train":
        for t in spec.instructions:
            add(t, ("registered",), "plain")
    src, src_vals = _source(spec)
    mod, mod_vals = _modifier(spec)
    if src is None or mod is None:
        return out
    sources = [p for p in SOURCES[src] if p.split == split]
    mods = [Phrase("", split)] if mod == "" else MODIFIERS[mod] + _ROTATION_SPECIAL.get(mod_vals.get("d"), [])
    mods = [p for p in mods if p.split == split]
    for tpl in (p for p in TEMPLATES if p.split == split):
        for s in sources:
            for m in mods:
                x = s.text.format(**src_vals) + m.text.format(**mod_vals)
                # a register other than plain marks the wording (short names, colloquial phrases)
                reg = next((p.register for p in (m, s, tpl) if p.register != "plain"), "plain")
                add(_capitalize(tpl.text.format(x=x)), (tpl.text, s.text, m.text), reg)
    return out


def training_instructions(task: str | TaskSpec) -> tuple[str, ...]:
    """The instructions the prior trains on for ``task``: canonical first, then paraphrases and grammar wordings."""
    return tuple(w.text for w in task_wordings(task, "train"))


def heldout_instructions(
    task: str | TaskSpec, split: str = "evaluation", n: int | None = None, seed: int = 0
) -> tuple[str, ...]:
    """``n`` held-out wordings of ``task`` (all if None), a deterministic sample spread over registers.

    ``split`` is "evaluation" (the experiment's) or "calibration" (the out-of-distribution threshold's).
    """
    if split == "train":
        raise ValueError("heldout_instructions takes split='evaluation' or 'calibration', got 'train'")
    ws = task_wordings(task, split)
    if n is None or n >= len(ws):
        return tuple(w.text for w in ws)
    rng = random.Random(f"{get_task(task).name}/{split}/{seed}")
    by_reg: dict[str, list[Wording]] = {}
    for w in ws:
        by_reg.setdefault(w.register, []).append(w)
    for v in by_reg.values():
        rng.shuffle(v)
    picked: list[Wording] = []
    while len(picked) < n:  # round robin over registers, so short and colloquial wordings are always in
        for reg in sorted(by_reg):
            if by_reg[reg] and len(picked) < n:
                picked.append(by_reg[reg].pop())
    return tuple(w.text for w in picked)


def unrelated_instructions(split: str = "evaluation") -> tuple[str, ...]:
    """The committed unrelated instructions of one half ("calibration" or "evaluation")."""
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    return UNRELATED_INSTRUCTIONS[split]


def grammar_pieces(split: str) -> list[str]:
    """Every template and phrase text of one split (what the wording-split test checks)."""
    _check_split(split)
    phrases = [
        *TEMPLATES,
        *(p for v in SOURCES.values() for p in v),
        *(p for v in MODIFIERS.values() for p in v),
    ]
    phrases += [p for v in _ROTATION_SPECIAL.values() for p in v]
    return [p.text for p in phrases if p.split == split]
