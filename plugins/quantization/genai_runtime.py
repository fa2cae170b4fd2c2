"""onnxruntime-genai for causal LMs: weight-only int4/int8 graphs with a KV cache.

Used by the ``quantization`` technique's ``onnxruntime-genai`` backend (``genai_backend`` turns a
config into these calls and saves/reloads the folder); everything specific to onnxruntime-genai
lives here:

- :func:`build` saves the PyTorch model as a local Hugging Face folder in the step's work dir and
  runs onnxruntime-genai's own model builder on it (``python -m onnxruntime_genai.models.builder
  -i HF_FOLDER -o OUT -p int4|int8 -e cpu``): a ``model.onnx`` (+ ``model.onnx.data``) with
  GroupQueryAttention, a KV cache and weight-only MatMulNBits, plus ``genai_config.json``.
- :func:`set_threads` writes ``intra_op_num_threads`` into ``genai_config.json``: a bare
  ``onnxruntime_genai.Model(folder)`` then runs with the thread count that was timed.
- :class:`GenaiModel` is what ``hfcompress.load`` returns for such a folder: called like a
  transformers causal LM for scoring (``model(input_ids=..., attention_mask=...).logits``, through
  a plain onnxruntime session on the same ``model.onnx`` with an empty KV cache), and
  ``generate(input_ids, max_new_tokens=..., do_sample=False)`` through onnxruntime-genai's own
  ``Generator`` (greedy), returning prompt + new tokens as a torch LongTensor like transformers.

The user-side code is onnxruntime-genai alone (see :data:`USAGE`); token ids go in, so the HF
tokenizer in the folder is the one to use (onnxruntime-genai's tokenizer need not support it).

Example recipe step::

    steps:
      - quantization: {backend: onnxruntime-genai, dtype: int4}
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GENAI_CONFIG = "genai_config.json"
ONNX_FILE = "model.onnx"
BUILDER_MODULE = "onnxruntime_genai.models.builder"
# What the builder's ``-p`` accepts for the CPU execution provider (its own list: "FP32 CPU, INT8
# CPU, INT4 CPU"); int4 and int8 are weight-only MatMulNBits (block size 32, round-to-nearest,
# activations quantized to int8 inside the matmul: accuracy_level 4, its CPU default).
PRECISIONS = ("int4", "int8", "fp32")
BUILD_TIMEOUT_S = 3600

# Text-only causal-LM architectures that onnxruntime-genai 0.18's builder.create_model dispatches
# on (config.architectures[0]); left out: PhiMoEForCausalLM (the builder forces CUDA), the
# remote-code families (ChatGLM, InternLM2, Phi3Small: the builder would run repository code) and
# the multimodal/speech wrappers (Gemma3/4 ConditionalGeneration, Qwen-VL, Whisper, ...).
# Exercised in tests/unit/test_genai_runtime.py: Llama, Qwen2, Mistral, Phi-3, Gemma-2.
SUPPORTED_ARCHITECTURES = (
    "Ernie4_5ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "GptOssForCausalLM", "GraniteForCausalLM", "GraniteMoeHybridForCausalLM", "HunYuanDenseV1ForCausalLM",
    "Lfm2ForCausalLM", "Lfm2MoeForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "NemotronForCausalLM",
    "OlmoForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "SmolLM3ForCausalLM",
)
# ONNX Runtime's CPU GroupQueryAttention kernel refuses other head sizes at run time
# ("head_size shall be a multiple of 16"), after a successful build: refuse them up front.
HEAD_SIZE_MULTIPLE = 16

USAGE = """\
import numpy as np
import onnxruntime_genai as og
from transformers import AutoTokenizer

folder = {folder}
tokenizer = AutoTokenizer.from_pretrained(folder)
model = og.Model(folder)  # reads genai_config.json (threads, EOS, context length)
input_ids = tokenizer("The weather today is", return_tensors="np")["input_ids"]
length = input_ids.shape[1] + 32  # prompt + 32 new tokens{window_note}
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length={max_length})
generator = og.Generator(model, params)
generator.append_tokens(input_ids)
while not generator.is_done() and generator.token_count() < length:
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)))
"""


def window_size(decoder: dict[str, Any]) -> int:
    """The sliding window of genai_config.json's ``decoder`` section (Gemma-2), 0 when there is none."""
    return int(decoder.get("sliding_window", {}).get("window_size") or 0)


def usage(folder: Path, where: str) -> str:
    """:data:`USAGE` for this folder; ``where`` is the expression that names the folder in the code.

    ``max_length`` sizes the KV buffer, and a sliding-window layer (Gemma-2) refuses a buffer
    smaller than its window, so for such models the snippet asks for at least the window."""
    window = window_size(read_config(folder)["model"]["decoder"])
    if not window:
        return USAGE.format(folder=where, max_length="length", window_note="")
    note = f"; the KV buffer must hold the {window}-token sliding window"
    return USAGE.format(folder=where, max_length=f"max(length, {window})", window_note=note)


def unsupported_reason(config: Any) -> str | None:
    """Why the builder cannot produce a working CPU model for this transformers config, or None."""
    archs = list(getattr(config, "architectures", None) or [])
    arch = str(archs[0]) if archs else ""
    if arch not in SUPPORTED_ARCHITECTURES:
        named = arch or f"no architectures in config.json (model_type {getattr(config, 'model_type', None)!r})"
        return (f"onnxruntime-genai's model builder has no exporter for {named}; it supports "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    if getattr(config, "auto_map", None):
        return ("the model ships custom modeling code (auto_map in config.json, e.g. pruned attention heads), "
                "which onnxruntime-genai's model builder does not run")
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    head_dim = getattr(config, "head_dim", None) or (int(config.hidden_size) // heads if heads else 0)
    if int(head_dim) % HEAD_SIZE_MULTIPLE:
        return (f"head_dim {head_dim}: ONNX Runtime's CPU GroupQueryAttention kernel, which the builder's graph "
                f"uses, needs a multiple of {HEAD_SIZE_MULTIPLE}")
    return None


def build(model: Any, tokenizer: Any, precision: str, work_dir: Path, threads: int,
          options: dict[str, str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Run the model builder on ``model`` (saved to ``work_dir/hf`` first) into ``work_dir/genai``.

    A subprocess, as users run the builder: it imports torch/transformers itself, prints a lot,
    and a failure in it must not take the pipeline's process down. Returns the output folder and
    what to record in the step's changes. ``options`` are the builder's ``--extra_options``
    (``algo_config``, ``accuracy_level``, ``block_size``, ...), passed through as given.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: the builder's CPU choices are {', '.join(PRECISIONS)}")
    import onnxruntime_genai

    work_dir = Path(work_dir)
    hf_dir, out_dir, cache_dir = work_dir / "hf", work_dir / "genai", work_dir / "builder-cache"
    for folder in (hf_dir, out_dir, cache_dir):
        shutil.rmtree(folder, ignore_errors=True)
    hf_dir.mkdir(parents=True)
    model.save_pretrained(str(hf_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(hf_dir))
    extra = [f"{key}={value}" for key, value in sorted((options or {}).items())]
    command = [sys.executable, "-m", BUILDER_MODULE, "-i", str(hf_dir), "-o", str(out_dir), "-p", precision,
               "-e", "cpu", "-c", str(cache_dir), "--extra_options", "hf_token=false", *extra]
    started = time.perf_counter()
    log_file = work_dir / "builder.log"
    with open(log_file, "w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
                              env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
    if proc.returncode != 0 or not (out_dir / GENAI_CONFIG).is_file():
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"onnxruntime-genai model builder failed (exit {proc.returncode}); "
                           f"command: {' '.join(command)}; log tail:\n{tail}")
    set_threads(out_dir, threads)
    dropped = drop_out_of_vocab_eos(out_dir)
    # The fp32 copy and the builder's scratch are as large as the input model; only the output stays.
    shutil.rmtree(hf_dir, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    details = {
        "backend": "onnxruntime-genai", "dtype": precision,
        "weights": "fp32 (not quantized)" if precision == "fp32" else f"{precision} weight-only (MatMulNBits)",
        "builder": " ".join([BUILDER_MODULE, "-p", precision, "-e", "cpu", *extra]),
        "onnxruntime_genai": onnxruntime_genai.__version__,
        "kv_cache": True, "intra_op_num_threads": threads,
        **({"eos_ids_dropped": dropped} if dropped else {}),
        "builder_seconds": round(time.perf_counter() - started, 2),
        "size_bytes": onnx_size(out_dir),
    }
    return out_dir, details


def onnx_size(folder: Path) -> int:
    """Bytes of the graph and its external weights (``model.onnx*``)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.startswith(ONNX_FILE))


def read_config(folder: Path) -> dict[str, Any]:
    return dict(json.loads((Path(folder) / GENAI_CONFIG).read_text()))


def write_config(folder: Path, data: dict[str, Any]) -> None:
    (Path(folder) / GENAI_CONFIG).write_text(json.dumps(data, indent=4) + "\n")


def set_threads(folder: Path, threads: int) -> None:
    """``intra_op_num_threads`` in genai_config.json's decoder session options (what a bare
    ``og.Model(folder)`` uses; without it ONNX Runtime takes every core)."""
    data = read_config(folder)
    options = data.setdefault("model", {}).setdefault("decoder", {}).setdefault("session_options", {})
    options["intra_op_num_threads"] = int(threads)
    write_config(folder, data)


def drop_out_of_vocab_eos(folder: Path) -> list[int]:
    """Remove EOS ids >= vocab_size from genai_config.json; returns them.

    The builder adds the tokenizer's ``eos_token`` to the config's EOS ids; a tokenizer that defines
    one outside the model's vocabulary (e.g. an added ``<|endoftext|>``) gives an id onnxruntime-genai
    refuses at run time ("eos_token_id must be in range"), and the model could never emit it anyway.
    """
    data = read_config(folder)
    model = data.get("model", {})
    vocab, eos = int(model.get("vocab_size") or 0), model.get("eos_token_id")
    if not vocab or eos is None:
        return []
    ids = eos if isinstance(eos, list) else [eos]
    kept, dropped = [i for i in ids if int(i) < vocab], [int(i) for i in ids if int(i) >= vocab]
    if dropped and kept:
        model["eos_token_id"] = kept if len(kept) > 1 else kept[0]
        write_config(folder, data)
    return dropped if kept else []


def configured_threads(folder: Path) -> int | None:
    options = read_config(folder).get("model", {}).get("decoder", {}).get("session_options", {})
    value = options.get("intra_op_num_threads")
    return int(value) if value else None


def copy_folder(src: Path, dst: Path) -> None:
    """The builder's output files (graph, external weights, genai_config.json, its tokenizer copies)
    into ``dst``; the HF tokenizer saved afterwards overwrites the tokenizer files."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in Path(src).iterdir():
        if path.is_file() and path.resolve() != (dst / path.name).resolve():
            shutil.copyfile(path, dst / path.name)


def count_parameters(onnx_file: Path) -> int:
    """Logical parameters of a builder graph: initializers, with each MatMulNBits weight counted as
    its K x N elements (its packed bytes, scales and zero points are storage, not parameters)."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    sizes = {init.name: _numel(init.dims) for init in graph.initializer}
    total = sum(sizes.values())
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a.i for a in node.attribute}
        storage = [name for name in list(node.input)[1:4] if name in sizes]
        total -= sum(sizes.pop(name) for name in storage)
        total += int(attrs.get("K", 0)) * int(attrs.get("N", 0))
    return total


def _numel(dims: Any) -> int:
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


class GenaiModel:
    """A builder folder, called like a transformers causal LM.

    ``model(input_ids=..., attention_mask=...)`` returns ``CausalLMOutput(logits=...)`` (torch,
    float32) from a plain ONNX Runtime session on ``model.onnx`` with an empty KV cache (right- or
    left-padded batches; padded positions' logits are zeros where a row is left-padded), and
    ``generate(...)`` decodes greedily with onnxruntime-genai's Generator and its KV cache. Both
    run with ``num_threads`` (default: genai_config.json's ``intra_op_num_threads``).
    """

    input_names = ("input_ids", "attention_mask")
    task = "text-generation"

    def __init__(self, path: str | Path, config: Any = None, num_threads: int | None = None) -> None:
        self.path = Path(path)  # the folder
        self.onnx_file = self.path / str(read_config(self.path)["model"]["decoder"].get("filename", ONNX_FILE))
        self.config = config
        self.num_threads = num_threads or configured_threads(self.path)
        self.num_parameters = count_parameters(self.onnx_file)
        self._session: Any = None
        self._model: Any = None
        decoder = read_config(self.path)["model"]["decoder"]
        self._decoder = decoder
        self._kv = (int(decoder["num_key_value_heads"]), int(decoder["head_size"]))

    # -- runtime objects, created on first use --------------------------------------------------
    def set_num_threads(self, n: int) -> None:
        if n != self.num_threads:
            self.num_threads = n
            self._session = None
            self._model = None

    @property
    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if self.num_threads:
                options.intra_op_num_threads = self.num_threads
            self._session = ort.InferenceSession(str(self.onnx_file), options, providers=["CPUExecutionProvider"])
        return self._session

    @property
    def genai_model(self) -> Any:
        if self._model is None:
            import onnxruntime_genai as og

            config = og.Config(str(self.path))
            if self.num_threads and self.num_threads != configured_threads(self.path):
                # In memory only: the folder keeps the thread count it was timed with.
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": self.num_threads}}}}))
            self._model = og.Model(config)
        return self._model

    @property
    def device(self) -> Any:
        import torch

        return torch.device("cpu")

    def eval(self) -> GenaiModel:
        return self

    # -- scoring ----------------------------------------------------------------------------------
    @property
    def _sliding_inputs(self) -> set[str]:
        """Past inputs of sliding-window layers (Gemma-2): their dim is named past_sliding_length."""
        return {i.name for i in self.session.get_inputs()
                if i.name.startswith("past_key_values") and "sliding" in str(i.shape[2])}

    def _logits(self, ids: Any, mask: Any) -> Any:
        """One prefill with an empty KV cache. Sliding-window layers' GroupQueryAttention wants a
        cache buffer of at least the window (an empty one is refused), and with a buffer it takes
        the call for a continuation, where padding is refused: callers pass unpadded rows then."""
        import numpy as np

        return self.session.run(["logits"], self.prefill_feed(ids, mask))[0].astype(np.float32)

    def prefill_feed(self, ids: Any, mask: Any) -> dict[str, Any]:
        """ONNX Runtime inputs for a prefill of ``ids`` (numpy, batch x length) with an empty KV cache
        (also the calibration inputs of ``genai_calibrated``)."""
        import numpy as np

        feed: dict[str, Any] = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        heads, size = self._kv
        sliding = self._sliding_inputs
        window = window_size(self._decoder)
        for inp in self.session.get_inputs():
            if inp.name.startswith("past_key_values"):
                dtype = np.float16 if "float16" in inp.type else np.float32
                capacity = window if inp.name in sliding else 0
                feed[inp.name] = np.zeros((ids.shape[0], heads, capacity, size), dtype=dtype)
        return feed

    def __call__(self, input_ids: Any = None, attention_mask: Any = None, **ignored: Any) -> Any:
        import numpy as np
        import torch
        from transformers.modeling_outputs import CausalLMOutput

        if input_ids is None:
            raise ValueError("the onnxruntime-genai model needs input_ids")
        ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
        if attention_mask is None:
            mask = np.ones_like(ids)
        else:
            mask = (attention_mask.detach().cpu().numpy() if isinstance(attention_mask, torch.Tensor)
                    else np.asarray(attention_mask)).astype(np.int64)
        lengths = mask.sum(1)
        right_padded = all(mask[i, : lengths[i]].all() for i in range(mask.shape[0]))
        if right_padded and (not self._sliding_inputs or bool(mask.all())):
            # GroupQueryAttention reads each row's length from the mask: right padding is exact.
            logits = self._logits(ids, mask)
        else:  # left padding, holes or a sliding window: each row's real tokens alone, put back in place
            rows = []
            for i in range(ids.shape[0]):
                keep = mask[i].astype(bool)
                row = self._logits(ids[i: i + 1, keep], np.ones((1, int(keep.sum())), np.int64))[0]
                full = np.zeros((ids.shape[1], row.shape[-1]), dtype=np.float32)
                full[keep] = row
                rows.append(full)
            logits = np.stack(rows)
        return CausalLMOutput(logits=torch.from_numpy(logits))

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, input_ids: Any, attention_mask: Any = None, max_new_tokens: int = 20,
                 do_sample: bool = False, max_length: int | None = None, min_new_tokens: int | None = None,
                 **kwargs: Any) -> Any:
        """Greedy decoding like transformers' ``generate``: prompt + new tokens per row, stopping at
        the EOS token of genai_config.json; rows of a batch are padded on the right with the pad
        token to one length (each row is decoded on its own, its padding per ``attention_mask`` left
        out)."""
        import numpy as np
        import onnxruntime_genai as og
        import torch

        if do_sample or kwargs.get("num_beams", 1) != 1:
            raise ValueError("GenaiModel.generate does greedy decoding only (do_sample=False, num_beams=1)")
        ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        mask = (np.ones_like(ids) if attention_mask is None else
                (attention_mask.detach().cpu().numpy() if isinstance(attention_mask, torch.Tensor)
                 else np.asarray(attention_mask)))
        genai = read_config(self.path)["model"]
        context = int(genai.get("context_length") or 0)
        window = window_size(genai["decoder"])
        rows = []
        for i in range(ids.shape[0]):
            prompt = ids[i][mask[i].astype(bool)].astype(np.int32)
            limit = max_length if max_length is not None else len(prompt) + max_new_tokens
            if context:
                limit = min(limit, context)
            if limit <= len(prompt):
                rows.append(ids[i].tolist())
                continue
            params = og.GeneratorParams(self.genai_model)
            # max_length sizes the shared KV buffer; a sliding-window layer (Gemma-2) refuses one
            # smaller than its window, so the buffer may be longer and the loop counts tokens.
            buffer = max(limit, window) if not context else min(max(limit, window), context)
            params.set_search_options(do_sample=False, max_length=int(buffer))
            if min_new_tokens:  # EOS is ignored until then (timing a fixed number of tokens)
                params.set_search_options(min_length=min(int(buffer), len(prompt) + int(min_new_tokens)))
            generator = og.Generator(self.genai_model, params)
            generator.append_tokens(prompt[None])
            while not generator.is_done() and generator.token_count() < limit:
                generator.generate_next_token()
            new = [int(t) for t in generator.get_sequence(0)[len(prompt): limit]]
            rows.append(ids[i].tolist() + new)
        pad = genai.get("pad_token_id")
        pad = int(pad[0] if isinstance(pad, list) else pad) if pad is not None else 0
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)

    def __repr__(self) -> str:
        return f"GenaiModel({self.path}, threads={self.num_threads})"
