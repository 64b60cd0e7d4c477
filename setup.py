"""setuptools: metadata and dependencies live in setup.cfg; this adds what setup.cfg cannot say.

The card templates stay at the top of the repository (``hub_cards/``, where the design card puts them) and ship
in the wheel as the package data ``igpg_hf.hub_cards``: a package mapped onto that folder.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["igpg_hf", "igpg_hf.*"]), "igpg_hf.hub_cards"],
    package_dir={"igpg_hf.hub_cards": "hub_cards"},
    package_data={"igpg_hf": ["py.typed"], "igpg_hf.hub_cards": ["*.md"]},
)
