"""Model and dataset card templates; installed as the package data igpg_hf.hub_cards (see setup.py)."""
