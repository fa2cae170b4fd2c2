"""Distillation technique on tiny random models: each loss, student building, checks, resume, round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hfcompress.plugin import BadInputError, ModelState, ModelTarget, StepContext

TEXTS = [
    f"review {i}: the {'acting was wonderful' if i % 2 else 'plot made no sense'} and the "
    f"{['music', 'camera work', 'dialogue', 'ending'][i % 4]} felt {'fresh' if i % 3 else 'tired'}"
    for i in range(48)
]


@pytest.fixture(scope="module")
def accelerator():  # type: ignore[no-untyped-def]
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _dataset(labels: bool = False) -> Any:
    import datasets

    cols: dict[str, list[Any]] = {"text": TEXTS}
    if labels:
        cols["label"] = [i % 2 for i in range(len(TEXTS))]
    return datasets.Dataset.from_dict(cols)


def _loader(path: Path, task: str):  # type: ignore[no-untyped-def]
    from hfcompress.models import load_model, resolve_model

    source = resolve_model(str(path))
    return lambda: load_model(source, task)


def _ctx(load, accelerator, tmp_path: Path, labels: bool = False) -> StepContext:  # type: ignore[no-untyped-def]
    return StepContext(teacher=load, train_data=_dataset(labels), accelerator=accelerator, seed=0,
                       work_dir=tmp_path / "work")


def _config(**kw: Any) -> Any:
    from hfcompress_plugins.distillation import DistillationConfig

    base = {"max_steps": 30, "batch_size": 8, "sequence_length": 32, "learning_rate": 2e-3, "warmup_ratio": 0.0,
            "progress_bar": False, "log_every": 5, "checkpoint_every": 0}
    base.update(kw)
    return DistillationConfig.model_validate(base)


def _run(state: ModelState, ctx: StepContext, **kw: Any) -> Any:
    from hfcompress_plugins.distillation import Distillation

    return Distillation().apply(state, _config(**kw), ctx)


def _early_late(history: list[list[float]]) -> tuple[float, float]:
    losses = [h[1] for h in history]
    return losses[0], sum(losses[-2:]) / 2


NARROW = {"config": {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}}


# --- loss functions ---------------------------------------------------------------------------


def test_loss_functions_are_zero_on_identical_inputs_and_positive_otherwise() -> None:
    import torch
    from hfcompress_plugins.distillation.losses import attention_loss, cosine_loss, hidden_mse_loss, kl_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 5)
    assert kl_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(4, 5)
    assert kl_loss(other, logits, 1.0).item() > 0.01
    # T^2 scaling keeps gradient magnitudes comparable across temperatures (Hinton et al.)
    raw = kl_loss(other, logits, 4.0).item() / 16
    import torch.nn.functional as F

    expected = F.kl_div(F.log_softmax(other / 4, -1), F.log_softmax(logits / 4, -1), log_target=True,
                        reduction="batchmean").item()
    assert raw == pytest.approx(expected, rel=1e-5)

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    h = torch.randn(2, 3, 8)
    h2 = h.clone()
    h2[0, 2] += 100.0  # a padded position: must not count
    assert hidden_mse_loss(h2, h, mask).item() == pytest.approx(0.0, abs=1e-7)
    h3 = h.clone()
    h3[0, 0] += 1.0  # one real token of 3 real tokens, all 8 dims off by 1 -> mean 1/3
    assert hidden_mse_loss(h3, h, mask).item() == pytest.approx(1.0 / 3.0, rel=1e-5)

    att = torch.softmax(torch.randn(2, 2, 3, 3), -1)
    assert attention_loss(att, att, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_loss(torch.softmax(torch.randn(2, 2, 3, 3), -1), att, mask).item() > 0.001

    assert cosine_loss(h, h * 3.0, mask).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert cosine_loss(h, -h, mask).item() == pytest.approx(2.0, abs=1e-5)


def test_relational_loss_sees_neighbourhoods_that_the_cosine_loss_does_not() -> None:
    import torch
    from hfcompress_plugins.distillation.losses import cosine_loss, relational_loss

    torch.manual_seed(0)
    mask = torch.ones(4, 1, dtype=torch.long)
    teacher = torch.randn(4, 1, 16)
    assert relational_loss(teacher * 2.0, teacher, mask, 0.05).item() == pytest.approx(0.0, abs=1e-6)
    # a rotation moves every embedding (cosine loss > 0) but keeps all pairwise similarities
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    rotated = teacher @ rotation
    assert cosine_loss(rotated, teacher, mask).item() > 0.1
    assert relational_loss(rotated, teacher, mask, 0.05).item() == pytest.approx(0.0, abs=1e-5)
    # swapping which sentence is whose neighbour is what it punishes
    a, b = torch.randn(16), torch.randn(16)
    pairs = torch.stack([a, a + 0.1 * b, b, b + 0.1 * a]).unsqueeze(1)  # neighbours: 0-1, 2-3
    swapped = pairs[[0, 2, 1, 3]]
    assert relational_loss(swapped, pairs, mask, 0.05).item() > 1.0
    padded = torch.cat([teacher, torch.full((4, 1, 16), 50.0)], dim=1)  # padding must not count
    assert relational_loss(padded, teacher.expand(4, 2, 16), torch.tensor([[1, 0]] * 4), 0.05).item() \
        == pytest.approx(0.0, abs=1e-6)
    assert relational_loss(teacher[:1], teacher[:1], mask[:1], 0.05).item() == 0.0  # one sentence: no neighbours


def test_default_layer_map_is_identity_or_uniform_ending_at_the_last_layer() -> None:
    from hfcompress_plugins.distillation.config import default_layer_map

    assert default_layer_map(4, 4) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert default_layer_map(3, 6) == {0: 1, 1: 3, 2: 5}
    assert default_layer_map(2, 12) == {0: 5, 1: 11}


def test_default_losses_per_task() -> None:
    from hfcompress_plugins.distillation.config import default_losses

    assert default_losses("feature-extraction", "task-agnostic").active() == {"cosine": 1.0, "hidden_mse": 1.0}
    assert default_losses("text-classification", "task-agnostic").active() == {"kl": 1.0}
    assert default_losses("text-classification", "task-specific").active() == {"kl": 1.0, "ce": 1.0}
    assert default_losses("text-generation", "task-agnostic").active() == {"kl": 1.0}


# --- config validation --------------------------------------------------------------------------


def test_config_is_strict() -> None:
    from hfcompress_plugins.distillation import DistillationConfig
    from pydantic import ValidationError

    assert DistillationConfig().max_steps == 200
    assert DistillationConfig(epochs=1.0).max_steps is None
    with pytest.raises(ValidationError, match="max_step"):
        DistillationConfig.model_validate({"max_step": 10})
    with pytest.raises(ValidationError, match="exactly one"):
        DistillationConfig.model_validate({"student": {"layers": [0], "model": "x"}})
    with pytest.raises(ValidationError, match="every weight is 0"):
        DistillationConfig.model_validate({"losses": {"kl": 0}})
    with pytest.raises(ValidationError):
        DistillationConfig.model_validate({"mode": "labelled"})


# --- student building ---------------------------------------------------------------------------


def test_student_from_layers_copies_the_kept_blocks(tiny_bert_dir: Path, tiny_llama_dir: Path) -> None:
    import torch
    from hfcompress_plugins.distillation.student import student_from_layers

    teacher = _loader(tiny_bert_dir, "feature-extraction")().model
    student = student_from_layers(teacher, [1])
    assert student.config.num_hidden_layers == 1 and len(student.encoder.layer) == 1
    for (name, p), q in zip(student.encoder.layer[0].named_parameters(), teacher.encoder.layer[1].parameters(), strict=True):
        assert torch.equal(p, q), name
    assert student.encoder.layer[0].attention.self.query.weight.data_ptr() != \
        teacher.encoder.layer[1].attention.self.query.weight.data_ptr()  # a copy, not shared
    assert teacher.config.num_hidden_layers == 2

    llama = _loader(tiny_llama_dir, "text-generation")().model
    small = student_from_layers(llama, [1])
    assert [blk.self_attn.layer_idx for blk in small.model.layers] == [0]  # KV cache index renumbered
    out = small(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.logits.shape == (1, 3, llama.config.vocab_size)
    with pytest.raises(BadInputError, match="out of range"):
        student_from_layers(teacher, [0, 2])


# --- each loss trains ---------------------------------------------------------------------------


def test_cosine_and_hidden_mse_with_projection_on_a_narrower_student(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    load = _loader(tiny_bert_dir, "feature-extraction")
    result = _run(load(), _config_ctx := _ctx(load, accelerator, tmp_path), student=NARROW,
                  losses={"cosine": 1.0, "hidden_mse": 1.0})
    ch = result.changes
    assert ch["projections"] == ["h0", "h1", "pool"]  # widths 16 -> 32 differ: learned projections
    assert ch["losses"] == {"cosine": 1.0, "hidden_mse": 1.0}
    first, last = _early_late(ch["loss_history"])
    assert last < 0.6 * first, ch["loss_history"]
    assert result.state.model.config.hidden_size == 16
    assert ch["num_parameters_after"] < ch["num_parameters_before"]
    assert ch["seconds_per_step"] > 0 and ch["samples_per_second"] > 0
    assert not (_config_ctx.work_dir / "distillation-checkpoints").exists()


def test_attention_loss_on_a_layer_subset_student(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    load = _loader(tiny_bert_dir, "feature-extraction")
    # Random tiny BERTs attend almost uniformly; sharpen the teacher's attention so the loss has signal.
    teacher_state = load()
    with torch.no_grad():
        for blk in teacher_state.model.encoder.layer:
            blk.attention.self.query.weight.mul_(40.0)
            blk.attention.self.key.weight.mul_(40.0)
    ctx = _ctx(lambda: teacher_state, accelerator, tmp_path)
    # A fresh 1-layer student (same 4 heads) starts from near-uniform attention.
    result = _run(load(), ctx, student={"config": {"num_hidden_layers": 1}}, losses={"attention": 1.0},
                  learning_rate=1e-2)
    first, last = _early_late(result.changes["loss_history"])
    assert first > 0.05 and last < 0.7 * first, result.changes["loss_history"]
    assert result.changes["layer_map"] == {"0": 1}


def test_kl_and_ce_on_a_classifier_task_specific(tmp_path, accelerator) -> None:  # type: ignore[no-untyped-def]
    import torch

    from hfcompress.testing.models import make_tiny_bert

    path = make_tiny_bert(tmp_path / "cls", task="text-classification")
    load = _loader(path, "text-classification")
    teacher_state = load()
    with torch.no_grad():  # confident teacher: a soft-target signal worth learning
        teacher_state.model.classifier.weight.mul_(50.0)
    ctx = _ctx(lambda: teacher_state, accelerator, tmp_path, labels=True)
    result = _run(load(), ctx, student=NARROW, mode="auto", learning_rate=1e-2)
    ch = result.changes
    assert ch["mode"] == "task-specific" and ch["losses"] == {"kl": 1.0, "ce": 1.0}
    first, last = _early_late(ch["loss_history"])
    assert last < 0.8 * first, ch["loss_history"]
    assert result.state.model(input_ids=torch.tensor([[101, 2000, 102]])).logits.shape == (1, 2)


def test_kl_and_next_token_ce_on_a_causal_lm(tiny_llama_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    load = _loader(tiny_llama_dir, "text-generation")
    ctx = _ctx(load, accelerator, tmp_path)
    result = _run(load(), ctx, student={"layers": [0]}, losses={"kl": 1.0, "ce": 0.5, "temperature": 1.0},
                  learning_rate=5e-3)
    ch = result.changes
    assert ch["temperature"] == 1.0 and ch["student"] == {"source": "layers", "layers": [0]}
    first, last = _early_late(ch["loss_history"])
    assert last < 0.8 * first, ch["loss_history"]
    assert result.state.model.config.num_hidden_layers == 1


def test_gradient_accumulation_matches_one_big_batch(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """2 micro-batches of 4 see the same samples as one batch of 8; a per-sample loss without
    dropout must then give the same weights (up to float summation order)."""

    load = _loader(tiny_bert_dir, "feature-extraction")
    kw = {"student": NARROW, "losses": {"cosine": 1.0}, "dropout": False, "max_steps": 4}
    big = _run(load(), _ctx(load, accelerator, tmp_path / "a"), batch_size=8, **kw)
    acc = _run(load(), _ctx(load, accelerator, tmp_path / "b"), batch_size=4, gradient_accumulation_steps=2, **kw)
    assert big.changes["global_batch_size"] == acc.changes["global_batch_size"] == 8
    diff = max((p - q).abs().max().item()
               for p, q in zip(big.state.model.parameters(), acc.state.model.parameters(), strict=True))
    assert diff < 1e-5
    first, last = big.changes["loss_history"][0][1], big.changes["loss_history"][-1][1]
    assert last < first  # it trained at all
    assert acc.changes["loss_history"][0][1] == pytest.approx(first, rel=1e-4)


# --- resume -------------------------------------------------------------------------------------


def test_resume_after_a_crash_gives_the_same_weights(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from hfcompress_plugins.distillation import distill

    load = _loader(tiny_bert_dir, "feature-extraction")
    kw = {"student": {"layers": [1]}, "max_steps": 10, "checkpoint_every": 3}
    reference = _run(load(), _ctx(load, accelerator, tmp_path / "ref"), **kw)

    ctx = _ctx(load, accelerator, tmp_path / "crash")

    class Crash(RuntimeError):
        pass

    def crash_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        distill(load(), _config(**kw), ctx, on_step=crash_at_5)
    ckpts = sorted(p.name for p in (ctx.work_dir / "distillation-checkpoints").iterdir())
    assert ckpts == ["step-00000003"]
    resumed = _run(load(), ctx, **kw)
    assert resumed.changes["resumed_from_step"] == 3
    assert resumed.changes["loss_history"] == reference.changes["loss_history"]
    for (name, p), q in zip(resumed.state.model.named_parameters(), reference.state.model.parameters(), strict=True):
        assert torch.equal(p, q), name  # bitwise: per-step seeds and exact optimizer state

    # A changed config does not pick up the old checkpoint.
    with pytest.raises(Crash):
        distill(load(), _config(**kw), ctx, on_step=crash_at_5)
    other = _run(load(), ctx, **dict(kw, learning_rate=1e-3))
    assert other.changes["resumed_from_step"] is None


# --- output state -------------------------------------------------------------------------------


def test_output_round_trips_through_save_and_load_state(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from hfcompress.artifact import load_state, save_state

    load = _loader(tiny_bert_dir, "feature-extraction")
    result = _run(load(), _ctx(load, accelerator, tmp_path), student={"layers": [0]}, max_steps=3)
    save_state(result.state, tmp_path / "out")
    again = load_state(tmp_path / "out")
    assert again.model.config.num_hidden_layers == 1
    batch = {"input_ids": torch.tensor([[101, 7592, 2088, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        a = result.state.model(**batch).last_hidden_state
        b = again.model(**batch).last_hidden_state
    assert torch.allclose(a, b, atol=1e-6)


def test_incoming_saver_loader_and_info_are_kept(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    load = _loader(tiny_bert_dir, "feature-extraction")
    state = load()

    def saver(st: ModelState, path: Path) -> None:
        st.model.save_pretrained(path)

    state.saver, state.loader, state.info = saver, "head-pruning", {"heads": {"0": [1]}}
    result = _run(state, _ctx(load, accelerator, tmp_path), max_steps=2)
    out = result.state
    assert out.saver is saver and out.loader == "head-pruning"
    assert out.info["heads"] == {"0": [1]} and out.info["distillation"] == {"source": "pipeline"}
    assert out.model is state.model  # the pipeline model itself was trained


# --- bad input ----------------------------------------------------------------------------------


def _target(path: Path, task: str = "feature-extraction", **kw: Any) -> ModelTarget:
    from transformers import AutoConfig

    return ModelTarget(config=AutoConfig.from_pretrained(path), task=task, has_data=True, **kw)


def test_check_rejects_bad_input_before_training(tiny_bert_dir: Path) -> None:
    from hfcompress_plugins.distillation import Distillation, DistillationConfig

    tech = Distillation()
    target = _target(tiny_bert_dir)
    tech.check(DistillationConfig(student={"layers": [0, 1]}), target)  # fine

    cases = [
        ({"student": {"layers": [0, 5]}}, target, r"student\.layers.*\[5\].*BertModel.*2 layers"),
        ({"losses": {"hidden_mse": 1, "layer_map": {0: 3}}}, target, r"layer_map: teacher layer 3"),
        ({"student": {"layers": [1]}, "losses": {"hidden_mse": 1, "layer_map": {1: 1}}}, target,
         r"layer_map: student layer 1"),
        ({"student": {"config": {"num_attention_heads": 2}}, "losses": {"attention": 1}}, target,
         r"losses\.attention.*2 attention heads.*teacher 4"),
        ({"mode": "task-specific"}, target, r"mode: task-specific needs labelled data"),
        ({"losses": {"kl": 1}}, target, r"losses\.kl.*feature-extraction"),
        ({}, ModelTarget(config=target.config, task="feature-extraction", has_data=False), r"needs training text"),
        ({}, ModelTarget(config=target.config, task="feature-extraction", format="onnx", has_data=True),
         r"PyTorch model"),
    ]
    for cfg, tgt, pattern in cases:
        with pytest.raises(BadInputError, match=pattern):
            tech.check(DistillationConfig.model_validate(cfg), tgt)

    cls_target = _target(tiny_bert_dir, task="text-classification")
    with pytest.raises(BadInputError, match=r"losses\.ce.*no labels"):
        tech.check(DistillationConfig.model_validate({"losses": {"ce": 1}}), cls_target)
    tech.check(DistillationConfig.model_validate({"losses": {"ce": 1}}),
               _target(tiny_bert_dir, task="text-classification", has_labels=True))
    assert tech.data_requirement(DistillationConfig(mode="task-specific")) == "labels"
    assert tech.data_requirement(DistillationConfig()) == "text"


def test_head_count_mismatch_found_on_the_actual_model_before_training(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pruned pipeline model keeps hidden size but has fewer heads, which its BERT config cannot
    say: apply() compares real attention shapes on a probe batch and stops before training."""
    from transformers import BertConfig, BertModel

    load = _loader(tiny_bert_dir, "feature-extraction")
    teacher = load()
    cfg = BertConfig.from_dict(teacher.model.config.to_dict())
    cfg.num_attention_heads = 2  # same width, different head count
    pruned_like = ModelState(model=BertModel(cfg), tokenizer=teacher.tokenizer, task="feature-extraction")
    calls: list[int] = []
    from hfcompress_plugins.distillation import distill

    with pytest.raises(BadInputError, match=r"student layer 0 has 2 attention heads, teacher layer 0 has 4"):
        distill(pruned_like, _config(losses={"attention": 1.0},
                  learning_rate=1e-2), _ctx(load, accelerator, tmp_path),
                on_step=lambda s, v: calls.append(s))
    assert calls == []


def test_labelled_mode_without_labels_fails_in_apply_too(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    load = _loader(tiny_bert_dir, "text-classification")
    with pytest.raises(BadInputError, match="task-specific needs labelled data"):
        _run(load(), _ctx(load, accelerator, tmp_path, labels=False), mode="task-specific")


# --- plugin rules -------------------------------------------------------------------------------


def test_registered_and_imports_no_torch_at_module_level() -> None:
    from hfcompress.registry import get_registry

    assert get_registry().technique("distillation").name == "distillation"
    code = "import sys, hfcompress_plugins.distillation; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- after head pruning (the default recipe's order) --------------------------------------------


def test_distilling_a_head_pruned_model_keeps_its_saver_and_round_trips(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from hfcompress.artifact import load_state, save_state
    from hfcompress.registry import get_registry

    load = _loader(tiny_bert_dir, "feature-extraction")
    ctx = _ctx(load, accelerator, tmp_path)
    pruning = get_registry().technique("head-pruning")
    pruned = pruning.apply(load(), pruning.Config.model_validate(
        {"ratio": 0.5, "ffn_ratio": 0.5, "importance": "magnitude"}), ctx).state

    with pytest.raises(BadInputError, match="losses.attention"):
        _run(pruned, ctx, losses={"attention": 1.0})  # head counts now differ from the teacher's

    result = _run(pruned, ctx, max_steps=5)
    out = result.state
    assert out.model is pruned.model and out.loader == pruned.loader
    assert out.info["head_pruning"] == pruned.info["head_pruning"]
    assert result.changes["num_parameters_after"] == result.changes["num_parameters_before"]
    save_state(out, tmp_path / "out")
    again = load_state(tmp_path / "out")
    batch = {"input_ids": torch.tensor([[101, 7592, 2088, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        assert torch.allclose(out.model(**batch).last_hidden_state, again.model(**batch).last_hidden_state, atol=1e-6)


def test_bf16_autocast_on_cpu_keeps_fp32_weights(tiny_bert_dir, accelerator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import math

    import torch

    load = _loader(tiny_bert_dir, "feature-extraction")
    result = _run(load(), _ctx(load, accelerator, tmp_path), student=NARROW, mixed_precision="bf16", max_steps=10)
    assert result.changes["mixed_precision"] == "bf16"
    assert all(math.isfinite(v) for _, v in result.changes["loss_history"])
    assert result.changes["loss_history"][-1][1] < result.changes["loss_history"][0][1]
    assert {p.dtype for p in result.state.model.parameters()} == {torch.float32}  # master weights stay fp32
    assert _run(load(), _ctx(load, accelerator, tmp_path), max_steps=1).changes["mixed_precision"] == "no"  # auto on CPU
    with pytest.raises(BadInputError, match="fp16"):
        _run(load(), _ctx(load, accelerator, tmp_path), mixed_precision="fp16")
