"""``QuantizationConfig``: the recipe fields of the quantization step and the rules that need no model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from hfcompress.plugin import TechniqueConfig

from .backends import BACKENDS, CANDIDATES, DEFAULT_DTYPE, DTYPES

# The allowed ``backend`` and ``dtype`` values come from the registry (in its order), so that a
# new backend is one line there. Type checkers see plain strings; pydantic sees the Literals.
if TYPE_CHECKING:
    BackendName = str
    DtypeName = str
else:
    BackendName = Literal[("auto", *BACKENDS)]
    DtypeName = Literal[tuple(dict.fromkeys(d for b in BACKENDS.values() for d in b.dtypes))]

OP_TYPES = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization", "Conv", "Add", "Mul",
            "Transpose", "Softmax", "LayerNormalization")


class QuantizationConfig(TechniqueConfig):
    backend: BackendName = "auto"
    """auto (measure and choose), quanto, onnxruntime, openvino (encoders), torch or onnxruntime-genai
    (causal LMs)."""
    dtype: DtypeName | None = None
    """Weight type. quanto: int8 | int4 | fp8 (default int8); onnxruntime: int8; torch: bf16 | fp16
    (default bf16); onnxruntime-genai: int4 | int8 | fp32 (default int8); openvino: int8 | fp32 (default
    int8). Not used with auto (see ``candidates``)."""
    accuracy_control: bool = False
    """openvino int8: NNCF's accuracy-aware quantization (``quantize_with_accuracy_control``): layers
    whose int8 costs most go back to float, ranked by NNCF, until the mean cosine to the input model
    on the calibration texts is at least ``min_cosine``. Slower to build; keeps embeddings in place."""
    smooth_quant_alpha: float | None = Field(None, ge=0.0, le=1.0)
    """openvino int8: SmoothQuant's migration strength for MatMuls (NNCF's ``smooth_quant_alphas``);
    None: NNCF's default for transformers. Measured on all-MiniLM-L6-v2: 0.85 kept cosine 0.9980
    where the default kept 0.9976 and 0.5 kept 0.9907 (docs/techniques/quantization.md)."""
    activations: Literal["none", "int8", "fp8"] = "none"
    """quanto only: also quantize activations, with ranges calibrated on the training data."""
    exclude: list[str] = Field(default_factory=lambda: ["lm_head"])
    """quanto, onnxruntime and openvino: module-name patterns (fnmatch, e.g. lm_head, encoder.layer.0.*)
    whose layers stay in float. onnxruntime and openvino match the module path each exported node
    comes from."""
    mode: Literal["dynamic", "static"] = "dynamic"
    """onnxruntime only: dynamic (activations quantized per batch) or static (calibrated on data)."""
    per_channel: bool = True
    """onnxruntime: one scale per output channel (kept MiniLM's cosine at 0.99)."""
    reduce_range: bool = False
    """onnxruntime: 7-bit weights, for CPUs without VNNI where 8-bit can saturate."""
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """onnxruntime static mode: how activation ranges are chosen."""
    op_types: list[str] | None = None
    """onnxruntime: operator types to quantize (default: onnxruntime's choice for the mode)."""
    graph_optimization: Literal["auto", "bert-fusion", "none", "unfused-layernorm"] = "auto"
    """onnxruntime: ``bert-fusion``: ONNX Runtime's offline BERT fusions; ``none``: the exported graph
    with ONNX Runtime's default load-time optimizations; ``unfused-layernorm``: the exported graph
    with its residual additions written so that ONNX Runtime's load-time SkipLayerNormFusion does
    not apply (the choice lives in the graph itself: a bare ``InferenceSession`` runs what was
    timed). ``auto`` times every option and keeps the fastest."""
    algorithm: Literal["rtn", "k_quant", "awq", "block_min"] = "rtn"
    """onnxruntime-genai: how weights are rounded to int4/int8. ``rtn`` round-to-nearest and ``k_quant``
    (each block's scale searched) are the model builder's own (its ``algo_config``); ``awq`` (int4
    only) is calibrated on the recipe's texts: NNCF's AWQ + scale estimation, with ``int4_ratio`` of
    the matmul weights at int4 and the rest int8 (``genai_calibrated``); ``block_min`` (int4 only)
    keeps each block's minimum in float, llama.cpp's Q4_1 scheme, with the LM head int8
    (``genai_block_min``): exact on weights that came from a Q4_1 GGUF."""
    int4_ratio: float = Field(1.0, gt=0.0, le=1.0)
    """onnxruntime-genai with algorithm awq: share of matmul weights at int4; the matmuls whose
    inputs make rounding cost most (NNCF's Hessian-of-inputs ranking on the calibration texts) stay
    int8. Measured on SmolLM2-135M: 1.0 +17% perplexity at 102 tokens/s, 0.3 +3.3% at 80."""
    group_size: Literal[16, 32, 64, 128, 256] = 32
    """onnxruntime-genai: weights per scale (the builder's ``block_size``)."""
    lm_head_group_size: Literal[16, 32, 64, 128, 256] | None = None
    """onnxruntime-genai with int8: weights per scale of the LM head alone (default ``group_size``).
    MatMulNBits rounds the activations in blocks of the same size, so larger blocks are faster and
    coarser; the LM head is the largest single matmul. Measured on SmolLM2-135M:
    128 decodes 18% faster at +0.16% perplexity (every matmul at 128: 37% faster, +0.55%, greedy
    agreement 0.18 instead of 0.47)."""
    int8_layers: list[Literal["last_matmul", "mixed_layers"]] = Field(default_factory=list)
    """onnxruntime-genai with int4: matmuls kept at int8 (the builder's ``matmul_mixed_precision``):
    ``last_matmul`` the LM head; ``mixed_layers`` llama.cpp's sensitive set (first and last eighth of
    the layers plus every third layer's qkv/v/down projections)."""
    opset: int = Field(17, ge=14, le=21)
    calibration_samples: int = Field(64, gt=0, le=100_000)
    """Training texts used to calibrate, to check fidelity and (auto) to time."""
    sequence_length: int = Field(128, gt=0, le=8192)
    batch_size: int = Field(8, gt=0, le=1024)
    candidates: list[str] | None = None
    """auto only: names from CANDIDATES to try (default depends on the device)."""
    min_cosine: float = Field(0.98, gt=0.0, le=1.0)
    """auto: drop candidates whose mean cosine to the input model's outputs is below this; openvino
    with ``accuracy_control``: the bound NNCF restores float layers to."""
    min_agreement: float = Field(0.9, ge=0.0, le=1.0)
    """auto: for classification logits, minimum top-1 agreement with the input model."""
    max_perplexity_increase: float = Field(0.03, ge=0.0, le=10.0)
    """auto, causal LMs: drop candidates whose perplexity on the calibration texts exceeds the input
    model's by more than this fraction."""
    min_greedy_agreement: float = Field(0.4, ge=0.0, le=1.0)
    """auto, causal LMs: minimum share of the first 32 greedy tokens equal to the input model's (over
    ``agreement_prompts`` prompts). Free-running greedy text diverges for good after one flipped
    near-tie, so this is strict: on SmolLM2-135M a bf16 cast gets 0.73, llama.cpp on the model's own
    Q4_1 weights 0.62, int8 weights 0.49, int4 round-to-nearest 0.09. The default rejects broken
    models; perplexity is the quality bound."""
    agreement_prompts: int = Field(32, gt=0, le=1024)
    """auto, causal LMs: prompts (24 tokens of a calibration text each) for the greedy agreement."""
    threads: int = Field(1, gt=0, le=1024)
    """auto: CPU threads while timing (PyTorch and ONNX Runtime alike); onnxruntime-genai: the
    ``intra_op_num_threads`` written into genai_config.json."""
    timing_batches: int = Field(5, gt=0, le=100)
    if_none_pass: Literal["fail", "keep-input"] = "fail"
    """auto: when no candidate passes, ``fail`` (exit 3, every candidate's measurements in the
    message) or ``keep-input`` (the step returns its input unquantized, recorded in the changes)."""
    tie_margin: float = Field(0.1, ge=0.0, le=1.0)
    """auto: candidates whose median latency is within this fraction of the fastest count as tied,
    and the smallest artifact among them wins. Timing on a shared CPU moves by ~10%; without a
    margin the choice between close candidates (e.g. bf16 vs ONNX int8) flipped from run to run."""

    @model_validator(mode="after")
    def _consistent(self) -> QuantizationConfig:
        # "Given" means changed from its default: a resolved recipe (hfcompress.yaml) writes every
        # field with its default value and must load back to an equal recipe.
        fields = type(self).model_fields
        given = {name for name in self.model_fields_set
                 if getattr(self, name) != fields[name].get_default(call_default_factory=True)}
        backend = self.backend
        if backend == "auto":
            if self.dtype is not None:
                raise ValueError(
                    "dtype is chosen per candidate with backend auto; list candidates instead "
                    f"(allowed: {', '.join(CANDIDATES)}) or pick a backend"
                )
            unknown = [c for c in self.candidates or [] if c not in CANDIDATES]
            if unknown:
                raise ValueError(f"candidates: unknown {unknown}; allowed: {', '.join(CANDIDATES)}")
            if self.candidates is not None and not self.candidates:
                raise ValueError(f"candidates: give at least one of {', '.join(CANDIDATES)}")
        else:
            if self.dtype is not None and self.dtype not in DTYPES[backend]:
                raise ValueError(
                    f"dtype {self.dtype!r} is not supported by backend {backend!r}; allowed: "
                    f"{', '.join(DTYPES[backend])}"
                    + (". For 4-bit weights use backend quanto, or onnxruntime-genai for causal LMs"
                       if self.dtype == "int4" else "")
                )
            if given & {"candidates", "if_none_pass"}:
                raise ValueError(f"{', '.join(sorted(given & {'candidates', 'if_none_pass'}))}: only used with backend auto")
        if self.activations != "none" and backend not in ("quanto", "auto"):
            raise ValueError(f"activations is a quanto option; backend {backend!r} does not use it "
                             "(onnxruntime quantizes activations in both modes; torch casts them)")
        genai_only = {"algorithm", "group_size", "int8_layers", "int4_ratio", "lm_head_group_size"}
        if backend != "onnxruntime-genai" and given & genai_only:
            raise ValueError(f"{', '.join(sorted(given & genai_only))}: onnxruntime-genai options; backend is "
                             f"{backend!r}" + (" (auto's candidates carry their own, e.g. onnxruntime-genai:"
                                               "int4-kquant-mixed)" if backend == "auto" else ""))
        if "int8_layers" in given and backend == "onnxruntime-genai" and self.resolved_dtype() != "int4":
            raise ValueError("int8_layers keeps some matmuls at int8 in an int4 model; dtype is "
                             f"{self.resolved_dtype()!r}")
        if backend == "onnxruntime-genai" and self.algorithm == "awq" and self.resolved_dtype() != "int4":
            raise ValueError(f"algorithm awq calibrates int4 weights; dtype is {self.resolved_dtype()!r} (int8 "
                             "round-to-nearest already keeps perplexity within 0.2%)")
        if backend == "onnxruntime-genai" and self.algorithm == "awq" and "int8_layers" in given:
            raise ValueError("int8_layers is the builder's fixed list; with algorithm awq the int8 matmuls are "
                             "chosen by measurement: set int4_ratio instead")
        if "lm_head_group_size" in given and (self.resolved_dtype() != "int8" or self.algorithm != "rtn"):
            raise ValueError("lm_head_group_size is an int8 round-to-nearest option (dtype int8, algorithm rtn); "
                             f"dtype is {self.resolved_dtype()!r}, algorithm {self.algorithm!r} (an int4 LM head "
                             "measured +7% perplexity on SmolLM2-135M)")
        if backend == "onnxruntime-genai" and self.algorithm == "block_min" and self.resolved_dtype() != "int4":
            raise ValueError(f"algorithm block_min writes int4 weights; dtype is {self.resolved_dtype()!r} (set "
                             "dtype: int4)")
        if self.algorithm == "block_min" and "int8_layers" in given:
            raise ValueError("int8_layers is the builder's fixed list; algorithm block_min keeps the LM head int8 "
                             "and every other matmul int4")
        if "int4_ratio" in given and self.algorithm != "awq":
            raise ValueError(f"int4_ratio is an algorithm awq option; algorithm is {self.algorithm!r}")
        if "smooth_quant_alpha" in given and backend not in ("openvino", "auto"):
            raise ValueError(f"smooth_quant_alpha is an openvino int8 option; backend is {backend!r}")
        if "accuracy_control" in given and (backend != "openvino" or self.resolved_dtype() != "int8"):
            raise ValueError("accuracy_control is an openvino int8 option; backend is "
                             f"{backend!r}" + (" (auto's candidate openvino:int8-accuracy-control uses it)"
                                               if backend == "auto" else f" with dtype {self.resolved_dtype()!r}"))
        onnx_only = {"mode", "calibration_method", "op_types", "graph_optimization", "per_channel", "reduce_range"}
        if backend not in ("auto", "onnxruntime") and given & onnx_only:
            raise ValueError(f"{', '.join(sorted(given & onnx_only))}: onnxruntime options; backend is {backend!r}")
        if backend == "torch" and "exclude" in given:
            raise ValueError("exclude is a quanto/onnxruntime option; backend torch casts every layer")
        if backend == "onnxruntime-genai" and "exclude" in given:
            raise ValueError("exclude is a quanto/onnxruntime option; backend onnxruntime-genai quantizes every "
                             "MatMul the model builder emits (lm_head included)")
        bad_ops = [op for op in self.op_types or [] if op not in OP_TYPES]
        if bad_ops:
            raise ValueError(f"op_types: unknown {bad_ops}; allowed: {', '.join(OP_TYPES)}")
        return self

    def resolved_dtype(self) -> str:
        return self.dtype or DEFAULT_DTYPE[self.backend]

    def for_candidate(self, name: str) -> QuantizationConfig:
        """This config with a candidate's backend/dtype/mode (auto's shared settings kept)."""
        values = self.model_dump(exclude={"candidates", "backend", "dtype", "activations", "mode", "if_none_pass",
                                          "algorithm", "group_size", "int8_layers", "int4_ratio",
                                          "lm_head_group_size", "accuracy_control"})
        backend = CANDIDATES[name]["backend"]
        if backend in ("torch", "onnxruntime-genai"):
            values.pop("exclude")
        if backend != "onnxruntime":
            for key in ("calibration_method", "op_types", "graph_optimization", "per_channel", "reduce_range"):
                values.pop(key)
        if backend != "openvino":
            values.pop("smooth_quant_alpha")
        return QuantizationConfig.model_validate({**values, **CANDIDATES[name]})

