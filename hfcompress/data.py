"""Data specs: parse, load, and split deterministically into train/calibration and evaluation.

A spec is a built-in source (``vader:movie``), a local file (csv/json/jsonl/parquet/txt) or a
Hub dataset id. The split is by a hash of each text, not by position: it does not depend on
file order, and duplicated sentences always land on the same side, so evaluation never sees a
sample (or a copy of one) used for training or calibration.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

LOCAL_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


class ExtraTrainSource(BaseModel):
    """One extra training source (``data.extra_train``). A plain string is shorthand for ``{source: SPEC}``."""

    model_config = ConfigDict(extra="forbid")

    source: str
    text_column: str = "text"
    split: str = "train"
    max_samples: int | None = Field(None, gt=0)
    """Take at most this many of its texts (the first ones, after dropping evaluation texts)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value


class DataConfig(BaseModel):
    """The recipe's ``data`` section. A plain string is shorthand for ``{source: SPEC}``."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    """One spec, split by ``eval_fraction`` into train/calibration and evaluation parts."""
    train: str | None = None
    eval: str | None = None
    """Separate specs for train/calibration and evaluation (instead of ``source``)."""
    split: str = "train"
    """Which split of a Hub dataset or local file to read."""
    text_column: str = "text"
    label_column: str | None = None
    """Column of integer labels; default: ``label`` when the data has one."""
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    max_train_samples: int | None = Field(None, gt=0)
    max_eval_samples: int | None = Field(None, gt=0)
    extra_train: list[ExtraTrainSource] = Field(default_factory=list)
    """More training text from other sources (e.g. every ``vader:*`` set, or the user's own text),
    appended to the training split after it is cut. Text only: with extra sources the training
    split carries no labels (distillation learns from the teacher's outputs alone), and any text
    that is in the evaluation split is dropped, so evaluation still never sees a training text."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_way(self) -> DataConfig:
        if self.source and (self.train or self.eval):
            raise ValueError("give either 'source' (split automatically) or 'train' and 'eval', not both")
        if not self.source and not (self.train and self.eval):
            raise ValueError("give 'source' (one spec, split automatically) or both 'train' and 'eval'")
        return self


@dataclass
class DataSplits:
    train: datasets.Dataset
    eval: datasets.Dataset
    fingerprint: str
    label_names: list[str] | None = None
    """Class names, when the data labels classes by name (``yes``/``no``): id i is ``label_names[i]``."""
    train_sources: dict[str, int] | None = None
    """Training texts per source when ``extra_train`` mixes sources (the recipe's own part first;
    ``SPEC (COLUMN)`` for a source read from another column than ``text``)."""

    @property
    def has_labels(self) -> bool:
        return "label" in self.train.column_names


def _builtin_source(spec: str) -> tuple[Any, str] | None:
    from .registry import get_registry

    if ":" not in spec:
        return None
    prefix, subset = spec.split(":", 1)
    sources = get_registry().data_sources
    if prefix not in sources:
        return None
    source_cls = sources[prefix].cls
    if source_cls.subsets and subset not in source_cls.subsets:
        raise BadInputError(
            f"data spec {spec!r}: unknown subset {subset!r} of source {prefix!r}; "
            f"available: {', '.join(prefix + ':' + s for s in source_cls.subsets)}"
        )
    return source_cls(), subset


def validate_spec(spec: str) -> None:
    """Cheap checks (no loading) so a bad spec fails before any heavy work."""
    if _builtin_source(spec) is not None:
        return
    path = Path(spec).expanduser()
    if path.suffix.lower() in LOCAL_BUILDERS or path.exists():
        if not path.exists():
            raise BadInputError(f"data spec {spec!r}: file not found. Give an existing csv/json/jsonl/parquet/txt file.")
        if path.is_file() and path.suffix.lower() not in LOCAL_BUILDERS:
            raise BadInputError(
                f"data spec {spec!r}: unsupported file type {path.suffix!r}; supported: {', '.join(LOCAL_BUILDERS)}"
            )
        return
    if ":" in spec and "/" not in spec.split(":", 1)[0]:
        from .registry import get_registry

        known = ", ".join(sorted(get_registry().data_sources)) or "none"
        raise BadInputError(
            f"data spec {spec!r}: unknown data source {spec.split(':', 1)[0]!r}; built-in sources: {known}. "
            "Otherwise give a local file or a Hub dataset id."
        )


def load_spec(spec: str, split: str = "train") -> datasets.Dataset:
    """Load one spec as a ``datasets.Dataset`` (columns as in the source)."""
    import datasets

    validate_spec(spec)
    builtin = _builtin_source(spec)
    if builtin is not None:
        source, subset = builtin
        return source.load(subset)
    path = Path(spec).expanduser()
    if path.exists():
        files = [str(p) for p in sorted(path.glob("*")) if p.suffix.lower() in LOCAL_BUILDERS] if path.is_dir() else [str(path)]
        if not files:
            raise BadInputError(f"data spec {spec!r}: the folder holds no csv/json/jsonl/parquet/txt file")
        builder = LOCAL_BUILDERS[Path(files[0]).suffix.lower()]
        empty = [f for f in files if not _has_rows(Path(f))]
        if len(empty) == len(files):
            raise BadInputError(
                f"data spec {spec!r}: {', '.join(Path(f).name for f in empty)} holds no samples (empty, or a header "
                "line only). Give a file with one sample per row (column 'text', and 'label' for labelled data)."
            )
        try:
            return datasets.load_dataset(builder, data_files=[f for f in files if f not in empty], split="train")
        except Exception as exc:  # malformed rows: name the file, not the datasets internals
            raise BadInputError(
                f"data spec {spec!r}: could not read it as {builder} ({type(exc).__name__}: {exc}). "
                "Check the file's format."
            ) from exc
    try:
        return datasets.load_dataset(spec, split=split)
    except Exception as exc:
        raise BadInputError(
            f"data spec {spec!r}: could not load it as a Hub dataset ({type(exc).__name__}: {exc}). "
            "Check the id and your connection, or give a local file or a built-in source such as vader:movie."
        ) from exc


def _has_rows(file: Path) -> bool:
    """Whether a local file holds at least one sample, read cheaply (no parsing of the whole file).

    Text/JSON lines: a non-blank line; csv: a non-blank line after the header. Parquet and JSON
    arrays are left to the loader (their emptiness is caught after loading)."""
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".txt", ".jsonl"):
        return file.stat().st_size > 0
    needed = 2 if suffix == ".csv" else 1
    with file.open("r", encoding="utf-8", errors="replace") as handle:
        found = 0
        for line in handle:
            found += bool(line.strip())
            if found >= needed:
                return True
    return False


def _normalize(ds: datasets.Dataset, cfg: DataConfig, spec: str) -> datasets.Dataset:
    """Rename the configured columns to ``text``/``label`` and drop the rest."""
    cols = ds.column_names
    if cfg.text_column not in cols:
        raise BadInputError(
            f"data {spec!r}: text_column {cfg.text_column!r} does not exist; columns are: {', '.join(cols)}. "
            "Set data.text_column in the recipe."
        )
    label_col = cfg.label_column or ("label" if "label" in cols else None)
    if cfg.label_column and cfg.label_column not in cols:
        raise BadInputError(
            f"data {spec!r}: label_column {cfg.label_column!r} does not exist; columns are: {', '.join(cols)}."
        )
    keep = {cfg.text_column: "text"}
    if label_col:
        keep[label_col] = "label"
    ds = ds.select_columns(list(keep)).rename_columns({k: v for k, v in keep.items() if k != v})
    return ds.filter(lambda t: isinstance(t, str) and t.strip() != "", input_columns="text")


def _bucket(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.strip().encode("utf-8")).digest()[:8], "big") / 2**64


def load_data(cfg: DataConfig) -> DataSplits:
    """Load and split the recipe's data. Evaluation never contains a training/calibration text."""
    if cfg.source:
        full = _normalize(load_spec(cfg.source, cfg.split), cfg, cfg.source)
        buckets = [_bucket(t) for t in full["text"]]
        train = full.select([i for i, b in enumerate(buckets) if b >= cfg.eval_fraction])
        evl = full.select([i for i, b in enumerate(buckets) if b < cfg.eval_fraction])
    else:
        assert cfg.train and cfg.eval
        train = _normalize(load_spec(cfg.train, cfg.split), cfg, cfg.train)
        evl = _normalize(load_spec(cfg.eval, cfg.split), cfg, cfg.eval)
        seen = {t.strip() for t in train["text"]}
        evl = evl.filter(lambda t: t.strip() not in seen, input_columns="text")
    train, evl, label_names = encode_labels(train, evl)
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples:
        evl = evl.select(range(min(cfg.max_eval_samples, len(evl))))
    train_sources = None
    if cfg.extra_train and len(train) and len(evl):
        train, train_sources = _add_extra_train(train, evl, cfg)
    if len(train) == 0 or len(evl) == 0:
        raise BadInputError(
            f"data: the split left {len(train)} training and {len(evl)} evaluation samples (non-empty texts); "
            "give more data, or separate `train` and `eval` specs"
        )
    digest = hashlib.sha256()
    for part in (train, evl):
        for text in part["text"]:
            digest.update(text.encode("utf-8") + b"\0")
        if "label" in part.column_names:
            digest.update(repr(list(part["label"])).encode())
    if label_names:
        digest.update(repr(label_names).encode())
    return DataSplits(train=train, eval=evl, fingerprint=digest.hexdigest()[:16], label_names=label_names,
                      train_sources=train_sources)


def _add_extra_train(
    train: datasets.Dataset, evl: datasets.Dataset, cfg: DataConfig
) -> tuple[datasets.Dataset, dict[str, int]]:
    """The training split plus each extra source's texts, as one text-only dataset.

    The extra texts go after the recipe's own: calibration (pruning importance, quantization)
    reads the first texts, so it stays on the target domain, while distillation draws batches
    from a seeded permutation of all of them. A text already taken, or in the evaluation split,
    is dropped (exact match after stripping), so no source can leak evaluation data into training."""
    import datasets

    primary = cfg.source or cfg.train
    taken = {t.strip() for t in evl["text"]} | {t.strip() for t in train["text"]}
    texts, sources = list(train["text"]), {str(primary): len(train)}
    for extra in cfg.extra_train:
        columns = DataConfig.model_validate({"source": extra.source, "text_column": extra.text_column})
        ds = _normalize(load_spec(extra.source, extra.split), columns, extra.source)
        added = 0
        for text in ds["text"]:
            if extra.max_samples and added >= extra.max_samples:
                break
            key = text.strip()
            if key not in taken:
                taken.add(key)
                texts.append(text)
                added += 1
        name = extra.source if extra.text_column == "text" else f"{extra.source} ({extra.text_column})"
        sources[name] = sources.get(name, 0) + added
    return datasets.Dataset.from_dict({"text": texts}), sources


def encode_labels(
    train: datasets.Dataset, evl: datasets.Dataset
) -> tuple[datasets.Dataset, datasets.Dataset, list[str] | None]:
    """Integer class ids for both splits; class *names* become ids the way ``datasets.ClassLabel``
    does (sorted names, one table for both splits, so "yes" is the same id in train and eval)."""
    import datasets

    if "label" not in train.column_names:
        return train, evl, None
    values = set(train["label"]) | set(evl["label"])
    if None in values:
        raise BadInputError("data: some samples have no label; label every sample or drop the label column")
    if all(isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in values):
        return train, evl, None
    if not all(isinstance(v, str) for v in values):
        raise BadInputError(
            f"data: labels must be integer class ids or class names, got {sorted(map(repr, values))[:5]}; "
            "regression targets are not supported"
        )
    names = sorted(values)
    feature = datasets.ClassLabel(names=names)
    return train.cast_column("label", feature), evl.cast_column("label", feature), names
