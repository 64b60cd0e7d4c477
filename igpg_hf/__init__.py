"""igpg_hf: instruction-guided neural-network weight generation (IGPG) on the Hugging Face stack."""

__version__ = "0.1.0"
