"""Score XTREME-format prediction folders against label folders.

    python -m xstilts.evals.score --predictions DIR --labels DIR [--json] [--tasks xnli,panx]

Both folders hold ``<task>/test-<lang>.tsv|json`` (google-research/xtreme layout). Prints, per
task, every language's metrics and the averages, then the group scores, the XTREME score (when
all nine tasks are present) and the averages by CC-100 resource tier; ``--json`` prints the same
as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from xstilts.evals import xtreme_score


def format_report(report: dict) -> str:
    lines = []
    for task, summary in report["tasks"].items():
        averages = ", ".join(f"{k[4:]} {v:.2f}" for k, v in summary.items() if k.startswith("avg_"))
        lines.append(f"== {task}: score {summary['score']:.2f} ({averages})")
        metric_names = list(next(iter(summary["languages"].values())))
        lines.append("   lang  " + "  ".join(f"{m:>11s}" for m in metric_names) + "  tier")
        for lang, scores in summary["languages"].items():
            values = "  ".join(f"{scores[m]:11.2f}" for m in metric_names)
            lines.append(f"   {lang:5s} {values}  {xtreme_score.language(lang).tier}")
    if report["groups"]:
        lines.append("== groups: " + ", ".join(f"{g} {v:.2f}" for g, v in report["groups"].items()))
    if report["xtreme_score"] is not None:
        lines.append(f"== XTREME score (mean of the 9 task scores): {report['xtreme_score']:.2f}")
    for tier, info in report["tiers"].items():
        per_task = ", ".join(f"{t} {v:.2f}" for t, v in info["tasks"].items())
        lines.append(f"== tier {tier} ({len(info['languages'])} languages): mean {info['mean']:.2f}"
                     f" [{per_task}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xstilts.evals.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", required=True, help="folder of <task>/test-<lang> files")
    parser.add_argument("--labels", required=True, help="folder of <task>/test-<lang> labels")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of tasks")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",") if args.tasks else None
    try:
        report = xtreme_score.evaluate_folders(args.predictions, args.labels, tasks)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, ensure_ascii=False) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
