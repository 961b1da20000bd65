"""``python -m deploygen``: write the generated dashboards and Kubernetes objects;
``--check``: write nothing, exit 1 and name the files that are out of date."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .outputs import generate, stale, write

ROOT = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploygen",
        description="Generate dashboards/*.json, deploy/kubernetes/prometheusrule.yaml and "
        "deploy/kubernetes/grafana-dashboards.yaml.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a committed file differs from the generated one",
    )
    args = parser.parse_args(argv)
    try:
        outputs = generate(ROOT)
    except (OSError, ValueError) as error:
        print(f"deploygen: {error}", file=sys.stderr)
        return 2
    if args.check:
        out_of_date = stale(ROOT, outputs)
        for path in out_of_date:
            print(f"deploygen: {path} is out of date; run `python -m deploygen`", file=sys.stderr)
        return 1 if out_of_date else 0
    write(ROOT, outputs)
    for output in outputs:
        print(f"wrote {output.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
