"""How to load the output, per format: transformers (with ``trust_remote_code`` for pruned shapes),
optimum-quanto through ``hfcompress.load``, ONNX Runtime, and sentence-transformers when the base was one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

AUTO_CLASSES = {"feature-extraction": "AutoModel", "text-classification": "AutoModelForSequenceClassification",
                "text-generation": "AutoModelForCausalLM"}
EXAMPLE_TEXT = "An example sentence."
log = logging.getLogger("hfcompress.card")


def _technique_snippet(folder: Path, marker: dict[str, Any], repo: str | None, where: str) -> list[str] | None:
    """The snippet of the technique that saved a custom format (its ``usage_snippet``), if any."""
    if not marker.get("loader"):
        return None
    from ..errors import HfCompressError
    from ..registry import get_registry

    try:
        technique = get_registry().technique(str(marker["loader"]))
    except HfCompressError as exc:  # not installed here: the card falls back to the standard snippets
        log.warning("card: no usage snippet from technique %r: %s", marker["loader"], exc)
        return None
    code = type(technique).usage_snippet(folder, marker, f'snapshot_download("{repo}")' if repo else f'"{where}"')
    if code is None:
        return None
    imports = "from huggingface_hub import snapshot_download\n" if repo else ""
    return [f"With the runtime's own library (the folder was written by `{marker['loader']}`):", "",
            "```python", imports + code.rstrip("\n"), "```", "", *_hfcompress_load(repo, where)]


def _snippet(folder: Path, task: str, repo: str | None, local_name: str) -> list[str]:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    marker = config.get("hfcompress") or {}
    fmt_name = marker.get("format", "pytorch")
    where = repo or f"./{local_name}"
    auto = AUTO_CLASSES[task]
    text = EXAMPLE_TEXT
    # A folder with custom shapes (pruned heads) ships its modeling code: the model needs
    # trust_remote_code. Its tokenizer has no code and config.json names the stock model type, so
    # the tokenizer loads without it (folders from older versions named the pruned classes' own
    # type, and there the tokenizer asked interactively too).
    remote = ", trust_remote_code=True" if config.get("auto_map") else ""
    tokenizer_remote = remote if str(config.get("model_type", "")).startswith("hfcompress-pruned-") else ""
    from ..artifact import find_onnx_file
    from ..sentence_pipeline import modules

    lines = _sentence_transformers_snippet(folder, task, fmt_name, where, text)
    custom = _technique_snippet(folder, marker, repo, where)
    if custom is not None:
        return lines + custom
    onnx_file = find_onnx_file(folder)
    # a sentence-transformers pipeline that normalizes: the plain snippets say so too
    normalize = any("Normalize" in str(m.get("type")) for m in modules(folder) or [])
    if fmt_name == "onnx" or onnx_file is not None:
        rel = onnx_file.relative_to(folder).as_posix() if onnx_file is not None else "model.onnx"
        return lines + _onnx_snippet(task, repo, where, rel, text, normalize)
    if fmt_name == "quanto":
        return lines + [
            "The weights are quantized with optimum-quanto; hfcompress restores them "
            "(`pip install 'hfcompress[quanto]'`):",
            "",
            *_hfcompress_load(repo, where, header=False),
        ]
    if remote:
        lines += [
            "The pruned layers have per-layer shapes that no stock config describes, so the folder ships its "
            "modeling code (`modeling_hfcompress_pruned.py`, needs only torch and transformers): the model "
            "loads with `trust_remote_code=True`; the tokenizer has no custom code and needs no such flag:",
            "",
        ]
    return lines + _transformers_snippet(task, auto, where, text, remote, tokenizer_remote, normalize)


def _onnx_snippet(task: str, repo: str | None, where: str, rel: str, text: str, normalize: bool) -> list[str]:
    """ONNX Runtime on the folder's graph (``rel``), then the hfcompress loader."""
    fetch = f'hf_hub_download("{repo}", "{rel}")' if repo else f'"{where}/{rel}"'
    imports = "from huggingface_hub import hf_hub_download\n" if repo else ""
    out = "last_hidden_state" if task == "feature-extraction" else "logits"
    note = "  # mean-pool it with the attention mask" if task == "feature-extraction" else ""
    note += ", then L2-normalize (the pipeline's Normalize)" if note and normalize else ""
    # A bare session computes exactly what was evaluated: no load-time options to remember.
    session = f"ort.InferenceSession({fetch})"
    return [
        "ONNX Runtime, no PyTorch needed (`pip install onnxruntime transformers`):",
        "",
        "```python",
        f"import onnxruntime as ort\n{imports}from transformers import AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f"session = {session}",
        "names = {i.name for i in session.get_inputs()}",
        f'batch = tokenizer(["{text}"], padding=True, return_tensors="np")',
        f"({out},) = session.run(None, {{k: v for k, v in batch.items() if k in names}}){note}",
        "```",
        "",
        *_hfcompress_load(repo, where),
    ]


def _transformers_snippet(
    task: str, auto: str, where: str, text: str, remote: str, tokenizer_remote: str, normalize: bool
) -> list[str]:
    """PyTorch through transformers' Auto class for the task."""
    use = {
        "feature-extraction": [
            "with torch.no_grad():",
            "    hidden = model(**batch).last_hidden_state",
            'mask = batch["attention_mask"].unsqueeze(-1).float()',
            "embeddings = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling",
            *(["embeddings = torch.nn.functional.normalize(embeddings, dim=-1)  # the pipeline's Normalize"]
              if normalize else []),
        ],
        "text-classification": [
            "with torch.no_grad():",
            "    predicted = model(**batch).logits.argmax(-1)",
        ],
        "text-generation": [
            "output = model.generate(**batch, max_new_tokens=20)",
            "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        ],
    }[task]
    return [
        "```python",
        "import torch",
        f"from transformers import {auto}, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}"{tokenizer_remote})',
        f'model = {auto}.from_pretrained("{where}"{remote})',
        f'batch = tokenizer(["{text}"], padding=True, return_tensors="pt")',
        *use,
        "```",
    ]


def _sentence_transformers_snippet(folder: Path, task: str, fmt_name: str, where: str, text: str) -> list[str]:
    """For an output that is a sentence-transformers model (modules.json kept from the base): the
    call its users already make, with the folder in place of the base model; first on the card."""
    from ..sentence_pipeline import loader_kwargs, modules

    mods = modules(folder)
    if mods is None or task != "feature-extraction" or fmt_name not in ("pytorch", "onnx", "openvino"):
        return []
    kwargs = loader_kwargs(folder)
    args = "".join(f", {k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in kwargs.items())
    chain = " → ".join(str(m.get("type", "?")).rsplit(".", 1)[-1] for m in mods)
    lines = [
        f"A sentence-transformers model: the folder keeps the base model's pipeline ({chain}, from "
        "`modules.json`), so existing code only changes the model path (`pip install sentence-transformers`):",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{where}"{args})',
        f'embeddings = model.encode(["{text}"])',
        "```",
        "",
    ]
    if kwargs.get("trust_remote_code"):
        lines += [
            "`trust_remote_code=True` is required: the pruned layers are built by the folder's own "
            "`modeling_hfcompress_pruned.py` (needs only torch and transformers). Without it, transformers "
            "builds the stock architecture and refuses the pruned weights (size mismatch).",
            "",
        ]
    if kwargs.get("backend") == "onnx":
        lines += [
            "`backend=\"onnx\"` loads `onnx/model.onnx` through optimum-onnx's ONNX Runtime models "
            "(`pip install \"sentence-transformers[onnx]\"`, which needs a transformers version optimum-onnx "
            "supports); without optimum-onnx, use ONNX Runtime directly as below.",
            "",
        ]
    if kwargs.get("backend") == "openvino":
        lines += [
            "`backend=\"openvino\"` loads `openvino/openvino_model.xml` through optimum-intel "
            "(`pip install \"sentence-transformers[openvino]\"`, which needs a transformers version optimum-intel "
            "supports); without optimum-intel, use OpenVINO directly as below.",
            "",
        ]
    return lines


def _hfcompress_load(repo: str | None, where: str, header: bool = True) -> list[str]:
    lines = ["Or with hfcompress, which loads every format the same way:", ""] if header else []
    fetch = f'snapshot_download("{repo}")' if repo else f'"{where}"'
    imports = "from huggingface_hub import snapshot_download\n" if repo else ""
    return lines + [
        "```python",
        f"{imports}import hfcompress",
        "",
        f"state = hfcompress.load_state({fetch})",
        "model, tokenizer = state.model, state.tokenizer",
        "```",
    ]
