"""Read PRMBench (Song et al., 2025) into samples, as its official loader (`mr_eval`) builds them.

Input: a folder of PRMBench `*.jsonl` files (`../shared/data/prmbench/`, see SOURCES.md). One
record = one modified solution: `modified_question`, `modified_process` (steps), `error_steps`
(1-based indices of the erroneous steps), `classification` (the error category), `idx`.

Output: one `PRMBenchSample` per record, in sorted file order, a record whose (classification,
idx) was already seen left out (the official loader keeps the first; five `multi_solutions`
records repeat); plus, for every raw `idx` of a `redundency` record, one all-correct sample from
its `original_question` / `original_process` (classification `correct`, no error steps), as the
official loader derives them. Each sample names its `source`: `test` for the files built on
PRM800K test problems (and the multi-solution file), `prm800k_train` for the
`prm800k_train_p1_first400_*` files, whose problems are PRM800K phase-1 *train* problems (a
reward model trained on that split has seen their original solutions: report them apart).
A record with a wrong type or an error step below 1 is a DataError naming the file, line and
field; error steps past the end of the solution are kept and, as in the official evaluation,
never scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hiprm.artifacts import DataError, read_jsonl

TRAIN_PREFIX = "prm800k_train_"


@dataclass
class PRMBenchSample:
    id: str  # "<classification>_<idx>", the official sample id
    question: str
    steps: list[str]
    error_steps: list[int] = field(default_factory=list)  # 1-based, as in the files
    classification: str = ""
    source: str = "test"  # test | prm800k_train

    def labels(self) -> list[int]:
        """Gold label of each step: 0 for an error step, 1 otherwise.

        >>> PRMBenchSample("x", "q", ["a", "b", "c"], [2]).labels()
        [1, 0, 1]
        """
        bad = {i - 1 for i in self.error_steps}
        return [0 if i in bad else 1 for i in range(len(self.steps))]


def _record(obj: object, path: Path, line: int) -> dict:
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, got {type(obj).__name__}", line=line)
    for key, typ in (("modified_question", str), ("modified_process", list), ("error_steps", list),
                     ("classification", str), ("idx", str)):  # fmt: skip
        if not isinstance(obj.get(key), typ):
            raise DataError(path, f"expected {typ.__name__}, got {type(obj.get(key)).__name__}", line=line, field=key)
    for key in ("modified_process", "original_process"):
        for i, s in enumerate(obj.get(key) or []):
            if not isinstance(s, str):
                raise DataError(path, f"expected a string, got {type(s).__name__}", line=line, field=f"{key}[{i}]")
    for i, e in enumerate(obj["error_steps"]):
        if not isinstance(e, int) or isinstance(e, bool) or e < 1:
            raise DataError(path, f"expected a 1-based step index, got {e!r}", line=line, field=f"error_steps[{i}]")
    return obj


def read_prmbench(folder: str | Path) -> list[PRMBenchSample]:
    """Every sample of the PRMBench files in `folder` (see the module docstring)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(folder, "no PRMBench *.jsonl files here")
    samples: list[PRMBenchSample] = []
    seen: set[str] = set()
    correct: list[PRMBenchSample] = []
    correct_seen: set[str] = set()
    for path in files:
        source = "prm800k_train" if path.name.startswith(TRAIN_PREFIX) else "test"
        for line, obj in read_jsonl(path):
            r = _record(obj, path, line)
            sid = f"{r['classification']}_{r['idx']}"
            if sid not in seen:
                seen.add(sid)
                samples.append(PRMBenchSample(sid, r["modified_question"], list(r["modified_process"]),
                                              list(r["error_steps"]), r["classification"], source))  # fmt: skip
            if r["classification"] == "redundency" and r["idx"] not in correct_seen:
                for key, typ in (("original_question", str), ("original_process", list)):
                    if not isinstance(r.get(key), typ):
                        raise DataError(path, f"expected {typ.__name__}", line=line, field=key)
                correct_seen.add(r["idx"])
                correct.append(PRMBenchSample(f"correct_{r['idx']}", r["original_question"],
                                              list(r["original_process"]), [], "correct", source))  # fmt: skip
    return samples + correct
