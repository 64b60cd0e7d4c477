"""The zoo builder's named presets (`ZooConfig.from_preset`), as data: importing this module imports no torch,
so the CLI can list the presets in its help."""

from __future__ import annotations

__all__ = ["PRESETS"]


def _trainable_tasks(source: str | None = None) -> list[str]:
    from ..zoo.tasks import list_tasks

    return list_tasks(held_out=False, source=source)


# A Schürholt et al.-style grid kept sane. Calibration (tiny CNN, MNIST-5k, 15 epochs) gave 92-96 % test accuracy
# for these values; sigmoid, the +-0.1 uniform init, dropout 0.5 and weight decay 1e-2 gave 8-90 %, and in a first
# default build ~6 % of tiny-CNN runs combining SGD or the N(0, 0.05) init with relu/gelu never left chance level.
_GRID = dict(
    activations=["tanh", "relu", "gelu"],
    optimizers={"adam": [3e-3, 1e-3]},
    weight_decays=[1e-3, 1e-4],
    inits=["default", "kaiming_uniform", "xavier_uniform", "xavier_normal"],
    dropouts=[0.0, 0.1],
)
_FAMILY_GRIDS = {  # per family / architecture overrides (seeds and epochs sized for the CPU time budget)
    "mlp": {
        "seeds": list(range(20)),
        "epochs": 30,
        "keep_epochs": [28, 29, 30],
        "activations": ["tanh", "relu", "gelu", "sigmoid"],
        "optimizers": {"adam": [3e-3, 1e-3], "sgd": [3e-2]},
    },
    "mlp_tabular": {"seeds": list(range(12)), "epochs": 80, "keep_epochs": [78, 79, 80]},
    "cnn1d": {
        "seeds": list(range(12)),
        "epochs": 40,
        "keep_epochs": [38, 39, 40],
        "optimizers": {"adam": [1e-2], "sgd": [3e-2]},
    },
}
_MNIST_DEMO = ["mnist", "mnist_rot90", "mnist_permute1", "mnist_invert"]
_ROTATIONS = [
    "mnist",
    "mnist_rot30",
    "mnist_rot60",
    "mnist_rot90",
    "mnist_rot120",
    "mnist_rot150",
    "mnist_rot180",
    "mnist_rot270",
]


def resnet_depth_grid(lo: int, hi: int, held_out: tuple[list[int], ...]) -> list[list[int]]:
    """Every ResNet block configuration [n1, n2, n3] with each n in lo..hi, except ``held_out``."""
    r = range(lo, hi + 1)
    return [[a, b, c] for a in r for b in r for c in r if [a, b, c] not in held_out]


# the cross-architecture zoo's depths: n in 2..4 per stage, minus the interior configurations held out
RESNET_HELD_OUT_INTERIOR = ([3, 3, 3], [2, 4, 3], [4, 3, 2])
RESNET_DEPTHS = resnet_depth_grid(2, 4, RESNET_HELD_OUT_INTERIOR)

PRESETS = {
    "tiny": lambda: dict(
        name="tiny",
        tasks=["iris", "wine"],
        seeds=[0, 1],
        optimizers={"adam": [3e-2]},
        epochs=2,
        keep_epochs=[1, 2],
    ),
    "demo": lambda: dict(
        name="demo",
        tasks=_MNIST_DEMO,
        seeds=list(range(12)),
        activations=["tanh"],
        optimizers={"adam": [3e-3, 1e-3]},
        epochs=15,
        keep_epochs=[13, 14, 15],
    ),
    "default": lambda: dict(
        name="default",
        tasks=_trainable_tasks(),
        seeds=list(range(8)),
        **_GRID,
        epochs=15,
        keep_epochs=[13, 14, 15],
        overrides=_FAMILY_GRIDS,
    ),
    "related": lambda: dict(
        name="related",
        tasks=_ROTATIONS,
        zoo_kind="shared_init",
        seeds=list(range(12)),
        activations=["tanh"],
        optimizers={"adam": [3e-3, 1e-3]},
        epochs=15,
        keep_epochs=[13, 14, 15],
    ),
    # small ResNets on 8x8 digits over a grid of depths, like the paper's 125 CIFAR ResNets ([4,4,4]..[8,8,8]): every
    # [n1, n2, n3] with n in 2..4 except three interior ones the cross-architecture experiment holds out
    # ([3,3,3], [2,4,3], [4,3,2]; it also asks for depths outside the grid: [1,1,1], [2,1,2], [5,5,5], [4,5,4]);
    # 24 configurations x 4 seeds, the last three kept epochs: 288 checkpoints
    "resnet_depths": lambda: dict(
        name="resnet_depths",
        tasks=["digits"],
        architectures={"digits": "resnet_small"},
        arch_grid={"blocks": RESNET_DEPTHS},
        seeds=list(range(4)),
        optimizers={"adam": [3e-3]},
        epochs=15,
        keep_epochs=[11, 13, 15],
    ),
    # the same depths as a lineage: one base trained at [2, 2, 2] (15 epochs), every configuration started from it moved
    # to its depth (blocks cut, or added as identity maps) and fine-tuned 3 epochs per seed, epochs 1-3 kept: 288
    # checkpoints + the base's 3, descendants of one network (a zoo with far fewer distinct weights than 96
    # independent runs; the cross-architecture experiment measures both)
    "resnet_lineage": lambda: dict(
        name="resnet_lineage",
        tasks=["digits"],
        architectures={"digits": "resnet_small"},
        zoo_kind="finetuned",
        arch_grid={"blocks": RESNET_DEPTHS},
        seeds=list(range(4)),
        optimizers={"adam": [1e-3]},
        epochs=15,
        keep_epochs=[13, 14, 15],
        finetune_epochs=3,
    ),
    # LoRA adapters of one 46,730-parameter CNN trained on MNIST (5 epochs), on every 28x28 task that is not held out:
    # 19 tasks x 2 seeds x ranks 2 and 4 = 76 adapters of 3 epochs (the `lora` experiment's zoo; issue 11)
    "lora": lambda: dict(
        name="lora",
        tasks=_trainable_tasks("mnist"),
        zoo_kind="lora",
        base_tasks={"lora_base_cnn": "mnist"},
        lora={
            "ranks": [2, 4],
            "alpha_ratio": 2.0,
            "target_modules": ["features.conv2", "head.fc1"],
            "modules_to_save": ["head.fc2"],
        },
        seeds=[0, 1],
        optimizers={"adam": [3e-3]},
        epochs=5,
        keep_epochs=[5],
        finetune_epochs=3,
    ),
    # seconds, for tests: adapters of the 2,464-parameter tiny CNN after one epoch, ranks 1 and 2
    "lora_tiny": lambda: dict(
        name="lora_tiny",
        tasks=["mnist_rot90", "mnist_permute1"],
        zoo_kind="lora",
        base_tasks={"tiny_cnn": "mnist"},
        lora={
            "ranks": [1, 2],
            "target_modules": ["features.conv2", "head.fc1"],
            "modules_to_save": ["head.fc2"],
        },
        seeds=[0],
        optimizers={"adam": [1e-2]},
        epochs=1,
        keep_epochs=[1],
        finetune_epochs=1,
    ),
    # For a GPU: the runs of one (task, architecture with its activation and dropout) form one vmap batch, so
    # dropout stays 0 to keep batches large; seeds, inits, optimizers, lrs and decays vary inside a batch.
    "gpu": lambda: dict(
        name="gpu",
        tasks=_trainable_tasks(),
        seeds=list(range(64)),
        **{**_GRID, "dropouts": [0.0]},
        epochs=15,
        keep_epochs=[11, 13, 15],
        overrides={k: {**v, "seeds": list(range(64))} for k, v in _FAMILY_GRIDS.items()},
    ),
}
