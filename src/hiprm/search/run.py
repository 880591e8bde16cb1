"""`hiprm eval`: a policy proposes, reward models select, the grader decides; accuracy vs N.

    hiprm eval configs/eval_gsm8k_cpu.yaml [key=value ...]

parse -> load problems (prm800k-test / math500 / gsm8k from `data_dir`, or any JSONL) -> build
the policy and the reward models -> for each problem: one pool of N_max whole solutions for the
best-of-N methods and one pool per prefix for step-level search (`hiprm.search.best_of_n`,
`hiprm.search.stepwise`) -> append the problem's record to `problems.jsonl` -> report.

Output folder (`out_dir`; `shard=i/n` runs write to `out_dir/shards/i-of-n/`):
- `problems.jsonl`: one line per finished problem, appended as it finishes. A rerun skips the
  problems already there, so an interrupted run resumes with no problem lost or counted twice;
- `samples.jsonl`: every candidate: whole solutions (steps, step rewards per reward model,
  extracted answer, correctness), step candidates (a tree per problem) and search paths;
- `metrics.json`: accuracy vs N per method with 95% CIs, and the cost summary;
- `table.md` (rows = methods, columns = N, like the paper's Tables 2-5), `report.md` (table and
  cost), `accuracy.png`;
- `meta.json` + `config.yaml`: the resolved config. Resuming with a different config (other
  than operational keys such as `limit` or batch sizes) is refused.
A run without `shard` (or `report_only=true`) also reads `out_dir/shards/*/problems.jsonl`, so
shards computed on several machines and copied into one folder are reported together.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hiprm.artifacts import (
    DataError,
    append_jsonl,
    locked,
    start_or_resume,
    weights_fingerprint,
)
from hiprm.config import (
    ConfigError,
    NonNegative,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Probability,
    to_dict,
)
from hiprm.data.problems import load_problem_set, order_problems
from hiprm.grading import is_equivalent
from hiprm.policy.build import (
    OPERATIONAL_POLICY_KEYS,
    PolicyConfig,
    PromptConfig,
    build_policy,
    check_policy_config,
)
from hiprm.policy.prompts import make_style
from hiprm.policy.protocol import SamplingParams
from hiprm.records import Problem
from hiprm.rm.scorer import ScorerSettings
from hiprm.search.best_of_n import (
    Candidate,
    Method,
    evaluate,
    parse_method,
    pool_cost,
    problem_seed,
    sample_pools,
    score_pools,
)
from hiprm.search.report import all_results, write_report
from hiprm.search.stepwise import step_search_many, to_records

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    out_dir: str = "runs/eval"
    dataset: str = "gsm8k"  # prm800k-test | math500 | gsm8k | path/to/problems.jsonl
    data_dir: str = "../shared/data"
    question_field: str = "question"  # for a JSONL path
    answer_field: str = "answer"
    limit: NonNegative = 0  # first `limit` problems (0 = all), after `order`
    order: Literal["file", "shortest_solution", "shortest_question"] = "file"  # shortest_solution: the easiest first
    shard: str = ""  # "i/n": every n-th problem starting at i (0-based)
    methods: list[str] = field(default_factory=list)  # empty = every method the given RMs allow
    n_values: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    subsamples: Positive = 4  # seeded subsets of the pool per N < N_max
    seed: int = 0
    orm: str = ""  # reward models (any subset): checkpoint folders, or a vLLM /classify server as http://HOST:PORT#CHECKPOINT
    prm: str = ""
    hrm: str = ""
    rm: ScorerSettings = field(default_factory=ScorerSettings)  # how orm/prm/hrm load: rm.device=cuda ...
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    temperature: NonNegativeFloat = 0.7
    top_p: Probability = 0.95
    max_solution_tokens: Positive = 512
    max_step_tokens: Positive = 128
    max_steps: Positive = 10
    progress: bool = True
    report_only: bool = False
    # Where problems are solved: local (one after another), threads (`workers` at once: for a
    # policy behind a server, keeps it busy; reward models take turns), ray (one Ray task per
    # problem on `ray_address`, or a local Ray of `workers` CPUs).
    executor: str = "local"
    workers: Positive = 4
    ray_address: str = ""
    # The local executor solves batch_problems problems together: one generate call per round
    # for all of them (whole-solution pools, step search, tree searches); records stay per problem.
    batch_problems: Positive = 8
    # An earlier eval run folder: rescore its whole-solution candidates with this run's reward
    # models and methods, generating nothing (a new reward model on the same candidates).
    pool: str = ""
    # Tree searches (beam, dvts, particles): M, lookahead and the resampling temperature as
    # search-and-learn and its_hub define them.
    beam_width: Positive = 4  # M: beam keeps N/M beams, each continued M times; DVTS: N/M subtrees of M
    lookahead: NonNegative = 0  # greedy steps after each candidate before it is scored (beam, dvts)
    filter_duplicates: bool = False  # beam: drop a beam whose text repeats an earlier one's
    particle_temperature: PositiveFloat = 1.0  # particles: weights softmax(logit(r) / temperature)


# Keys that may change between a run and its resumption without changing any result's meaning.
OPERATIONAL_KEYS = {
    "executor",
    "workers",
    "ray_address",
    "batch_problems",
    "limit",
    "progress",
    "report_only",
    "rm.batch_size",
    "rm.device",
    "rm.dtype",
    "rm.max_tokens_per_batch",
    *OPERATIONAL_POLICY_KEYS,
}


def resolve_methods(cfg: EvalConfig) -> list[Method]:
    given = {rm: getattr(cfg, rm) for rm in ("orm", "prm", "hrm") if getattr(cfg, rm)}
    names = list(cfg.methods)
    if not names:
        names = ["majority", "pass"] + (["orm"] if "orm" in given else [])
        for rm in ("prm", "hrm"):
            if rm in given:
                names += [f"{rm}-step", f"{rm}-min", f"{rm}-last"]
    try:
        methods = [parse_method(n) for n in names]
    except ValueError as e:
        raise ConfigError(f"methods: {e}") from None
    missing = sorted({m.rm for m in methods if m.rm and m.rm not in given})
    if missing:
        raise ConfigError(
            f"methods need reward model(s) {missing}; set {', '.join(f'{r}=PATH' for r in missing)}"
        )
    if len({m.name for m in methods}) != len(methods):
        raise ConfigError(f"methods: listed twice in {names}")
    return methods


class _CountingScorer:
    """Counts reward-model calls, inputs and seconds around a scorer."""

    def __init__(self, inner: Any):
        self.inner, self.calls, self.inputs, self.seconds = inner, 0, 0, 0.0

    def _timed(self, fn: Any, n_inputs: int, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1
            self.inputs += n_inputs

    def score_inputs(self, inputs: Any) -> list[float]:
        return self._timed(self.inner.score_inputs, len(inputs), inputs)


class _CountingPolicy:
    """Counts generate calls and seconds around a policy."""

    def __init__(self, inner: Any):
        self.inner, self.calls, self.seconds = inner, 0, 0.0
        self.render_chat, self.count_tokens = inner.render_chat, inner.count_tokens
        self.concurrent, self.close = inner.concurrent, inner.close

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        t = time.perf_counter()
        try:
            return self.inner.generate(prompts, params)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


TREE_KINDS = ("beam", "dvts", "particles", "hier")


def make_search(m: Method, n: int, cfg: EvalConfig, seed: list[int]) -> Any:
    from hiprm.search.beam import BeamSearch
    from hiprm.search.dvts import DVTS
    from hiprm.search.hier import hier_search
    from hiprm.search.particles import ParticleFilter

    if m.kind == "beam":
        return BeamSearch(n, cfg.beam_width, m.how or "last", cfg.max_steps, cfg.filter_duplicates)
    if m.kind == "dvts":
        return DVTS(n, cfg.beam_width, m.how or "last", cfg.max_steps)
    if m.kind == "particles":
        return ParticleFilter(n, m.how or "last", cfg.max_steps, cfg.particle_temperature, [*seed, n])
    return hier_search(n, cfg.max_steps)


def solve_trees(problems: list[Problem], cfg: EvalConfig, methods: list[Method], policy: Any,
                scorers: dict[str, Any]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The tree searches of `problems`, all in lockstep (`hiprm.search.rounds.run_rounds`): per
    problem its results, one row per search (method, N) and its cost."""
    from hiprm.policy.steps import final_answer
    from hiprm.search.rounds import Job, run_rounds

    tree = [m for m in methods if m.kind in TREE_KINDS]
    if not tree:
        return {}
    style = make_style(cfg.prompt.style, cfg.prompt.template, cfg.prompt.step_stops, cfg.prompt.end_stop)
    jobs = [
        Job(p.question, m.rm, make_search(m, n, cfg, problem_seed(cfg.seed, p.problem_id)),
            view="hier" if m.kind == "hier" else "step", lookahead=cfg.lookahead if m.kind in ("beam", "dvts") else 0,
            key=(p.problem_id, m.name, n))
        for p in problems for m in tree for n in sorted(set(cfg.n_values))
    ]  # fmt: skip
    t0 = time.perf_counter()
    stats = run_rounds(jobs, policy, style, scorers, temperature=cfg.temperature, top_p=cfg.top_p,
                       max_tokens=cfg.max_step_tokens, seed=[cfg.seed])  # fmt: skip
    seconds = time.perf_counter() - t0
    ref = {p.problem_id: p.answer for p in problems}
    out: dict[str, dict[str, Any]] = {
        p.problem_id: {"results": {}, "searches": [], "cost": {
            "tree_tokens": 0, "tree_rm_inputs": 0, "tree_batch_problems": len(problems),
            "tree_batch_rounds": stats.rounds, "tree_batch_generate_calls": stats.generate_calls,
            "tree_batch_rm_calls": stats.rm_calls, "tree_batch_seconds": round(seconds, 3)}}
        for p in problems
    }  # fmt: skip
    for j in jobs:
        pid, name, n = j.key
        path, score = j.search.outcome()
        text = "".join(path)
        answer = final_answer(text, style)
        correct = answer is not None and is_equivalent(answer, ref[pid])
        rec = out[pid]
        slot = rec["results"].setdefault(name, {}).setdefault(str(n), {"correct": [], "chosen": [], "tokens": []})
        slot["correct"].append(int(correct))
        slot["chosen"].append(None)
        slot["tokens"].append(j.search.tokens)
        rec["searches"].append({"method": name, "n": n, "answer": answer, "correct": correct, "score": score,
                                "tokens": j.search.tokens, "rm_inputs": j.search.rm_inputs,
                                "rounds": len(j.search.rounds), "kept": j.search.kept, "steps": len(path),
                                "text": text})  # fmt: skip
        rec["cost"]["tree_tokens"] += j.search.tokens
        rec["cost"]["tree_rm_inputs"] += j.search.rm_inputs
    return out


def solve_problem(
    problem: Problem, cfg: EvalConfig, methods: list[Method], policy: Any, scorers: dict[str, Any]
) -> dict[str, Any]:
    """Every method at every N for one problem -> its record for `problems.jsonl`."""
    return solve_batch([problem], cfg, methods, policy, scorers)[0]


def solve_batch(
    problems: list[Problem], cfg: EvalConfig, methods: list[Method], policy: Any, scorers: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every method at every N for several problems at once -> their records, in order.

    Each method family runs all the problems together: one `generate` call for every problem's
    pool of whole solutions, step-level search and the tree searches in lockstep (one call per
    round), one scoring call per reward model for all. Every request carries a seed from its
    problem, so a problem's record does not depend on the batch it ran in (`batch_problems`).
    The batch's counters (calls, seconds) are shared out equally among its problems."""
    t0 = time.perf_counter()
    style = make_style(cfg.prompt.style, cfg.prompt.template, cfg.prompt.step_stops, cfg.prompt.end_stop)
    pol = _CountingPolicy(policy)
    rms = {name: _CountingScorer(s) for name, s in scorers.items()}
    n_values = sorted(set(cfg.n_values))
    n_max = n_values[-1]
    seeds = [problem_seed(cfg.seed, p.problem_id) for p in problems]
    recs: list[dict[str, Any]] = [
        {"problem_id": p.problem_id, "question": p.question, "reference": p.answer, "source": p.source, "results": {}}
        for p in problems
    ]  # fmt: skip
    costs: list[dict[str, Any]] = [{} for _ in problems]
    if any(m.kind in TREE_KINDS for m in methods):
        trees = solve_trees(problems, cfg, methods, pol, rms)
        for p, rec, cost in zip(problems, recs, costs, strict=True):
            rec["results"].update(trees[p.problem_id]["results"])
            rec["searches"] = trees[p.problem_id]["searches"]
            cost.update(trees[p.problem_id]["cost"])
    whole = [m for m in methods if m.kind not in ("step", *TREE_KINDS)]
    if whole:
        params = SamplingParams(
            n=n_max,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_solution_tokens,
            stop=[style.end_stop],
            seed=seeds[0][1] ^ cfg.seed,
            seeds=[seed[1] ^ cfg.seed for seed in seeds],
            include_stop=True,
        )
        pools = sample_pools(pol, style, [(p.question, p.answer) for p in problems], n_max, params)
        score_pools([(p.question, cands) for p, cands in zip(problems, pools, strict=True)],
                    {m.rm: rms[m.rm] for m in whole if m.rm})  # fmt: skip
        for rec, cost, cands, seed in zip(recs, costs, pools, seeds, strict=True):
            rec["results"].update(evaluate(whole, cands, n_values, cfg.subsamples, seed))
            rec["candidates"] = [c.to_dict() for c in cands]
            pc = pool_cost(cands, n_values, cfg.subsamples, seed)
            cost.update(solution_pool_tokens=pc["pool_tokens"],
                        solution_one_run_per_n_tokens=pc["one_run_per_n_tokens"])  # fmt: skip
    stepwise = [m for m in methods if m.kind == "step"]
    if stepwise:
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_step_tokens)
        results = step_search_many(pol, style, [(p.question, p.answer, seed) for p, seed in zip(problems, seeds, strict=True)],
                                   {m.rm: rms[m.rm] for m in stepwise}, n_values, cfg.subsamples, params,
                                   cfg.max_steps)  # fmt: skip
        for rec, cost, sr in zip(recs, costs, results, strict=True):
            for (rm, n, _s), (_answer, ok) in sorted(sr.answers.items()):
                slot = rec["results"].setdefault(f"{rm}-step", {}).setdefault(
                    str(n), {"correct": [], "chosen": [], "tokens": []})  # fmt: skip
                slot["correct"].append(int(ok))
            rec["step_candidates"], rec["paths"] = to_records(sr)
            for path in rec["paths"]:
                slot = rec["results"][path["method"]][str(path["n"])]
                slot["chosen"].append(path["choices"])
                slot["tokens"].append(path["tokens"])
            cost.update(
                step_pool_tokens=sr.cost["pool_tokens"],
                step_one_run_per_n_tokens=sr.cost["one_run_per_n_tokens"],
                step_independent_runs_tokens=sr.cost["independent_runs_tokens"],
                step_prefixes=sr.cost["prefixes"],
            )
    k = len(problems)
    for rec, cost in zip(recs, costs, strict=True):
        cost.update(
            batch_problems=k,
            rm_calls=sum(s.calls for s in rms.values()) / k,
            rm_inputs=sum(s.inputs for s in rms.values()) / k,
            rm_seconds=round(sum(s.seconds for s in rms.values()) / k, 3),
            generate_calls=pol.calls / k,
            policy_seconds=round(pol.seconds / k, 3),
            seconds=round((time.perf_counter() - t0) / k, 3),
        )
        rec["cost"] = cost
    return recs


def _build_scorers(cfg: EvalConfig, methods: list[Method]) -> dict[str, Any]:
    from hiprm.rm.remote import load_scorer

    names = sorted({m.rm for m in methods if m.rm})
    return {rm: load_scorer(getattr(cfg, rm), **cfg.rm.scorer_kwargs()) for rm in names}


def parse_shard(shard: str) -> tuple[int, int] | None:
    """ "2/4" -> (2, 4); "" -> None."""
    if not shard:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ConfigError(f"shard: expected 'i/n' (e.g. 0/4), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard: need 0 <= i < n, got {shard!r}")
    return i, n


def load_problems(cfg: EvalConfig) -> tuple[list[Problem], Path]:
    """The problems this run solves: `dataset` (`hiprm.data.problems`, the one registry), cut to
    the first `limit` and then to `shard=i/n` (every n-th problem from i), and the path read."""
    problems, path = load_problem_set(cfg.dataset, cfg.data_dir, cfg.question_field, cfg.answer_field)
    problems = order_problems(problems, cfg.order)
    if cfg.limit > 0:
        problems = problems[: cfg.limit]
    shard = parse_shard(cfg.shard)
    if shard:
        problems = problems[shard[0] :: shard[1]]
    if not problems:  # an empty report would read as a finished evaluation
        raise DataError(path, f"no problems to evaluate (limit={cfg.limit}, shard={cfg.shard!r})")
    return problems, path


def eval_run_dir(cfg: EvalConfig) -> Path:
    """Where this run writes: `out_dir`, or its shard's folder (shards run side by side)."""
    shard = parse_shard(cfg.shard)
    return Path(cfg.out_dir) / "shards" / f"{shard[0]}-of-{shard[1]}" if shard else Path(cfg.out_dir)


@locked(eval_run_dir)
def run(cfg: EvalConfig, *, policy: Any = None, scorers: dict[str, Any] | None = None) -> Path:
    """Evaluate; returns the run folder. `policy` / `scorers` override the configured ones (tests)."""
    methods = resolve_methods(cfg)
    if not cfg.n_values or min(cfg.n_values) < 1:
        raise ConfigError(f"n_values: need positive integers, got {cfg.n_values}")
    check_policy_config(cfg.policy)
    if cfg.executor not in ("local", "threads", "ray"):
        raise ConfigError(f"executor: {cfg.executor!r} is not one of ['local', 'threads', 'ray']")
    if cfg.executor == "threads" and cfg.policy.backend == "hf":
        raise ConfigError("executor=threads needs a policy behind a server (policy.backend=openai): "
                          "the hf backend samples from one generator per process; use executor=ray for hf")  # fmt: skip
    if cfg.workers < 1:
        raise ConfigError("workers: must be >= 1")
    try:
        make_style(cfg.prompt.style, cfg.prompt.template, cfg.prompt.step_stops, cfg.prompt.end_stop)
    except ValueError as e:
        raise ConfigError(f"prompt: {e}") from None
    shard = parse_shard(cfg.shard)
    out_dir = Path(cfg.out_dir)
    run_dir = eval_run_dir(cfg)
    pooled: dict[str, list[Candidate]] = {}
    if cfg.pool:
        problems, data_path, pooled = load_pool(cfg, methods)
    else:
        problems, data_path = load_problems(cfg)
    # A reward model or policy retrained at the same path is another run: their weights are
    # part of the identity, like the dataset's contents (`inputs`).
    config = {**to_dict(cfg), "weights": {k: weights_fingerprint(getattr(cfg, k)) for k in ("orm", "prm", "hrm")
                                          if getattr(cfg, k)} | {"policy": weights_fingerprint(cfg.policy.model)}}
    results_path = run_dir / "problems.jsonl"
    if not cfg.report_only:
        done = start_or_resume(run_dir, "problems.jsonl", config, [p.problem_id for p in problems],
                               operational=OPERATIONAL_KEYS, inputs=[data_path], dataset_path=str(data_path),
                               problems=len(problems))  # fmt: skip
        todo = [p for p in problems if p.problem_id not in done]
        if todo and cfg.pool:
            _rescore_all(cfg, methods, todo, pooled, len(problems), results_path, scorers)
        elif todo:
            _solve_all(cfg, methods, todo, len(problems), results_path, policy, scorers)
    write_report(cfg.dataset, cfg.policy.model, cfg.n_values, cfg.subsamples, methods, problems, run_dir,
                 [results_path] if shard else all_results(out_dir))
    return run_dir


_WORKER_STATE: dict[str, tuple[Any, dict[str, Any]]] = {}  # Ray worker: policy and scorers per config


def eval_problem(job: dict[str, Any]) -> dict[str, Any]:
    """One Ray task: one problem -> its record (module level, so Ray can ship it). The policy and
    reward models are built once per worker process and config."""
    from hiprm.config import from_dict

    cfg = from_dict(EvalConfig, job["config"])
    methods = resolve_methods(cfg)
    key = json.dumps(job["config"], sort_keys=True, default=str)
    if key not in _WORKER_STATE:
        _WORKER_STATE[key] = (build_policy(cfg.policy), _build_scorers(cfg, methods))
    policy, scorers = _WORKER_STATE[key]
    return solve_problem(Problem(**job["problem"]), cfg, methods, policy, scorers)


class _LockedScorer:
    """Reward models are one torch model each: problems solved in threads take turns on them."""

    def __init__(self, inner: Any, lock: Any):
        self.inner, self.lock = inner, lock

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                return fn(*args, **kwargs)

        return locked


def _records(
    cfg: EvalConfig, methods: list[Method], todo: list[Problem], policy: Any, scorers: dict[str, Any]
):
    from dataclasses import asdict

    from hiprm.executors import map_unordered

    if cfg.executor == "ray":
        config = to_dict(cfg)
        jobs = [{"config": config, "problem": asdict(p)} for p in todo]
        yield from map_unordered(
            eval_problem, jobs, executor="ray", ray_address=cfg.ray_address, workers=cfg.workers
        )
        return
    if cfg.executor == "local":
        # `batch_problems` problems at a time, each method family in one call per round for all
        # of them; each problem's record is still written whole, once its batch is done.
        for i in range(0, len(todo), cfg.batch_problems):
            yield from solve_batch(todo[i : i + cfg.batch_problems], cfg, methods, policy, scorers)
        return
    if cfg.executor == "threads":
        import threading

        lock = threading.Lock()
        scorers = {k: _LockedScorer(v, lock) for k, v in scorers.items()}
    yield from map_unordered(
        lambda p: solve_problem(p, cfg, methods, policy, scorers),
        todo,
        executor=cfg.executor,
        workers=cfg.workers,
    )


def load_pool(cfg: EvalConfig, methods: list[Method]) -> tuple[list[Problem], Path, dict[str, list[Candidate]]]:
    """The problems and whole-solution candidates of the earlier run `cfg.pool`, checked: only
    methods that choose among whole solutions, N no larger than the pool."""
    from hiprm.search.report import read_done

    src = Path(cfg.pool) / "problems.jsonl"
    if not src.is_file():
        raise ConfigError(f"pool: {src} not found (give the folder of an earlier `hiprm eval` run)")
    bad = [m.name for m in methods if m.kind in ("step", *TREE_KINDS)]
    if bad:
        raise ConfigError(f"pool: {bad} generate as they search; a pool rescoring takes best-of-N, votes, "
                          "majority and pass only")  # fmt: skip
    problems, pools = [], {}
    for rec in read_done(src):
        cands = rec.get("candidates")
        if not cands:
            raise DataError(src, f"problem {rec['problem_id']} has no whole-solution candidates (its run had no "
                                 "best-of-N method)", field="candidates")  # fmt: skip
        problems.append(Problem(rec["problem_id"], rec["question"], rec["reference"], rec.get("source", "")))
        pools[rec["problem_id"]] = [
            Candidate(c["index"], c["text"], c["steps"], c["answer"], c["correct"], c["tokens"]) for c in cands
        ]
    if not problems:
        raise DataError(src, "no finished problems to rescore")
    smallest = min(len(c) for c in pools.values())
    if max(cfg.n_values) > smallest:
        raise ConfigError(f"n_values: {max(cfg.n_values)} is more than the {smallest} candidates per problem in {src}")
    if cfg.limit > 0:
        problems = problems[: cfg.limit]
    return problems, src, pools


def _rescore_all(cfg, methods, todo, pooled, total, results_path, scorers) -> None:
    """`pool=`: score the earlier run's candidates with this run's reward models, `batch_problems`
    problems per scoring call, and evaluate every method on them."""
    from tqdm import tqdm

    scorers = scorers if scorers is not None else _build_scorers(cfg, methods)
    n_values = sorted(set(cfg.n_values))
    with tqdm(total=total, initial=total - len(todo), desc="rescore", unit="problem",
              disable=not cfg.progress) as bar:  # fmt: skip
        for i in range(0, len(todo), cfg.batch_problems):
            batch = todo[i : i + cfg.batch_problems]
            t0 = time.perf_counter()
            rms = {name: _CountingScorer(s) for name, s in scorers.items()}
            score_pools([(p.question, pooled[p.problem_id]) for p in batch], {m.rm: rms[m.rm] for m in methods if m.rm})
            for p in batch:
                seed = problem_seed(cfg.seed, p.problem_id)
                cands = pooled[p.problem_id]
                rec = {"problem_id": p.problem_id, "question": p.question, "reference": p.answer, "source": p.source,
                       "results": evaluate(methods, cands, n_values, cfg.subsamples, seed),
                       "candidates": [c.to_dict() for c in cands], "pool": cfg.pool}  # fmt: skip
                rec["cost"] = {"batch_problems": len(batch), "rm_calls": sum(s.calls for s in rms.values()) / len(batch),
                               "rm_inputs": sum(s.inputs for s in rms.values()) / len(batch),
                               "rm_seconds": round(sum(s.seconds for s in rms.values()) / len(batch), 3),
                               "seconds": round((time.perf_counter() - t0) / len(batch), 3)}  # fmt: skip
                append_jsonl(results_path, rec)
                bar.update(1)


def _solve_all(cfg, methods, todo, total, results_path, policy, scorers) -> None:
    from tqdm import tqdm

    remote = cfg.executor == "ray"
    own_policy = policy is None and not remote
    if not remote:
        policy = policy if policy is not None else build_policy(cfg.policy)
        scorers = scorers if scorers is not None else _build_scorers(cfg, methods)
    try:
        with tqdm(
            total=total, initial=total - len(todo), desc="eval", unit="problem", disable=not cfg.progress
        ) as bar:
            for rec in _records(cfg, methods, todo, policy, scorers):
                append_jsonl(results_path, rec)
                bar.update(1)
    finally:
        if own_policy:
            policy.close()
