"""`hiprm eval` end to end with the scripted policy and fake reward models: outputs, resume after
an interruption, shards, config checks, datasets; one slow run with the tiny hf policy and a real
`Scorer` on a tiny reward model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiprm.cli import main as cli_main
from hiprm.config import ConfigError, load_config
from hiprm.policy.scripted import ScriptedPolicy
from hiprm.search.report import read_done
from hiprm.search.run import EvalConfig, load_problems, run

PROBLEMS = [(f"What is {a}+{b}?", str(a + b)) for a, b in [(2, 3), (4, 4), (1, 6), (5, 5), (7, 2)]]


def _texts(a_plus_b: str, right: str) -> list[str]:
    wrong = str(int(right) + 1)
    return [
        f"# Step 1\ngood {a_plus_b}={right}\n\n# Step 2\ngood so {right}\n\n# Answer\n\n{right}\n# END!",
        f"# Step 1\ngood {a_plus_b}={right}\n\n# Step 2\nbad so {wrong}\n\n# Answer\n\n{wrong}\n# END!",
        f"# Step 1\nbad {a_plus_b}={wrong}\n\n# Answer\n\n{wrong}\n# END!",
    ]


RULES = {q: _texts(q[8:-1], ans) for q, ans in PROBLEMS}


class FakeRM:
    def __init__(self, word="good"):
        self.word = word

    def _r(self, s):
        return 0.9 if self.word in s else 0.2

    def score_inputs(self, inputs):
        return [self._r(cur) for _, _, cur in inputs]


SCORERS = {"orm": FakeRM(), "prm": FakeRM(), "hrm": FakeRM("bad")}
METHODS = "[majority,pass,orm,prm-step,hrm-step,prm-min,hrm-last,prm-vote-prod]"


class InterruptingPolicy:
    """Behaves like the scripted policy until it meets the k-th distinct question."""

    def __init__(self, k: int):
        self.inner, self.k, self.seen = ScriptedPolicy(RULES), k, []
        self.render_chat, self.count_tokens = self.inner.render_chat, self.inner.count_tokens
        self.concurrent, self.close = False, self.inner.close

    def generate(self, prompts, params):
        for p in prompts:
            q = next(q for q, _ in PROBLEMS if q in p)
            if q not in self.seen:
                self.seen.append(q)
            if len(self.seen) >= self.k:
                raise KeyboardInterrupt
        return self.inner.generate(prompts, params)


@pytest.fixture
def data(tmp_path) -> Path:
    p = tmp_path / "problems.jsonl"
    p.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in PROBLEMS))
    return p


def _cfg(data: Path, out: Path, *extra: str) -> EvalConfig:
    return load_config(EvalConfig, None, [
        f"dataset={data}", "question_field=q", "answer_field=a", f"out_dir={out}", f"methods={METHODS}",
        "n_values=[1,2,4]", "subsamples=3", "orm=fake", "prm=fake", "hrm=fake", "policy.backend=scripted",
        "progress=false", *extra,
    ])


def _results(run_dir: Path) -> dict[str, dict]:
    return {r["problem_id"]: r["results"] for r in read_done(run_dir / "problems.jsonl")}


def test_outputs(data, tmp_path):
    out = run(_cfg(data, tmp_path / "out"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    assert {p.name for p in out.iterdir()} >= {
        "problems.jsonl", "samples.jsonl", "metrics.json", "table.md", "report.md", "accuracy.png", "meta.json",
        "config.yaml",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    acc = metrics["accuracy"]
    assert metrics["problems"] == 5
    for m in ("majority", "orm", "prm-min", "hrm-last", "prm-vote-prod"):  # same pool as the oracle
        assert all(acc["pass"][n]["accuracy"] >= acc[m][n]["accuracy"] for n in ("1", "2", "4"))
    # prm-step follows the "good" steps: at every depth it keeps a highest-reward candidate, and it
    # ends right exactly where each depth offered a good one (the fake PRM gives good steps 0.9)
    for rec in read_done(out / "problems.jsonl"):
        (path,) = [p for p in rec["paths"] if p["method"] == "prm-step" and p["n"] == 4]
        by_node = {}
        for c in rec["step_candidates"]:
            by_node.setdefault(c["node"], {})[c["slot"]] = c
        node, chosen = 0, []
        for looked, pick in zip(path["looked_at"], path["choices"], strict=False):
            rewards = {i: by_node[node][i]["rewards"]["prm"] for i in looked}
            assert rewards[pick] == max(rewards.values())
            chosen.append(rewards[pick])
            nxt = [c["node"] for c in rec["step_candidates"] if c["parent"] == [node, pick]]
            node = nxt[0] if nxt else None
        assert path["correct"] == all(r == 0.9 for r in chosen)
    assert acc["prm-step"]["4"]["accuracy"] >= 0.8
    assert acc["hrm-step"]["4"]["accuracy"] == 0.0  # this fake HRM prefers the bad ones
    for m in acc:
        for n in ("1", "2"):
            assert acc[m][n]["subsamples"] == 15, (m, n)
        assert acc[m]["4"]["subsamples"] == 5
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert kinds == {"solution", "step", "path"}
    sol = next(r for r in rows if r["kind"] == "solution")
    assert {"text", "steps", "answer", "correct", "rewards", "tokens"} <= set(sol)
    assert set(sol["rewards"]) == {"orm", "prm", "hrm"}
    assert len(sol["rewards"]["prm"]) == len(sol["steps"])
    assert sum(r["kind"] == "solution" for r in rows) == 5 * 4
    table = (out / "table.md").read_text()
    assert "| method | N=1 | N=2 | N=4 |" in table and "| PRM step search |" in table
    cost = metrics["cost"]
    assert cost["tokens_generated"] > 0 and cost["rm_inputs"] > 0 and cost["seconds_per_problem"] >= 0
    assert cost["solution_pool_tokens"] < cost["solution_one_run_per_n_tokens"]  # 4 < 1+2+4 samples
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["n_values"] == [1, 2, 4]


def test_interrupted_run_resumes_without_losing_or_repeating_a_problem(data, tmp_path):
    full = run(_cfg(data, tmp_path / "full"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    part = tmp_path / "part"
    # 2 problems a batch (the full run had all 5 in one): the third question interrupts the
    # second batch; every request's seed comes from its problem, so the batches do not matter
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(data, part, "batch_problems=2"), policy=InterruptingPolicy(k=3), scorers=SCORERS)
    assert len(read_done(part / "problems.jsonl")) == 2
    resumed_policy = ScriptedPolicy(RULES)
    run(_cfg(data, part, "batch_problems=2"), policy=resumed_policy, scorers=SCORERS)
    # only the 3 unfinished problems were solved again
    asked = {q for p, _ in resumed_policy.calls for q, _ in PROBLEMS if q in p}
    assert len(asked) == 3
    done = read_done(part / "problems.jsonl")
    assert len(done) == 5 and len({r["problem_id"] for r in done}) == 5
    assert _results(part) == _results(full)
    m_full = json.loads((full / "metrics.json").read_text())["accuracy"]
    assert json.loads((part / "metrics.json").read_text())["accuracy"] == m_full
    # a finished run is not redone
    again = ScriptedPolicy(RULES)
    run(_cfg(data, part), policy=again, scorers=SCORERS)
    assert again.calls == []


def test_a_half_written_last_line_is_redone(data, tmp_path):
    out = tmp_path / "out"
    run(_cfg(data, out, "limit=2"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    path = out / "problems.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:40])  # crash in the middle of writing problem 2
    run(_cfg(data, out, "limit=3"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    done = read_done(path)
    assert [r["question"] for r in done] == [q for q, _ in PROBLEMS[:3]]
    path.write_text(path.read_text() + "not json\n" + lines[0])
    with pytest.raises(Exception, match=r"problems.jsonl:4: invalid JSON"):
        read_done(path)


def test_resume_with_another_config_is_refused(data, tmp_path):
    out = tmp_path / "out"
    run(_cfg(data, out, "limit=1"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    with pytest.raises(ConfigError, match=r"n_values: \[1, 2, 4\] -> \[1, 2\]"):
        run(_cfg(data, out, "n_values=[1,2]"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    run(_cfg(data, out, "limit=2", "rm.batch_size=4"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    assert len(read_done(out / "problems.jsonl")) == 2


def test_shards_cover_every_problem_once_and_merge(data, tmp_path):
    out = tmp_path / "sharded"
    dirs = [run(_cfg(data, out, f"shard={i}/2"), policy=ScriptedPolicy(RULES), scorers=SCORERS) for i in range(2)]
    ids = [set(_results(d)) for d in dirs]
    assert len(ids[0]) == 3 and len(ids[1]) == 2 and not ids[0] & ids[1]
    merged = run(_cfg(data, out, "report_only=true"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    full = run(_cfg(data, tmp_path / "full"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    assert json.loads((merged / "metrics.json").read_text())["accuracy"] == json.loads(
        (full / "metrics.json").read_text()
    )["accuracy"]


def test_config_errors(data, tmp_path):
    with pytest.raises(ConfigError, match=r"prm=PATH"):
        run(load_config(EvalConfig, None, [f"dataset={data}", "methods=[prm-step]", "question_field=q",
                                           "answer_field=a"]))
    with pytest.raises(ConfigError, match="unknown method"):
        run(_cfg(data, tmp_path, "methods=[prm-best]"))
    with pytest.raises(ConfigError, match="shard"):
        run(_cfg(data, tmp_path, "shard=2/2"))
    with pytest.raises(ConfigError, match="neither one of"):
        run(_cfg(data, tmp_path, "dataset=nope"))


def test_cli_eval_with_a_scripted_policy_file(data, tmp_path, capsys):
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": RULES}))
    out = tmp_path / "cli"
    code = cli_main(["eval", f"dataset={data}", "question_field=q", "answer_field=a", f"out_dir={out}",
                     "methods=[majority,pass]", "n_values=[1,2]", "policy.backend=scripted",
                     f"policy.script={script}", "progress=false", "limit=2"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads((out / "metrics.json").read_text())["problems"] == 2


def test_shared_datasets_load(shared_data):
    for name, n in (("gsm8k", 3), ("math500", 3), ("prm800k-test", 3)):
        cfg = load_config(EvalConfig, None, [f"dataset={name}", f"data_dir={shared_data}", f"limit={n}"])
        problems, path = load_problems(cfg)
        assert len(problems) == n and path.is_file()
        assert all(p.answer and p.question for p in problems)
    cfg = load_config(EvalConfig, None, ["dataset=gsm8k", f"data_dir={shared_data}", "limit=1"])
    assert load_problems(cfg)[0][0].answer == "18"  # the number after ####, not the worked solution
    prm = load_config(EvalConfig, None, ["dataset=prm800k-test", f"data_dir={shared_data}"])
    problems, _ = load_problems(prm)
    assert len({p.problem_id for p in problems}) == len(problems)


@pytest.mark.slow
def test_resume_after_the_reward_model_was_retrained_is_refused(data, tmp_path, tiny_tokenizer):
    """Same config, same path, new weights: the old records were scored by another model."""
    from safetensors.torch import load_file, save_file

    from tests.rm_fixtures import make_tiny_rm

    rm = make_tiny_rm(tmp_path / "rm", tiny_tokenizer)
    out = tmp_path / "out"
    cfg = _cfg(data, out, "limit=1", f"prm={rm}")
    run(cfg, policy=ScriptedPolicy(RULES), scorers=SCORERS)
    run(_cfg(data, out, "limit=2", f"prm={rm}"), policy=ScriptedPolicy(RULES), scorers=SCORERS)  # same weights
    w = load_file(str(rm / "model.safetensors"))
    save_file({k: v * 1.01 for k, v in w.items()}, str(rm / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"weights\.prm: "):
        run(_cfg(data, out, "limit=3", f"prm={rm}"), policy=ScriptedPolicy(RULES), scorers=SCORERS)


def test_hf_policy_and_real_scorer_end_to_end(tmp_path, tiny_lm_dir, tiny_tokenizer, data):
    """The real pieces together: HFPolicy generating, Scorer.from_pretrained scoring."""
    from tests.rm_fixtures import make_tiny_rm

    rm = make_tiny_rm(tmp_path / "rm", tiny_tokenizer)
    out = tmp_path / "hf"
    cfg = load_config(EvalConfig, None, [
        f"dataset={data}", "question_field=q", "answer_field=a", f"out_dir={out}", "limit=2",
        "methods=[majority,orm,prm-step,prm-min]", "n_values=[1,2]", "subsamples=2", f"orm={rm}",
        f"prm={rm}", "rm.device=cpu", f"policy.model={tiny_lm_dir}", "max_solution_tokens=24",
        "max_step_tokens=8", "max_steps=2", "progress=false", "prompt.style=paragraph",
    ])
    run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problems"] == 2
    assert metrics["cost"]["tokens_generated"] > 0 and metrics["cost"]["rm_inputs"] > 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    sol = [r for r in rows if r["kind"] == "solution"]
    assert len(sol) == 4 and all(0.0 <= x <= 1.0 for r in sol for x in r["rewards"]["prm"])
    assert all(len(r["rewards"]["prm"]) == len(r["steps"]) for r in sol)


def test_resume_after_the_dataset_was_edited_is_refused(data, tmp_path):
    """Old records were graded against the old answers: an edited dataset file is another run."""
    out = tmp_path / "out"
    run(_cfg(data, out, "limit=1"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    lines = data.read_text().splitlines()
    first = json.loads(lines[0])
    first["a"] = first["a"] + "0"
    data.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match="dataset"):
        run(_cfg(data, out, "limit=2"), policy=ScriptedPolicy(RULES), scorers=SCORERS)
    assert len(read_done(out / "problems.jsonl")) == 1


class NoPolicy:
    """A policy that must not be asked: `pool=` generates nothing."""

    concurrent = False

    def __getattr__(self, name):
        raise AssertionError(f"the policy was used ({name})")


class CountingRM(FakeRM):
    def __init__(self, word="good", fail_after=None):
        super().__init__(word)
        self.calls, self.fail_after = 0, fail_after

    def score_inputs(self, inputs):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return super().score_inputs(inputs)


def test_pool_rescores_an_earlier_runs_candidates_without_generating(data, tmp_path):
    first = run(_cfg(data, tmp_path / "first", "methods=[majority,prm-min]"), policy=ScriptedPolicy(RULES),
                scorers={"prm": FakeRM()})  # fmt: skip
    args = [f"pool={first}", "methods=[majority,pass,hrm-min,hrm-vote-last]", "batch_problems=2"]
    again = run(_cfg(data, tmp_path / "again", *args), policy=NoPolicy(), scorers={"hrm": CountingRM("bad")})
    old, new = read_done(first / "problems.jsonl"), read_done(again / "problems.jsonl")
    assert [r["problem_id"] for r in new] == [r["problem_id"] for r in old]
    for a, b in zip(old, new, strict=True):
        assert [c["text"] for c in a["candidates"]] == [c["text"] for c in b["candidates"]]
        assert all(c["rewards"]["hrm"] for c in b["candidates"]) and b["pool"] == str(first)
        assert b["results"]["majority"] == a["results"]["majority"]  # same candidates, same subsets
    acc = json.loads((again / "metrics.json").read_text())["accuracy"]
    assert acc["hrm-min"]["4"]["accuracy"] <= acc["pass"]["4"]["accuracy"]
    # killed during the second scoring batch, the rerun scores only what is missing
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(data, part, *args), policy=NoPolicy(), scorers={"hrm": CountingRM("bad", fail_after=1)})
    assert len(read_done(part / "problems.jsonl")) == 2
    rm = CountingRM("bad")
    run(_cfg(data, part, *args), policy=NoPolicy(), scorers={"hrm": rm})
    assert rm.calls == 2 and _results(part) == _results(again)  # problems 3-4, then 5


def test_pool_refuses_what_it_cannot_rescore(data, tmp_path):
    first = run(_cfg(data, tmp_path / "first", "methods=[majority,prm-min]", "n_values=[1,2]"),
                policy=ScriptedPolicy(RULES), scorers={"prm": FakeRM()})  # fmt: skip
    with pytest.raises(ConfigError, match="generate as they search"):
        run(_cfg(data, tmp_path / "x", f"pool={first}", "methods=[prm-step]"), policy=NoPolicy(), scorers=SCORERS)
    with pytest.raises(ConfigError, match="more than the 2 candidates"):
        run(_cfg(data, tmp_path / "x", f"pool={first}", "methods=[prm-min]"), policy=NoPolicy(), scorers=SCORERS)
    with pytest.raises(ConfigError, match="not found"):
        run(_cfg(data, tmp_path / "x", f"pool={tmp_path / 'nowhere'}", "methods=[prm-min]"), policy=NoPolicy(),
            scorers=SCORERS)  # fmt: skip
