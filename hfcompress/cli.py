"""The ``hfcompress`` command line. Exit codes: 0 ok · 2 bad input · 3 quality gate failed · 1 other.

Only argparse is imported at start-up; torch and transformers load inside the commands that
need them, so ``hfcompress --help`` and ``hfcompress plugins`` answer fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, TextIO

from . import __version__

# With --json, stdout carries the JSON document and nothing else. Libraries write to it on their
# own (NNCF draws its progress bars there), so main() sends everything printed while a command
# runs to stderr and the command's document goes here, to the stdout main() started with.
_json_out: TextIO = sys.stdout


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str), file=_json_out, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfcompress",
        description="Make Hugging Face models smaller and faster (pruning, distillation, quantization), "
        "measured against the original.",
    )
    parser.add_argument("--version", action="version", version=f"hfcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a recipe (no recipe: the embedded default on all-MiniLM-L6-v2)")
    run.add_argument("recipe", nargs="?", help="recipe YAML file (default: the embedded default recipe)")
    run.add_argument("--model", help="model: Hub id, local folder or builtin:NAME (overrides the recipe)")
    run.add_argument("--data", help="data spec, e.g. vader:movie, a csv/json/jsonl/parquet/txt file, a Hub dataset id")
    run.add_argument("--output", default="hfcompress-output", help="output folder (default: %(default)s)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "xla"], help="device (default: the recipe's, auto)")
    run.add_argument("--push-to", metavar="REPO_ID", help="push the output folder to this Hub repo")
    run.add_argument("--max-drop", action="append", default=[], metavar="METRIC=VALUE",
                     help="quality gate: fail (exit 3, no push) if METRIC drops by more than VALUE; repeatable")
    run.add_argument("--no-cache", action="store_true", help="recompute every step, ignoring the step cache")
    run.add_argument("--storage", metavar="URL",
                     help="a recipe with a `search` section: the Optuna storage (SQLAlchemy URL) holding the search, "
                     "shared by every worker pointed at it (default: SQLite under the cache); a re-run resumes it")
    run.add_argument("--json", action="store_true", help="print results.json to stdout")
    chatter = run.add_mutually_exclusive_group()
    chatter.add_argument("--quiet", action="store_true", help="no progress messages")
    chatter.add_argument("-v", "--verbose", action="store_true",
                         help="every library's log lines, and the full traceback when something fails")

    plugins = sub.add_parser("plugins", help="list techniques, evaluators and data sources with their distributions")
    plugins.add_argument("--json", action="store_true")

    evaluate = sub.add_parser("evaluate", help="evaluate a model folder or Hub id on held-out data")
    evaluate.add_argument("model", metavar="DIR_OR_MODEL")
    evaluate.add_argument("--data", help="data spec (default: the folder's recipe data, else required)")
    evaluate.add_argument("--threads", type=int, help="threads (default: the folder's recipe, else 1)")
    evaluate.add_argument("--json", action="store_true")

    push = sub.add_parser("push", help="verify an output folder and push it to the Hub")
    push.add_argument("folder", metavar="DIR")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    push.add_argument("--create-pr", action="store_true")
    push.add_argument("--revision", metavar="BRANCH")
    push.add_argument("--json", action="store_true")
    for command in (plugins, evaluate, push):
        command.add_argument("-v", "--verbose", action="store_true",
                             help="every library's log lines, full tracebacks (of errors and broken plugins)")
    return parser


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value > 10_000:
        return f"{value:,}"
    return "-" if value is None else str(value)


def summary_table(results: dict[str, Any]) -> str:
    """Base vs compressed, one row per measured quantity; then the settings they were measured with."""
    base, comp = results.get("base", {}), results.get("compressed", {})
    rows = [("size_bytes", base.get("size_bytes"), comp.get("size_bytes")),
            ("num_parameters", base.get("num_parameters"), comp.get("num_parameters")),
            ("latency_ms", base.get("latency_ms"), comp.get("latency_ms"))]
    for name in sorted(set(base.get("metrics", {})) | set(comp.get("metrics", {}))):
        rows.append((name, base.get("metrics", {}).get(name), comp.get("metrics", {}).get(name)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'base':>14}  {'compressed':>14}  {'ratio':>7}"]
    for name, b, c in rows:
        ratio = f"{b / c:.2f}x" if name in ("size_bytes", "latency_ms", "num_parameters") and b and c else ""
        lines.append(f"{name:{width}}  {_fmt(b):>14}  {_fmt(c):>14}  {ratio:>7}")
    # conditions, not results: the same for both models, so one line rather than two columns
    settings = comp.get("settings") or base.get("settings") or {}
    if settings:
        lines.append("measured with: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(settings.items())))
    return "\n".join(lines)


def _parse_max_drop(items: list[str]) -> dict[str, float]:
    from .errors import BadInputError

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise BadInputError(f"--max-drop {item!r}: expected METRIC=VALUE, for example --max-drop accuracy=0.01")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import _resolve_recipe, compress, configure_logging
    from .recipe import GateConfig

    configure_logging(not args.quiet, verbose=args.verbose)
    recipe = _resolve_recipe(args.model, args.recipe, args.data)
    drops = _parse_max_drop(args.max_drop)
    if drops:
        gate = recipe.gate or GateConfig()
        gate.max_drop.update(drops)
        recipe.gate = gate
    if recipe.search is not None:
        from .recipe_search import search

        result = search(recipe=recipe, output_dir=args.output, storage=args.storage, push_to=args.push_to,
                        device=args.device, use_cache=not args.no_cache)
    elif args.storage:
        from .errors import BadInputError

        raise BadInputError("--storage: only a recipe with a `search` section uses a storage (see docs/search.md)")
    else:
        result = compress(recipe=recipe, output_dir=args.output, push_to=args.push_to, device=args.device,
                          use_cache=not args.no_cache)
    if args.json:
        _emit_json({**result.results, "output_dir": str(result.output_dir), "push": result.push})
    else:
        print(summary_table(result.results))
        searched = result.results.get("search")
        if searched:
            print(f"\nsearch: chosen trial {searched['chosen']} of {len(searched['trials'])} "
                  f"(study {searched['study']}); the numbers above are on held-out data no trial was scored on")
        print(f"\nwrote {result.output_dir}")
        if result.push:
            print(f"pushed to {result.push.get('url', args.push_to)}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    data = get_registry().as_json()
    if args.json:
        _emit_json(data)
        return 0
    for kind in ("techniques", "evaluators", "data_sources"):
        print(f"{kind.replace('_', ' ')}:")
        for row in data[kind]:
            formats = ""
            if "accepts_formats" in row:
                formats = f"  [{', '.join(row['accepts_formats'])} -> {', '.join(row['produces_formats'])}]"
            clash = "  CONFLICT (see below)" if row.get("conflict") else ""
            print(f"  {row['name']:<16} {row['distribution']} {row['version']}{clash}  {row['summary']}{formats}")
    for row in data["broken"]:
        # The first line says what is wrong; the rest is the import traceback, for --verbose.
        error = row["error"] if args.verbose else row["error"].splitlines()[0]
        print(f"broken plugin {row['name']} ({row['distribution']} {row['version']}): {error}", file=sys.stderr)
    for row in data["conflicts"]:
        print(f"conflict: {row['message']}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate_command import evaluate_path
    from .plugin import EvalSettings

    if args.verbose:
        from .pipeline import configure_logging

        configure_logging(verbose=True)
    settings = EvalSettings(threads=args.threads) if args.threads else None
    results = evaluate_path(args.model, args.data, settings)
    if args.json:
        _emit_json(results)
    else:
        block = results.get("model", results)
        for key in ("size_bytes", "num_parameters", "latency_ms"):
            print(f"{key:<24} {_fmt(block.get(key))}")
        for key, value in sorted(block.get("metrics", {}).items()):
            print(f"{key:<24} {_fmt(value)}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .hub import push_to_hub

    if args.verbose:
        from .pipeline import configure_logging

        configure_logging(verbose=True)
    result = push_to_hub(Path(args.folder), args.repo_id, private=args.private, revision=args.revision,
                         create_pr=args.create_pr)
    if args.json:
        _emit_json(result)
    else:
        print(f"pushed {args.folder} to {args.repo_id}: {result.get('commit_url') or 'no change, nothing committed'}")
    return 0


COMMANDS = {"run": cmd_run, "plugins": cmd_plugins, "evaluate": cmd_evaluate, "push": cmd_push}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from .errors import HfCompressError

    global _json_out
    _json_out = sys.stdout
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else contextlib.nullcontext()
    try:
        with quiet_stdout:
            return COMMANDS[args.command](args)
    except HfCompressError as exc:
        kind = {2: "bad input", 3: "quality gate failed"}.get(exc.exit_code, "error")
        if getattr(args, "json", False):
            print(json.dumps({"error": kind, "message": str(exc), "exit_code": exc.exit_code}))
        print(f"hfcompress: {kind}: {exc}", file=sys.stderr)
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        elif exc.__cause__ is not None:  # a plugin's or library's exception, wrapped with its context
            print("hfcompress: run again with --verbose for the full traceback", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hfcompress: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
