"""Built-in data source ``vader:movie|tweets|amazon|nyt``: human-rated sentiment sentences.

The ground-truth files ship inside the source archive of ``vaderSentiment==3.3.2`` on PyPI
(Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media
Text", ICWSM 2014). The archive is obtained with pip (the only network access), its sha256 is
checked, and each subset is cached as a ``datasets`` dataset. Columns: ``text``, ``rating``
(mean human rating, -4..4) and ``label`` (1 when the mean rating is > 0).

    data: vader:movie
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hfcompress.plugin import BadInputError, DataSource, hookimpl

ARCHIVE = "vaderSentiment-3.3.2.tar.gz"
SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
FILES = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_archive(dest: Path) -> Path:
    archive = dest / ARCHIVE
    if archive.exists() and _sha256(archive) == SHA256:
        return archive
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "vaderSentiment==3.3.2", "-d", tmp, "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / ARCHIVE
        if proc.returncode != 0 or not got.exists():
            raise BadInputError(
                "vader data: could not obtain the vaderSentiment==3.3.2 source archive with pip "
                f"({proc.stderr.strip()[-300:]}). Check access to the package index."
            )
        digest = _sha256(got)
        if digest != SHA256:
            raise BadInputError(f"vader data: {ARCHIVE} has sha256 {digest}, expected {SHA256}; refusing to use it")
        tmp_target = dest / f"{ARCHIVE}.{os.getpid()}.part"
        tmp_target.write_bytes(got.read_bytes())
        tmp_target.replace(archive)
    return archive


def _parse(raw: bytes) -> dict[str, list[Any]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # some lines of the original files are cp1252
        text = raw.decode("cp1252", errors="replace")
    rows: dict[str, list[Any]] = {"id": [], "text": [], "rating": [], "label": []}
    for line in text.splitlines():
        parts = line.strip("\r\n").split("\t")
        if len(parts) < 3:
            continue
        rating = float(parts[1])
        rows["id"].append(parts[0])
        rows["text"].append("\t".join(parts[2:]).strip())
        rows["rating"].append(rating)
        rows["label"].append(int(rating > 0))
    return rows


class VaderSource(DataSource):
    name = "vader"
    summary = "Human-rated sentiment sentences from VADER (Hutto & Gilbert, ICWSM 2014): movie, tweets, amazon, nyt"
    subsets = tuple(FILES)
    description = "human-rated sentiment sentences from VADER (Hutto & Gilbert, ICWSM 2014); label = mean rating > 0"
    license = "MIT"  # vaderSentiment and its ground-truth files are released under the MIT License

    def load(self, subset: str) -> Any:
        import datasets

        from hfcompress.plugin import cache_dir

        root = cache_dir("data", "vader-3.3.2")
        target = root / subset
        if (target / "dataset_info.json").exists():
            return datasets.load_from_disk(str(target))
        archive = _fetch_archive(root)
        with tarfile.open(archive) as outer:
            member = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
            assert member is not None
            with tarfile.open(fileobj=io.BytesIO(member.read())) as inner:
                data = inner.extractfile(f"hutto_ICWSM_2014/{FILES[subset]}")
                assert data is not None
                rows = _parse(data.read())
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
    register(VaderSource)
