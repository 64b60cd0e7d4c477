"""The model and dataset card templates of ``hub_cards/``, from a source checkout or from the installed package.

The templates live at the top level of the repository (``hub_cards/``, as the design card asks) and ship in the
wheel as the package data ``igpg_hf.hub_cards`` (setup.cfg maps that package to the folder). A missing template
is an error, never a stub card.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["read_card_template"]

_HERE = Path(__file__).resolve().parent
# the installed package data (a wheel), then the top-level folder of a checkout or an editable install
_FOLDERS = (_HERE / "hub_cards", _HERE.parent / "hub_cards")


def read_card_template(name: str) -> str:
    """The text of the template ``hub_cards/<name>`` (e.g. ``"model_card.md"``); FileNotFoundError if missing."""
    for folder in _FOLDERS:
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8")
    try:
        resource = resources.files("igpg_hf.hub_cards") / name
        if resource.is_file():
            return resource.read_text(encoding="utf-8")
    except ModuleNotFoundError:
        pass
    raise FileNotFoundError(
        f"card template {name!r} is missing: looked in {', '.join(map(str, _FOLDERS))} and the package data "
        "igpg_hf.hub_cards; reinstall igpg_hf (the wheel ships hub_cards/)"
    )
