"""The built-in evaluator plugins on tiny random models: fidelity, task-metrics, speed, size, transfer-probes, sts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from hfcompress.artifact import load_state
from hfcompress.evaluation import LOCAL_METRICS, evaluate_state, load_metric
from hfcompress.plugin import EvalContext, EvalSettings, ModelState
from hfcompress.registry import get_registry

TEXTS = [
    "a wonderful, moving film", "dull and far too long", "the cast is superb", "I want my two hours back",
    "sharp writing and a great score", "a tedious mess", "charming from start to finish", "flat and lifeless",
    "one of the best this year", "painfully unfunny", "smart, warm and funny", "nothing works here",
]


def _data(n: int = 12) -> Any:
    import datasets

    texts = (TEXTS * 3)[:n]
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)]})


def _settings(*evaluators: str, **kw: Any) -> EvalSettings:
    base = {"batch_size": 4, "sequence_length": 16, "warmup": 1, "repeats": 3}
    return EvalSettings(evaluators=list(evaluators), **{**base, **kw})


def _perturb(state: ModelState, scale: float = 0.5) -> ModelState:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in state.model.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * scale * float(p.std()))
    return state


def _fidelity(model_dir: Path, perturb: bool) -> dict[str, Any]:
    data, s = _data(), _settings("fidelity")
    _, base_ctx = evaluate_state(load_state(model_dir), data, s)
    other = load_state(model_dir)
    if perturb:
        _perturb(other)
    block, _ = evaluate_state(other, data, s, reference=base_ctx)
    return block["metrics"]


def test_all_four_evaluators_are_registered_plugins() -> None:
    registry = get_registry()
    for name in ("fidelity", "task-metrics", "speed", "size"):
        assert name in registry.evaluators, registry.as_json()["broken"]
        assert registry.evaluators[name].plugin.distribution == "hfcompress"


def test_fidelity_encoder(tiny_bert_dir: Path) -> None:
    same = _fidelity(tiny_bert_dir, perturb=False)
    assert same["fidelity_cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert same["fidelity_cosine_min"] == pytest.approx(1.0, abs=1e-6)
    assert same["fidelity_neighbour_overlap"] == 1.0
    changed = _fidelity(tiny_bert_dir, perturb=True)
    assert changed["fidelity_cosine_min"] <= changed["fidelity_cosine_mean"] < 0.999
    assert 0.0 <= changed["fidelity_neighbour_overlap"] <= 1.0


def test_neighbour_overlap_counts_kept_neighbours() -> None:
    import math

    from hfcompress_plugins.eval_fidelity import neighbour_overlap

    def at(*degrees: float) -> torch.Tensor:  # unit vectors at these angles
        return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])

    base = at(0, 10, 80, 90)  # nearest neighbours (k=1): 0<->10, 80<->90
    assert neighbour_overlap(base, base * 3.0, k=1)["fidelity_neighbour_overlap"] == 1.0  # scale-free
    # 10 -> 45 degrees: 45's nearest is now 80 (35 degrees away), the others keep theirs
    assert neighbour_overlap(base, at(0, 45, 80, 90), k=1)["fidelity_neighbour_overlap"] == pytest.approx(0.75)
    assert neighbour_overlap(base[:1], base[:1]) == {}


def test_fidelity_classifier(tmp_path: Path) -> None:
    from hfcompress.testing.models import make_tiny_bert

    model_dir = make_tiny_bert(tmp_path / "cls", task="text-classification", num_labels=3)
    same = _fidelity(model_dir, perturb=False)
    assert same["fidelity_top1_agreement"] == 1.0 and same["fidelity_kl"] == pytest.approx(0.0, abs=1e-9)
    changed = _fidelity(model_dir, perturb=True)
    base, other = load_state(model_dir), _perturb(load_state(model_dir))
    data = _data()
    enc = base.tokenizer(list(data["text"]), padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        p = torch.log_softmax(base.model(**enc).logits.double(), -1)
        q = torch.log_softmax(other.model(**enc).logits.double(), -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert kl > 0 and changed["fidelity_kl"] == pytest.approx(kl, rel=1e-4)
    agree = float((p.argmax(-1) == q.argmax(-1)).double().mean())
    assert changed["fidelity_top1_agreement"] == pytest.approx(agree, abs=1e-6)


def test_fidelity_lm_lockstep_equals_full_computation(tiny_llama_dir: Path) -> None:
    same = _fidelity(tiny_llama_dir, perturb=False)
    assert same["fidelity_top1_agreement"] == 1.0 and same["fidelity_kl"] == pytest.approx(0.0, abs=1e-9)
    changed = _fidelity(tiny_llama_dir, perturb=True)
    # the same numbers computed the simple way: all logits of all samples at once
    base, other = load_state(tiny_llama_dir), _perturb(load_state(tiny_llama_dir))
    enc = base.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        p = torch.log_softmax(base.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits, -1)
        q = torch.log_softmax(other.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits, -1)
    mask = enc.attention_mask.bool()
    kl = (p.exp() * (p - q)).sum(-1)[mask].mean()
    agree = (p.argmax(-1) == q.argmax(-1))[mask].float().mean()
    assert changed["fidelity_kl"] == pytest.approx(float(kl), rel=1e-4)
    assert changed["fidelity_top1_agreement"] == pytest.approx(float(agree), rel=1e-5)
    assert changed["fidelity_top1_agreement"] < 1.0


def test_fidelity_does_not_apply_to_the_base(tiny_bert_dir: Path) -> None:
    block, _ = evaluate_state(load_state(tiny_bert_dir), _data(), _settings("fidelity"))
    assert block["metrics"] == {}


def test_perplexity_matches_manual_computation(tiny_llama_dir: Path) -> None:
    state = load_state(tiny_llama_dir)
    block, _ = evaluate_state(state, _data(), _settings("task-metrics", batch_size=5, sequence_length=24))
    total_nll, total_tokens = 0.0, 0
    for text in TEXTS:  # one text at a time, no padding: the textbook definition
        ids = state.tokenizer(text, return_tensors="pt").input_ids
        assert ids.shape[1] <= 24
        with torch.no_grad():
            loss = state.model(input_ids=ids, labels=ids).loss  # mean NLL over ids.shape[1] - 1 predictions
        total_nll += float(loss) * (ids.shape[1] - 1)
        total_tokens += ids.shape[1] - 1
    assert block["metrics"]["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    assert block["settings"] == {"eval_samples": len(TEXTS)} and "eval_samples" not in block["metrics"]


def test_classification_accuracy_and_f1(tmp_path: Path) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    from hfcompress.testing.models import make_tiny_bert

    model_dir = make_tiny_bert(tmp_path / "cls", task="text-classification")
    state = load_state(model_dir)
    data = _data()
    block, _ = evaluate_state(state, data, _settings("task-metrics"))
    enc = state.tokenizer(list(data["text"]), padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        predicted = state.model(**enc).logits.argmax(-1).tolist()
    assert block["metrics"]["accuracy"] == pytest.approx(accuracy_score(data["label"], predicted), abs=1e-6)
    assert block["metrics"]["f1"] == pytest.approx(f1_score(data["label"], predicted), abs=1e-6)


def test_embedding_probe_separates_separable_labels(tiny_bert_dir: Path) -> None:
    import datasets

    # two label groups of identical sentences: any encoder's embeddings separate them perfectly
    data = datasets.Dataset.from_dict({"text": ["good film"] * 10 + ["terrible weather today"] * 10,
                                       "label": [1] * 10 + [0] * 10})
    block, _ = evaluate_state(load_state(tiny_bert_dir), data, _settings("task-metrics"))
    assert block["metrics"]["probe_accuracy"] == 1.0 and block["metrics"]["probe_f1"] == 1.0


@pytest.mark.parametrize("name", LOCAL_METRICS)
def test_packaged_metric_modules_load_offline(name: str) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    pred, ref = [0, 1, 2, 1, 0, 2, 2], [0, 1, 1, 1, 2, 2, 0]
    metric = load_metric(name)
    if name == "accuracy":
        assert metric.compute(predictions=pred, references=ref)["accuracy"] == pytest.approx(accuracy_score(ref, pred))
    else:
        for average in ("macro", "micro", "weighted"):
            got = metric.compute(predictions=pred, references=ref, average=average)["f1"]
            assert got == pytest.approx(f1_score(ref, pred, average=average))


class _Counting:
    """A model proxy that records each call's input shape (and thread requests, like the ONNX wrapper)."""

    def __init__(self, model: Any) -> None:
        self.model, self.shapes, self.threads = model, [], []

    def __call__(self, **inputs: Any) -> Any:
        self.shapes.append(tuple(inputs["input_ids"].shape))
        return self.model(**inputs)

    def parameters(self) -> Any:
        return self.model.parameters()

    def set_num_threads(self, n: int) -> None:
        self.threads.append(n)


def test_speed_records_its_settings_and_runs_them(tiny_bert_dir: Path) -> None:
    state = load_state(tiny_bert_dir)
    proxy = _Counting(state.model)
    state.model = proxy
    s = _settings("speed", batch_size=3, sequence_length=12, warmup=2, repeats=5, threads=1)
    block, _ = evaluate_state(state, _data(), s)
    m = block["metrics"]
    # the conditions are settings, apart from the measurements
    assert block["settings"] == {"speed_batch_size": 3, "speed_sequence_length": 12, "speed_threads": 1,
                                 "speed_warmup": 2, "speed_repeats": 5}
    assert set(m) == {"latency_p95_ms", "throughput_samples_per_s"}
    assert proxy.shapes == [(3, 12)] * 7 and proxy.threads == [1]
    assert 0 < block["latency_ms"] <= m["latency_p95_ms"]
    assert m["throughput_samples_per_s"] == pytest.approx(3 / (block["latency_ms"] / 1000), rel=1e-4)


def test_speed_fills_a_full_batch_from_few_texts(tiny_bert_dir: Path) -> None:
    state = load_state(tiny_bert_dir)
    state.model = proxy = _Counting(state.model)
    evaluate_state(state, _data(2), _settings("speed", batch_size=5, warmup=0, repeats=1))
    assert proxy.shapes == [(5, 16)]


def test_size_equals_bytes_on_disk(tiny_bert_dir: Path) -> None:
    # files the pipeline writes next to the model are not the model
    (tiny_bert_dir / "README.md").write_text("card " * 1000)
    (tiny_bert_dir / "results.json").write_text("{}")
    state = load_state(tiny_bert_dir)
    block, _ = evaluate_state(state, _data(), _settings("size"), artifact_dir=tiny_bert_dir)
    expected = sum(p.stat().st_size for p in tiny_bert_dir.iterdir()
                   if p.is_file() and p.name not in ("README.md", "results.json"))
    assert block["size_bytes"] == expected
    assert block["metrics"]["weights_bytes"] == (tiny_bert_dir / "model.safetensors").stat().st_size
    assert block["num_parameters"] == sum(p.numel() for p in state.model.parameters())
    m = block["metrics"]
    # a 1M-parameter fp32 model holds 4 MB of weights; loading and running it needs at least part
    # of that resident, and far less than a gigabyte
    assert 0 < m["peak_memory_load_mb"] <= m["peak_memory_mb"] < 1000
    assert m["peak_memory_mb"] > 1.0


@pytest.mark.slow  # a second memory-measuring subprocess (~10 s)
def test_size_of_an_in_memory_model_is_measured_from_a_saved_copy(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from hfcompress_plugins.eval_size import Size, folder_bytes

    from hfcompress.artifact import save_state

    state = load_state(tiny_bert_dir)
    got = Size().evaluate(EvalContext(state=state, data=_data(), settings=_settings("size")))
    save_state(state, tmp_path / "copy")  # what the pipeline does before measuring
    assert got["size_bytes"] == folder_bytes(tmp_path / "copy")[0]


def test_transfer_probe_accuracy_separates_what_the_embeddings_carry() -> None:
    import numpy as np
    from hfcompress_plugins.eval_transfer import probe_accuracy

    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(400)]
    signal = np.array([[1.0 if y else -1.0] for y in labels])
    separable = np.hstack([signal, rng.normal(size=(400, 7))])
    assert probe_accuracy(separable[:200], labels[:200], separable[200:], labels[200:]) == 1.0
    noise = rng.normal(size=(400, 8))  # nothing about the label: chance level
    assert 0.35 < probe_accuracy(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.65


def test_transfer_probes_on_a_tiny_encoder_use_other_data_sets(tiny_bert_dir: Path) -> None:
    from hfcompress_plugins.eval_transfer import SOURCES, metric_name

    settings = _settings("transfer-probes", max_samples=32)
    block, _ = evaluate_state(load_state(tiny_bert_dir), _data(), settings)
    metrics = block["metrics"]
    per_source = [metrics[metric_name(s)] for s in SOURCES]
    assert all(0.0 <= a <= 1.0 for a in per_source)
    assert metrics["transfer_probe_accuracy"] == pytest.approx(sum(per_source) / len(SOURCES), abs=1e-6)
    assert block["settings"]["transfer_probe_sentences"] == 64.0  # 32 train + 32 test per data set


def test_sts_spearman_ranks_pair_cosines_against_the_scores() -> None:
    import numpy as np
    from hfcompress_plugins.eval_sts import cosine_spearman

    rng = np.random.default_rng(0)
    scores = [0.4, 4.8, 2.0, 3.1, 1.2, 5.0, 0.0, 2.6]
    # second vector at an angle that shrinks as the score grows: cosine is monotone in the score
    angles = np.array([(5.0 - s) / 5.0 * 1.5 for s in scores])
    first = np.tile([1.0, 0.0, 0.0], (len(scores), 1))
    second = np.stack([np.cos(angles), np.sin(angles), np.zeros(len(scores))], axis=1)
    scale = rng.uniform(0.1, 10.0, size=(len(scores), 1))  # unnormalised inputs: cosine, not dot product
    assert cosine_spearman(first * scale, second * scale[::-1], scores) == pytest.approx(1.0)
    assert cosine_spearman(first, second, [-s for s in scores]) == pytest.approx(-1.0)
    # swap the cosines of the pairs ranked 1st/2nd and 5th/6th by score: d^2 sums to 4, rho = 1 - 6*4/(8*63)
    order = np.argsort(scores)
    swapped = second.copy()
    for i, j in ((order[0], order[1]), (order[4], order[5])):
        swapped[[i, j]] = swapped[[j, i]]
    assert cosine_spearman(first, swapped, scores) == pytest.approx(1 - 24 / 504)
    assert math.isnan(cosine_spearman(first, first, scores))  # all cosines equal: no ranking


def test_sts_on_a_tiny_encoder_uses_the_sts_benchmark(tiny_bert_dir: Path, hf_cache: str) -> None:
    settings = _settings("sts", max_samples=24)
    block, base_ctx = evaluate_state(load_state(tiny_bert_dir), _data(), settings)
    assert -1.0 <= block["metrics"]["sts_spearman"] <= 1.0
    assert block["settings"]["sts_pairs"] == 48.0  # 2 * max_samples pairs of stsb:test
    again, _ = evaluate_state(load_state(tiny_bert_dir), _data(), settings, reference=base_ctx)
    assert again["metrics"]["sts_spearman"] == pytest.approx(block["metrics"]["sts_spearman"], abs=1e-9)
