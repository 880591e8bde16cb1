"""`hiprm rm score`: solutions JSONL -> the same records with `step_rewards`, one reward per step.

Command (the runner below): `hiprm rm score model=PATH input=solutions.jsonl output=scored.jsonl`
reads `{question, steps: [...], ...}` lines and writes the same records with `step_rewards`.
`model` is whatever `hiprm.rm.remote.load_scorer` takes: a checkpoint folder, or a served model
(`http://host:8000#CHECKPOINT`); the rewards come from `score_solutions`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.artifacts import (
    DataError,
    check_input_file,
    identity_diff,
    locked,
    prepare_out_dir,
    read_appended,
    read_json,
    read_jsonl,
    sha256_file,
    weights_fingerprint,
    write_json,
)
from hiprm.config import ConfigError, Positive, to_dict
from hiprm.rm.remote import check_scorer_spec, load_scorer
from hiprm.rm.scorer import ScorerSettings, score_solutions

log = logging.getLogger(__name__)


@dataclass
class ScoreConfig(ScorerSettings):
    """`hiprm rm score model=CKPT input=IN.jsonl output=OUT.jsonl` (each line {question, steps})."""

    model: str = ""
    input: str = ""
    output: str = ""
    chunk_size: Positive = 64  # solutions scored and appended per write (the resume granularity)
    overwrite: bool = False  # start over when the output was made by another model or config


# Change speed, not rewards: a resumed run may change them.
OPERATIONAL_KEYS = ("device", "dtype", "batch_size", "max_tokens_per_batch", "chunk_size", "overwrite")


def _check_record(obj: Any, path: Path, line: int) -> tuple[str, list[str]]:
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, got {type(obj).__name__}", line)
    q = obj.get("question")
    if not isinstance(q, str):
        raise DataError(path, f"expected a string, got {type(q).__name__}", line, "question")
    steps = obj.get("steps")
    if not isinstance(steps, list):
        raise DataError(path, f"expected a list of strings, got {type(steps).__name__}", line, "steps")
    for i, s in enumerate(steps):
        if not isinstance(s, str):
            raise DataError(path, f"expected a string, got {type(s).__name__}", line, f"steps[{i}]")
    return q, steps


def check_score_config(cfg: ScoreConfig) -> tuple[Path, Path]:
    """Errors caught before any model is loaded; returns (input, output)."""
    for key in ("model", "input", "output"):
        if not getattr(cfg, key):
            raise ConfigError(f"{key}: required (hiprm rm score model=CKPT input=IN.jsonl output=OUT.jsonl)")
    for key in ("batch_size", "max_tokens_per_batch", "chunk_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    src, out = check_input_file(cfg.input), Path(cfg.output)
    if src.resolve() == out.resolve():
        raise ConfigError("output: must differ from input")
    if out.is_dir():
        raise ConfigError(f"output: {out} is a folder; give a file path")
    check_scorer_spec(cfg.model)
    prepare_out_dir(out.parent)
    return src, out


def score_meta_path(out: Path) -> Path:
    """Provenance of one output file, beside it: never the folder's meta.json, which belongs to
    the run that made the folder (a data build, a training run)."""
    return out.with_name(out.name + ".meta.json")


@locked(lambda cfg: cfg.output)
def run(cfg: ScoreConfig) -> Path:
    """Score every solution of `input` into `output`, resumable after a kill: records are appended
    to `output.partial` a chunk at a time and renamed when all are done. The run identity (config
    less OPERATIONAL_KEYS, and the model's weights fingerprint) is kept in `output.meta.json`; a
    rerun with another identity is refused, naming the field, unless `overwrite=true` starts over.
    The input may grow between runs: the records already scored must match it one for one."""
    from tqdm import tqdm

    src, out = check_score_config(cfg)
    rows = [(line, obj, *_check_record(obj, src, line)) for line, obj in read_jsonl(src)]
    partial = out.with_name(out.name + ".partial")
    meta_path = score_meta_path(out)
    identity = {**to_dict(cfg), "weights": weights_fingerprint(cfg.model)}
    if (partial.exists() or out.exists()) and not cfg.overwrite:
        old = read_json(meta_path).get("config") if meta_path.is_file() else None
        if old is None:
            raise ConfigError(f"output: {out} exists without {meta_path.name} (not made by this command?); "
                              "set overwrite=true to replace it")  # fmt: skip
        diff = identity_diff(old, identity, OPERATIONAL_KEYS)
        if diff:
            raise ConfigError(f"output: {out} was made by another run ({'; '.join(diff)}); "
                              "set overwrite=true to start over, or use another output")  # fmt: skip
    if cfg.overwrite:
        partial.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    if not partial.exists() and out.is_file():
        partial.write_bytes(out.read_bytes())  # rerun on a grown input: continue from the output
    done = read_appended(partial)
    for (line, _, q, steps), rec in zip(rows, done, strict=False):
        if not isinstance(rec, dict) or rec.get("question") != q or rec.get("steps") != steps:
            raise DataError(partial, f"holds a different record than {src}:{line}; set overwrite=true to start over",
                            len(done))  # fmt: skip
    if len(done) > len(rows):
        raise DataError(partial, f"has {len(done)} records but {src} only {len(rows)}; set overwrite=true to start over")
    whole = len(done) - len(done) % cfg.chunk_size
    if whole < len(done) < len(rows):
        # A chunk cut short (the kill came while its lines were being written) is scored again
        # whole: a reward's last float bits depend on the batch it is computed in, so only the
        # chunks of an uninterrupted run give its exact records.
        data = partial.read_bytes()
        cut = 0
        for _ in range(whole):
            cut = data.index(b"\n", cut) + 1
        os.truncate(partial, cut)
        done = done[:whole]
    if done:
        log.info("resuming: %d of %d solutions already scored in %s", len(done), len(rows), partial)
    write_json(meta_path, {"config": identity, "status": "running", "inputs": {str(src): sha256_file(src)}})
    todo = rows[len(done) :]
    scorer = load_scorer(cfg.model, **cfg.scorer_kwargs()) if todo else None
    with tqdm(total=len(rows), initial=len(done), desc="scoring", unit="sol") as bar, \
            partial.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), cfg.chunk_size):
            chunk = todo[start : start + cfg.chunk_size]
            rewards = score_solutions(scorer, [(q, steps) for _, _, q, steps in chunk])
            for (_, obj, _, _), r in zip(chunk, rewards, strict=True):
                f.write(json.dumps({**obj, "step_rewards": r}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(chunk))
    os.replace(partial, out)
    write_json(meta_path, {"config": identity, "status": "done", "inputs": {str(src): sha256_file(src)},
                           "n_solutions": len(rows), "n_steps": sum(len(r[3]) for r in rows)})  # fmt: skip
    return out
