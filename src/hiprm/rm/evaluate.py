"""Evaluate reward models without a policy: PRM800K step classification and step selection,
and ProcessBench earliest-error identification.

Command: `hiprm rm eval configs/rm_eval.yaml models=[runs/rm/hrm/model] out=runs/rm_eval`
Output: `<out>/rm_eval.json` (every number with its 95% interval) and `<out>/rm_eval.md` (tables),
plus `<out>/rewards.jsonl`, a cache of step rewards keyed by model and input content, so an
interrupted run resumes where it stopped and a rerun with more data only scores what is new.

- Step classification (PRM800K phase 1 test): each rated completion at step i, conditioned on the
  chosen steps before it, labelled like training data (+1 -> 1, -1 -> 0, neutral per `neutral`).
  Accuracy and F1 at `classification_threshold`, AUROC; Wilson / bootstrap intervals.
- Step selection: at steps with >= 2 rated alternatives, is the RM's top-ranked alternative rated
  +1? Reported on the steps that also mix +1 and non-+1 ratings (where choosing matters) and on
  all of them, against picking at random (the mean fraction of +1 among alternatives).
- ProcessBench: predicted earliest wrong step = first step whose reward < threshold (-1 if none).
  The threshold maximizes F1 on `threshold_split` (as in the ProcessBench paper, on GSM8K) and is
  applied to every split. F1 = harmonic mean of accuracy on erroneous samples (exact index) and
  on correct samples (predicted -1).

The data come from `hiprm.rm.eval_data`, the markdown tables from `hiprm.rm.eval_report`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiprm.artifacts import (
    append_jsonl,
    locked,
    prepare_out_dir,
    read_appended,
    write_files,
    write_json,
    write_meta,
)
from hiprm.config import ConfigError, NonNegative, Positive, Probability, to_dict
from hiprm.data.labels import Neutral, step_label
from hiprm.data.prmbench import PRMBenchSample
from hiprm.records import StepVerdicts
from hiprm.rm.eval_data import StepGroup, data_path, load_prm800k_groups, load_prmbench, load_processbench
from hiprm.rm.eval_report import markdown_report, plots
from hiprm.rm.metrics import (
    PRMBENCH_GROUPS,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    first_error,
    prmbench_counts,
    prmbench_scores,
    processbench_scores,
    wilson_ci,
)
from hiprm.rm.scorer import ScoreInput, ScorerSettings

log = logging.getLogger(__name__)


# ---- pure parts: metrics ----------------------------------------------------------------------


def classification_rows(groups: Sequence[StepGroup], rewards: Sequence[Sequence[float]],
                        neutral: Neutral) -> tuple[list[float], list[float]]:
    """(labels, scores) of every rated completion, neutral ones labelled per `neutral`."""
    labels, scores = [], []
    for g, r in zip(groups, rewards, strict=True):
        for rating, s in zip(g.ratings, r, strict=True):
            y = step_label(rating, neutral)
            if y is not None:
                labels.append(y)
                scores.append(s)
    return labels, scores


def selection_stats(groups: Sequence[StepGroup], rewards: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Top-1 selection among rated alternatives vs random choice.

    A step counts when it has >= 2 rated alternatives; it is "mixed" when at least one is +1 and
    one is not. The RM picks the highest reward (the first one on ties); a hit is a +1 pick.
    Random = mean over steps of the fraction of +1 alternatives.

    >>> g = [StepGroup("q", [], ["a", "b"], [1, -1]), StepGroup("q", [], ["a", "b", "c"], [1, 1, 0]),
    ...      StepGroup("q", [], ["a", "b"], [1, 1])]
    >>> s = selection_stats(g, [[0.2, 0.8], [0.9, 0.1, 0.5], [0.3, 0.4]])
    >>> s["mixed"]["hits"], s["mixed"]["n"], round(s["mixed"]["random"], 4), s["all"]["hits"], s["all"]["n"]
    (1, 2, 0.5833, 2, 3)
    """
    out: dict[str, Any] = {}
    for name, keep in (("mixed", lambda rs: 1 in rs and any(x != 1 for x in rs)), ("all", lambda rs: True)):
        hits, fractions = [], []
        for g, r in zip(groups, rewards, strict=True):
            if len(g.ratings) < 2 or not keep(g.ratings):
                continue
            best = int(np.argmax(r))
            hits.append(int(g.ratings[best] == 1))
            fractions.append(sum(x == 1 for x in g.ratings) / len(g.ratings))
        out[name] = {
            "n": len(hits),
            "hits": int(sum(hits)),
            "top1_positive": float(np.mean(hits)) if hits else float("nan"),
            "random": float(np.mean(fractions)) if fractions else float("nan"),
            "_hits": hits,
            "_fractions": fractions,
        }
    return out


# ---- the runner -----------------------------------------------------------------------------------


@dataclass
class RMEvalConfig(ScorerSettings):
    """`hiprm rm eval [configs/rm_eval.yaml] models=[CKPT, ...] out=DIR`; paths relative to data_dir."""

    models: list[str] = field(default_factory=list)  # checkpoint folders, or vLLM /classify servers as http://HOST:PORT#CHECKPOINT
    out: str = "runs/rm_eval"
    data_dir: str = "../shared/data"
    prm800k: str = "prm800k/phase1_test.jsonl"  # empty = skip classification and selection
    prm800k_limit: int | None = None  # first N solutions
    # Same default as `hiprm data build`: solutions abandoned by the labeler are left out.
    skip_finish_reasons: list[str] = field(default_factory=lambda: ["give_up", "bad_problem", "unknown_not_solution"])
    neutral: Neutral = "negative"
    classification_threshold: Probability = 0.5
    processbench_dir: str = "processbench"
    processbench_splits: list[str] = field(default_factory=lambda: ["gsm8k", "math", "olympiadbench", "omnimath"])
    limit: Positive | None = None  # N ProcessBench entries per split, drawn at random with `seed` (CPU runs)
    threshold_split: str = "gsm8k"
    threshold: Probability | None = None  # fixed threshold: skip the search
    threshold_grid: Positive = 99  # search thresholds 1/(g+1) .. g/(g+1)
    prmbench_dir: str = "prmbench"  # empty = skip PRMBench
    prmbench_limit: Positive | None = None  # N samples per PRMBench category and source, drawn with `seed` (CPU runs)
    prmbench_threshold: Probability = 0.5  # a step is judged correct when its reward > this (the official rule)
    bootstrap: NonNegative = 1000
    seed: int = 0
    # `hiprm.rm.shared_trunk`: the same rewards; needs the memory of all the local models at once.
    share_trunk: bool = True  # load local models together, run their shared layers once (false: one by one)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:24]


def model_key(spec: str) -> str:
    """Identity of a scorer spec for the cache: its options, and for a checkpoint folder its
    config and weight files' sizes and mtimes (a server: its URL and options)."""
    from hiprm.rm.formats import split_spec

    location, fragment, options = split_spec(spec)
    if location.startswith(("http://", "https://")):
        return f"served-{_key(location, fragment, options)[:12]}"
    p = Path(location).resolve()
    stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in sorted(p.glob("*")) if f.is_file()]
    return f"{p.name}-{_key(str(p), stamp, *([options] if options else []))[:12]}"


class RewardCache:
    """`rewards.jsonl` in the out dir: one line per scored item, read back on restart."""

    def __init__(self, path: Path):
        self.path = path
        # read_appended drops a half-written last line (and ends a whole one with its newline),
        # so the next append starts a line of its own instead of gluing onto the torn one.
        self.data: dict[tuple[str, str], list[float]] = {
            (row["model"], row["key"]): row["rewards"] for row in read_appended(path)
        }

    def get(self, model: str, key: str) -> list[float] | None:
        return self.data.get((model, key))

    def put(self, model: str, key: str, task: str, rewards: list[float]) -> None:
        self.data[(model, key)] = rewards
        append_jsonl(self.path, {"model": model, "task": task, "key": key, "rewards": rewards})


def _value(v: float, ci: tuple[float, float]) -> dict[str, Any]:
    return {"value": v, "ci95": [ci[0], ci[1]]}


# Scores inputs for several models at once: one list of rewards per model (a `SharedTrunk`'s
# `score_inputs`, or one scorer's wrapped by `_alone`).
ScoreAll = Callable[[list[ScoreInput]], list[list[float]]]


class _Timed:
    """A scorer's (or a shared trunk's) scoring in this run: seconds, inputs, and the tokens its
    stats counted meanwhile, for the report's cost table (rewards read from the cache cost
    nothing)."""

    def __init__(self, inner: Any, stats: Sequence[Any] = ()):
        self.inner, self.seconds, self.inputs = inner, 0.0, 0
        self.stats = list(stats) or [s for s in [getattr(inner, "stats", None)] if s is not None]
        self.start = self._tokens()

    def _tokens(self) -> tuple[int, int, int]:
        inp = sum(s.input_tokens for s in self.stats)
        run = sum(s.trie_tokens for s in self.stats)
        return inp, run, getattr(self.inner, "prompt_tokens", 0) or 0

    def score_inputs(self, inputs: Sequence[ScoreInput]) -> Any:
        import time

        start = time.perf_counter()
        out = self.inner.score_inputs(inputs)
        self.seconds += time.perf_counter() - start
        self.inputs += len(inputs)
        return out

    def cost(self) -> dict[str, Any]:
        inp, run, served = (b - a for a, b in zip(self.start, self._tokens(), strict=True))
        return {"seconds": round(self.seconds, 3), "inputs": self.inputs, "input_tokens": inp or served,
                "model_tokens": run or inp or served}  # fmt: skip


def _alone(scorer: Any) -> ScoreAll:
    return lambda inputs: [scorer.score_inputs(inputs)]


def _prm800k_solutions(groups: list[StepGroup]) -> list[tuple[list[int], list[ScoreInput], str]]:
    """Per solution: the indices of its step groups, the inputs of all its rated completions (in
    group order) and their cache key."""
    by_solution: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_solution.setdefault(g.solution, []).append(i)
    out = []
    for members in by_solution.values():
        q = groups[members[0]].question
        pairs = [(groups[i].prefix, t) for i in members for t in groups[i].texts]
        out.append((members, [(q, list(prev), cur) for prev, cur in pairs], _key("prm800k", q, pairs)))
    return out


def score_prm800k(score: ScoreAll, mkeys: list[str], solutions: list[tuple[list[int], list[ScoreInput], str]],
                  cache: RewardCache) -> None:
    """Put the rewards of every rated completion into the cache for each model of `mkeys`: one
    `score` call per solution of `_prm800k_solutions` (the rated completions of all its steps),
    for the solutions some model lacks."""
    from tqdm import tqdm

    desc = "prm800k solutions" + (f" ({len(mkeys)} models)" if len(mkeys) > 1 else "")
    for _, inputs, key in tqdm(solutions, desc=desc, unit="sol"):
        if all(cache.get(m, key) is not None for m in mkeys):
            continue
        for m, flat in zip(mkeys, score(inputs), strict=True):
            if cache.get(m, key) is None:
                cache.put(m, key, "prm800k", [float(x) for x in flat])


def eval_prm800k(scorer: Any, mkey: str, groups: list[StepGroup], cache: RewardCache, cfg: RMEvalConfig) -> dict[str, Any]:
    solutions = _prm800k_solutions(groups)
    score_prm800k(_alone(scorer), [mkey], solutions, cache)
    rewards: list[list[float]] = [[] for _ in groups]
    for members, _, key in solutions:
        flat = cache.get(mkey, key)
        k = 0
        for i in members:
            rewards[i] = flat[k : k + len(groups[i].texts)]  # type: ignore[index]
            k += len(groups[i].texts)
    labels, scores = classification_rows(groups, rewards, cfg.neutral)
    t = cfg.classification_threshold
    m = binary_metrics(labels, scores, t)
    y, s = np.asarray(labels), np.asarray(scores)
    correct = int(((s >= t) == (y >= 0.5)).sum())
    cls = {
        "n": m["n"], "n_positive": m["n_pos"], "threshold": t, "neutral": cfg.neutral,
        "accuracy": _value(m["accuracy"], wilson_ci(correct, m["n"])),
        "f1": _value(m["f1"], bootstrap_ci(lambda a, b: binary_metrics(a, b, t)["f1"], y, s,
                                           n_boot=cfg.bootstrap, seed=cfg.seed)),
        "auroc": _value(m["auroc"], bootstrap_ci(lambda a, b: binary_metrics(a, b, t)["auroc"], y, s,
                                                 n_boot=cfg.bootstrap, seed=cfg.seed)),
    }
    sel = selection_stats(groups, rewards)
    selection: dict[str, Any] = {"n_steps_2plus": sel["all"]["n"], "n_steps_mixed": sel["mixed"]["n"]}
    for name, st in sel.items():
        fr = st.pop("_fractions")
        st.pop("_hits")
        selection[name] = {
            "n": st["n"], "hits": st["hits"],
            "top1_positive": _value(st["top1_positive"], wilson_ci(st["hits"], st["n"])),
            "random": _value(st["random"], bootstrap_ci(np.mean, fr, n_boot=cfg.bootstrap, seed=cfg.seed)),
        }
    return {"classification": cls, "selection": selection}


def score_processbench(score: ScoreAll, mkeys: list[str], splits: dict[str, Sequence[Any]], cache: RewardCache,
                       task: str = "processbench") -> None:
    """Put the step rewards of every entry (anything with `.question` and `.steps`: ProcessBench
    entries, PRMBench samples under `task="prmbench"`) into the cache for each model of `mkeys`."""
    from tqdm import tqdm

    from hiprm.rm.scorer import solution_inputs

    for name, entries in splits.items():
        keys = [_key(task, e.question, e.steps) for e in entries]
        todo = [i for i, k in enumerate(keys) if any(cache.get(m, k) is None for m in mkeys)]
        with tqdm(total=len(entries), initial=len(entries) - len(todo), desc=f"{task} {name}" if name != task else task,
                  unit="sol") as bar:
            # Batches of 8 entries counted from the first, not from the first missing one, and a
            # batch that is partly cached (a run killed while writing it) is scored whole again:
            # a reward's last float bits depend on its batch, and these are an uninterrupted run's.
            for start in range(0, len(entries), 8):
                chunk = list(range(start, min(start + 8, len(entries))))
                missing = [i for i in chunk if any(cache.get(m, keys[i]) is None for m in mkeys)]
                if not missing:
                    continue
                items = [(entries[i].question, entries[i].steps) for i in chunk]
                for m, flat in zip(mkeys, score(solution_inputs(items)), strict=True):
                    at = 0
                    for i in chunk:
                        r = [float(x) for x in flat[at : at + len(entries[i].steps)]]
                        at += len(entries[i].steps)
                        if cache.get(m, keys[i]) is None:
                            cache.put(m, keys[i], f"{task}/{name}", r)
                bar.update(len(missing))


def eval_processbench(scorer: Any, mkey: str, splits: dict[str, list[StepVerdicts]], cache: RewardCache,
                      cfg: RMEvalConfig) -> dict[str, Any]:
    score_processbench(_alone(scorer), [mkey], splits, cache)
    rewards: dict[str, list[list[float]]] = {
        name: [cache.get(mkey, _key("processbench", e.question, e.steps)) for e in entries]  # type: ignore[misc]
        for name, entries in splits.items()
    }
    labels = {name: [e.first_error for e in entries] for name, entries in splits.items()}
    if cfg.threshold is not None:
        threshold, tuned_f1 = cfg.threshold, None
    else:
        grid = [(i + 1) / (cfg.threshold_grid + 1) for i in range(cfg.threshold_grid)]
        threshold, tuned_f1 = choose_threshold(rewards[cfg.threshold_split], labels[cfg.threshold_split], grid)
    out: dict[str, Any] = {"threshold": threshold, "threshold_split": None if cfg.threshold is not None
                           else cfg.threshold_split, "threshold_split_f1": tuned_f1, "splits": {}}
    for name in splits:
        y = np.asarray(labels[name])
        p = np.asarray([first_error(r, threshold) for r in rewards[name]])
        sc = processbench_scores(y, p)
        err = y != -1
        hits_e = int((p[err] == y[err]).sum())
        hits_c = int((p[~err] == -1).sum())
        f1_ci = bootstrap_ci(lambda a, b: processbench_scores(a, b)["f1"], y, p, n_boot=cfg.bootstrap,
                             seed=cfg.seed, strata=err)
        out["splits"][name] = {
            "n": int(len(y)), "n_erroneous": sc["n_erroneous"], "n_correct": sc["n_correct"],
            "acc_erroneous": _value(sc["acc_erroneous"], wilson_ci(hits_e, sc["n_erroneous"])),
            "acc_correct": _value(sc["acc_correct"], wilson_ci(hits_c, sc["n_correct"])),
            "f1": _value(sc["f1"], f1_ci),
        }
    f1s = [s["f1"]["value"] for s in out["splits"].values()]
    out["average_f1"] = float(np.mean(f1s)) if f1s else float("nan")
    return out


def prmbench_subset(samples: Sequence[PRMBenchSample], counts: np.ndarray, cfg: RMEvalConfig) -> dict[str, Any]:
    """PRMBench's metrics on some samples (per-sample [TP, FP, TN, FN] rows in `counts`): each
    category's pooled scores, the groups' means of category PRMScores, and the overall scores,
    pooled over every sample but the all-correct ones (as `mr_eval` computes them); PRMScores
    with bootstrap intervals over samples."""
    def pooled(rows: np.ndarray, f1_only: bool = False) -> dict[str, Any]:
        sc = prmbench_scores(rows.sum(0), f1_only)
        ci = bootstrap_ci(lambda c: prmbench_scores(c.sum(0), f1_only)["prm_score"], rows,
                          n_boot=cfg.bootstrap, seed=cfg.seed)  # fmt: skip
        return {"n": int(len(rows)), "steps": int(rows.sum()), "f1": sc["f1"], "negative_f1": sc["negative_f1"],
                "correct_step_acc": sc["correct_step_acc"], "wrong_step_acc": sc["wrong_step_acc"],
                "prm_score": _value(sc["prm_score"], ci)}  # fmt: skip

    cats = {cat: pooled(counts[[i for i, s in enumerate(samples) if s.classification == cat]],
                        f1_only=cat == "multi_solutions")
            for cat in sorted({s.classification for s in samples})}  # fmt: skip
    overall = pooled(counts[[i for i, s in enumerate(samples) if s.classification != "correct"]])
    groups = {g: float(np.mean([cats[c]["prm_score"]["value"] for c in members if c in cats]))
              for g, members in PRMBENCH_GROUPS.items() if any(c in cats for c in members)}  # fmt: skip
    return {"overall": overall, "groups": groups, "categories": cats}


def eval_prmbench(scorer: Any, mkey: str, samples: list[PRMBenchSample], cache: RewardCache,
                  cfg: RMEvalConfig) -> dict[str, Any]:
    """PRMBench per source (`test`, `prm800k_train`: see `hiprm.data.prmbench`) and over all
    its files (`all`, the official benchmark's number), at `prmbench_threshold`."""
    score_processbench(_alone(scorer), [mkey], {"prmbench": samples}, cache, task="prmbench")
    t = cfg.prmbench_threshold
    counts = np.asarray([prmbench_counts(s.labels(), cache.get(mkey, _key("prmbench", s.question, s.steps)) or [], t)
                         for s in samples], dtype=np.int64).reshape(-1, 4)  # fmt: skip
    out: dict[str, Any] = {"threshold": t, "rule": "a step is judged correct when its reward > threshold",
                           "subsets": {}}  # fmt: skip
    sources = {s.source for s in samples}
    for name in ("test", "prm800k_train", "all"):
        idx = [i for i, s in enumerate(samples) if name in ("all", s.source)]
        if idx and (name != "all" or len(sources) > 1):
            out["subsets"][name] = prmbench_subset([samples[i] for i in idx], counts[idx], cfg)
    return out


def _no_nan(obj: Any) -> Any:
    """NaN (an undefined rate) -> None, so rm_eval.json is strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj


@locked(lambda cfg: cfg.out)
def run(cfg: RMEvalConfig) -> Path:
    from hiprm.rm.remote import load_scorer

    if not cfg.models:
        raise ConfigError("models: give at least one checkpoint (models=[PATH] or --models PATH)")
    if cfg.processbench_splits and cfg.threshold is None and cfg.threshold_split not in cfg.processbench_splits:
        raise ConfigError(f"threshold_split: {cfg.threshold_split!r} is not one of processbench_splits "
                          f"{cfg.processbench_splits}")
    out = prepare_out_dir(cfg.out)
    inputs: list[Path] = []
    groups: list[StepGroup] = []
    if cfg.prm800k:
        inputs.append(data_path(cfg.data_dir, cfg.prm800k))
        groups = load_prm800k_groups(inputs[-1], cfg.skip_finish_reasons, cfg.prm800k_limit)
    folder = data_path(cfg.data_dir, cfg.processbench_dir)
    splits = load_processbench(folder, cfg.processbench_splits, cfg.limit, cfg.seed)
    inputs += [folder / f"{name}.json" for name in cfg.processbench_splits]
    bench: list[PRMBenchSample] = []
    if cfg.prmbench_dir:
        bench_dir = data_path(cfg.data_dir, cfg.prmbench_dir)
        bench = load_prmbench(bench_dir, cfg.prmbench_limit, cfg.seed)
        inputs += sorted(bench_dir.glob("*.jsonl"))
    cache = RewardCache(out / "rewards.jsonl")
    loaded: dict[str, Any] = {}
    shared_cost: dict[str, Any] | None = None  # the shared-trunk pass, when one ran
    local = list(dict.fromkeys(p for p in cfg.models if not p.startswith(("http://", "https://"))))
    if cfg.share_trunk and len(local) > 1:
        from hiprm.rm.scorer import Scorer
        from hiprm.rm.shared_trunk import SharedTrunk

        loaded = {p: load_scorer(p, **cfg.scorer_kwargs()) for p in local}
        if all(isinstance(s, Scorer) and s.format.name == "seqcls" for s in loaded.values()):
            group = _Timed(SharedTrunk(list(loaded.values())), [s.stats for s in loaded.values()])
            log.info("%d models, %d bottom layers in common%s", len(local), group.inner.depth,
                     ": run once for all" if group.inner.depth else ": scored one by one")  # fmt: skip
            mkeys = [model_key(p) for p in local]
            if groups:
                score_prm800k(group.score_inputs, mkeys, _prm800k_solutions(groups), cache)
            if splits:
                score_processbench(group.score_inputs, mkeys, splits, cache)
            if bench:
                score_processbench(group.score_inputs, mkeys, {"prmbench": bench}, cache, task="prmbench")
            shared_cost = {"models": local, **group.cost()}
            del group
    results: dict[str, Any] = {}
    cost: dict[str, Any] = {}  # per model: what this run scored, apart from the results (a rerun costs nothing)
    for path in cfg.models:
        log.info("evaluating %s", path)
        # What the shared pass scored is in the cache now; a model it loaded is reused for anything left.
        scorer = _Timed(loaded.pop(path, None) or load_scorer(path, **cfg.scorer_kwargs()))
        mkey = model_key(path)
        res: dict[str, Any] = {"path": str(path), "cache_key": mkey,
                               "format": getattr(getattr(scorer.inner, "format", None), "label", "seqcls")}
        if groups:
            res["prm800k"] = eval_prm800k(scorer, mkey, groups, cache, cfg)
        if splits:
            res["processbench"] = eval_processbench(scorer, mkey, splits, cache, cfg)
        if bench:
            res["prmbench"] = eval_prmbench(scorer, mkey, bench, cache, cfg)
        cost[str(path)] = {"format": res["format"], **scorer.cost()}
        results[str(path)] = res
        del scorer
    if shared_cost is not None:
        cost["shared trunk"] = shared_cost
    report = {"config": to_dict(cfg), "models": results, "cost": cost,
              "data": {"prm800k_steps": len(groups), "processbench": {k: len(v) for k, v in splits.items()},
                       "prmbench": {src: sum(s.source == src for s in bench) for src in ("test", "prm800k_train")}}}
    report = _no_nan(report)
    write_json(out / "rm_eval.json", report)
    files = {out / "rm_eval.md": markdown_report(report).encode()}
    files.update({out / name: png for name, png in plots(report).items()})
    write_files(files)
    write_meta(out, to_dict(cfg), inputs=inputs)
    return out / "rm_eval.json"
