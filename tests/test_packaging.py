"""Issue 12: everything the package needs ships in its wheel (.ci/run builds and runs one; this checks the parts)."""

from pathlib import Path

import pytest

import igpg_hf
import igpg_hf.cards as cards

ROOT = Path(igpg_hf.__file__).parent


def test_every_module_folder_is_a_package():
    """setup.py finds packages by their __init__.py: a folder without one is left out of the wheel."""
    folders = {p.parent for p in ROOT.rglob("*.py")}
    assert [str(f.relative_to(ROOT)) for f in sorted(folders) if not (f / "__init__.py").exists()] == []


def test_card_templates_are_found_and_a_missing_one_is_an_error(monkeypatch):
    for name in ("model_card.md", "dataset_card.md", "prior_card.md", "vqvae_card.md"):
        assert "{{" in cards.load_template(name)
    monkeypatch.setattr(cards, "_TEMPLATE_FOLDERS", ())
    with pytest.raises(FileNotFoundError, match="'nope.md' is missing"):
        cards.load_template("nope.md")
