"""Time building the HRM data from the whole shared PRM800K phase-1 train file.

    python benchmarks/bench_data_build.py [--input PATH] [--repeat 3]

Measures `hiprm data build --kind hrm` in-process (read 942 records -> 74k examples -> split ->
two JSONL files + meta.json), excluding interpreter start, against the issue's 5-second budget.
As a same-run baseline it also times the straightforward way to write the same examples
(stdlib `json.dumps` of `dataclasses.asdict`), which is what the builder did before it was
made fast, and prints the ratio. Output files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from hiprm.data.build import DEFAULT_INPUT, BuildConfig, make_examples, run

BUDGET_S = 5.0


def _best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(Path(__file__).resolve().parents[1] / DEFAULT_INPUT))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = BuildConfig(kind="hrm", input=args.input, out_dir=f"{tmp}/hrm", quiet=True)
        ours = _best_of(lambda: run(cfg), args.repeat)
        n = sum(1 for _ in open(f"{tmp}/hrm/train.jsonl")) + sum(1 for _ in open(f"{tmp}/hrm/val.jsonl"))

        def baseline() -> None:
            examples, _ = make_examples(cfg)
            with open(f"{tmp}/baseline.jsonl", "w", encoding="utf-8") as f:
                for e in examples:
                    f.write(json.dumps(dataclasses.asdict(e), ensure_ascii=False) + "\n")

        base = _best_of(baseline, max(1, args.repeat - 1))
    print(f"examples built: {n}")
    print(f"hiprm data build --kind hrm : {ours:6.2f} s  (budget {BUDGET_S:.0f} s: {'OK' if ours < BUDGET_S else 'OVER'})")
    print(f"baseline (json + asdict)    : {base:6.2f} s")
    print(f"speed-up vs baseline        : {base / ours:6.1f}x")
    return 0 if ours < BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
