"""A text encoder small enough that a test pipeline saves and loads in a blink."""

import torch


def tiny_text_encoder():
    """A 1-layer BERT of width 32 with MiniLM's tokenizer: the pipeline's text component, saved and loaded fast."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from igpg_hf.conditioning.text import _default_path

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return BertModel(cfg).eval(), AutoTokenizer.from_pretrained(_default_path())
