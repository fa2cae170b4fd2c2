"""Command line: run a suite, measure the GEMM peak in the same process, write the results."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .flops import gemm_peak
from .harness import VariantSpec, add_fractions, best_peaks, build_and_score, set_threads, time_round_robin
from .report import RESULTS_DIR, environment, write_results
from .timing import SHAPES

log = logging.getLogger("benchmarks")

__all__ = ["main", "run_suite"]


def _threads(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: give comma-separated integers, e.g. 1,2") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--threads {text!r}: give positive integers, e.g. 1,2")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite and write benchmarks/results/<date>-<suite>.{json,md,png}")
    run.add_argument("--suite", choices=["encoder", "decoder", "all"], default="encoder")
    run.add_argument("--quick", action="store_true",
                     help="fewer samples and repeats, short distillation, tiny fine-tuning (< 15 min on 2 cores)")
    run.add_argument("--threads", type=_threads, default=[1, 2],
                     help="thread counts to time, comma-separated; the first is the headline (default 1,2)")
    run.add_argument("--only", default=None,
                     help="comma-separated substrings: run only variants whose name contains one (for debugging)")
    run.add_argument("--skip", default=None, help="comma-separated substrings: leave out variants whose name contains one")
    run.add_argument("--group", default=None,
                     help="comma-separated groups to run: baseline, hfcompress, task (default: all)")
    run.add_argument("--distill-steps", type=int, default=None,
                     help="override every recipe's distillation max_steps (recorded in each variant's info.recipe)")
    run.add_argument("--tag", default=None, help="suffix for the results file names (<date>-<suite>-<tag>)")
    run.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder (default benchmarks/results)")
    again = sub.add_parser("retime", help="re-time a results file's variants round-robin (cached artifacts)")
    again.add_argument("results", type=Path)
    again.add_argument("--threads", type=_threads, default=None)
    again.add_argument("--add", default=None, help="comma-separated exact variant names to build, score and append")
    prof = sub.add_parser("profile", help="operator profile of one model folder (where the time goes)")
    prof.add_argument("folder", type=Path, help="an hfcompress output folder (see info.artifact in a results file)")
    prof.add_argument("--threads", type=int, default=1)
    prof.add_argument("--shape", choices=sorted(SHAPES), default="b8xs128")
    prof.add_argument("--runs", type=int, default=5)
    prof.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md (default: print)")
    return parser


def _make_suite(name: str, quick: bool, distill_steps: int | None = None) -> Any:
    if name == "encoder":
        from .encoder import EncoderSettings, EncoderSuite

        settings = EncoderSettings.quick() if quick else EncoderSettings()
        if distill_steps is not None:
            settings.distill_max_steps = distill_steps
        return EncoderSuite(settings)
    from .decoder import DecoderSettings, DecoderSuite

    return DecoderSuite(DecoderSettings.quick() if quick else DecoderSettings())


def select(specs: list[VariantSpec], only: list[str] | None = None, skip: list[str] | None = None,
           groups: list[str] | None = None) -> list[VariantSpec]:
    """Variants whose name contains one of ``only``, none of ``skip``, in one of ``groups``."""
    out = []
    for spec in specs:
        name = spec.name.lower()
        if only and not any(o.lower() in name for o in only):
            continue
        if skip and any(k.lower() in name for k in skip):
            continue
        if groups and spec.group not in groups:
            continue
        out.append(spec)
    return out


def run_suite(name: str, quick: bool, threads: list[int], only: list[str] | None, out: Path,
              skip: list[str] | None = None, groups: list[str] | None = None, tag: str | None = None,
              distill_steps: int | None = None) -> dict[str, Any]:
    import torch

    started = time.time()
    suite = _make_suite(name, quick, distill_steps)
    timing = suite.timing
    env = environment(threads)
    log.info("measuring the GEMM peak at %s thread(s)", threads)
    peaks = {str(t): gemm_peak(t, repeats=5 if quick else 9) for t in threads}
    log.info("GEMM peak: %s", peaks)
    torch.set_num_threads(max(threads))
    specs: list[VariantSpec] = select(suite.variants(), only, skip, groups)
    # Task-specific variants need neither the base embeddings nor the probe.
    suite.prepare(light=bool(specs) and all(s.group == "task" for s in specs))
    results: dict[str, Any] = {
        "suite": name, "tag": tag, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": quick,
        "environment": env, "shapes": {k: list(v) for k, v in SHAPES.items()},
        "timing": dict(timing.to_dict(), mode="round-robin"),
        "gemm_peak": peaks, "setup": suite.describe(), "variants": [],
    }
    # Phase 1: build, count and score every variant (keeping them loaded); phase 2: time them all
    # round-robin, so load drift on this shared machine hits every variant alike.
    entries = []
    for spec in specs:
        record, built = build_and_score(suite, spec, threads)
        results["variants"].append(record)
        if built is not None:
            entries.append((record, spec, built))
        out.mkdir(parents=True, exist_ok=True)
        (out / f".{name}{tag or ''}-partial.json").write_text(json.dumps(results, indent=2, default=str))
    time_round_robin(suite, entries, threads, timing)
    entries.clear()
    # The peak again at the end: if the machine got busier during the run, the two differ.
    results["gemm_peak_end"] = {str(t): gemm_peak(t, repeats=5 if quick else 9) for t in threads}
    _finish(results, peaks, started)
    paths = write_results(results, out)
    (out / f".{name}{tag or ''}-partial.json").unlink(missing_ok=True)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return results


def retime(path: Path, threads: list[int] | None = None, add: list[str] | None = None) -> dict[str, Any]:
    """Re-time the variants of a results file round-robin (artifacts come from the caches).

    Quality, sizes and FLOPs stay as measured; the previous latencies are kept as
    ``latency_ms_sequential``. For results written before timing was interleaved. ``add``
    names variants (exact names) to build, score and append first, so they are timed together.
    """
    import torch

    results = json.loads(path.read_text())
    threads = threads or [int(t) for t in results["environment"]["threads"]]
    suite = _make_suite(results["suite"], bool(results.get("quick")))
    torch.set_num_threads(max(threads))
    specs = {s.name: s for s in suite.variants()}
    unknown = [a for a in add or [] if a not in specs]
    if unknown:
        raise SystemExit(f"--add {unknown}: no such variant; known: {', '.join(specs)}")
    suite.prepare(light=not add)
    present = {v["name"] for v in results["variants"]}
    added: dict[str, Any] = {}
    for name in add or []:
        if name not in present:
            record, added[name] = build_and_score(suite, specs[name], threads)
            results["variants"].append(record)
    started = time.time()
    start_peaks = {str(t): gemm_peak(t, repeats=9) for t in threads}
    entries = []
    for record in results["variants"]:
        if record["error"] is not None or record["name"] not in specs:
            continue
        spec = specs[record["name"]]
        try:
            set_threads(max(threads))
            built = added.pop(record["name"], None) or _rebuild(record, spec)
        except Exception as exc:  # noqa: BLE001 - keep the others
            record["error"] = f"retime build: {type(exc).__name__}: {exc}"
            continue
        record["latency_ms_sequential"] = record["latency_ms"]
        record["latency_ms"], record["latency_spread_ms"], record["achieved_gflops"] = {}, {}, {}
        record["gemm_peak_at_timing"] = {}
        entries.append((record, spec, built))
    time_round_robin(suite, entries, threads, suite.timing)
    entries.clear()
    results["timing"] = dict(suite.timing.to_dict(), mode="round-robin (retimed)",
                             retimed_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    results["environment"]["load_average_at_retime"] = [round(x, 2) for x in os.getloadavg()]
    results["gemm_peak_end"] = {str(t): gemm_peak(t, repeats=9) for t in threads}
    observations_start = best_peaks(results.get("gemm_peak_start", {}), start_peaks)
    _finish(results, observations_start, started)
    paths = write_results(results, path.parent)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return results


def _rebuild(record: dict[str, Any], spec: VariantSpec) -> Any:
    """The variant as it was scored: an hfcompress output is reloaded from the very folder that
    was measured (a rebuild could differ, e.g. ``quantization: auto`` choosing another backend)."""
    artifact = (record.get("info") or {}).get("artifact")
    if artifact and Path(artifact, "config.json").exists():
        from hfcompress.artifact import load_state

        from .common import built_from_state

        state = load_state(artifact)
        built = built_from_state(state, Path(artifact), state.task)
        built.info.update(record.get("info") or {})
        return built
    return spec.build()


def _finish(results: dict[str, Any], start_peaks: dict[str, dict[str, float]], started: float) -> None:
    """The run's best observed GEMM peak becomes ``gemm_peak``; fractions are recomputed against it."""
    observations = [start_peaks, results.get("gemm_peak_end", {})]
    observations += [v.get("gemm_peak_at_timing", {}) for v in results["variants"]]
    results["gemm_peak_start"] = start_peaks
    results["gemm_peak"] = best_peaks(*observations)
    for record in results["variants"]:
        add_fractions(record, results["gemm_peak"])
    results["elapsed_seconds"] = round(time.time() - started, 1)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    # Root at WARNING: onnxruntime.quantization logs every tensor it skips at INFO on the root logger.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for ours in ("benchmarks", "hfcompress"):
        logging.getLogger(ours).setLevel(logging.INFO)
    if args.command == "retime":
        retime(args.results, args.threads, [a.strip() for a in args.add.split(",")] if args.add else None)
        return 0
    if args.command == "profile":
        from .profiling import markdown, profile_folder

        report = profile_folder(args.folder, args.threads, args.shape, args.runs)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
            args.out.with_suffix(".md").write_text(markdown(report))
        print(markdown(report))
        return 0
    def split(text: str | None) -> list[str] | None:
        return [t.strip() for t in text.split(",") if t.strip()] if text else None

    only, skip, groups = split(args.only), split(args.skip), split(args.group)
    suites = ["encoder", "decoder"] if args.suite == "all" else [args.suite]
    failed = 0
    for name in suites:
        results = run_suite(name, args.quick, args.threads, only, args.out, skip, groups, args.tag, args.distill_steps)
        failed += sum(1 for v in results["variants"] if v["error"])
    if failed:
        log.warning("%d variant(s) failed; their errors are in the results file", failed)
    return 0
