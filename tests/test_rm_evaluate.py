"""RM evaluation: metrics on a fake scorer with known rewards give hand-computed numbers
(classification, selection, ProcessBench threshold and F1), the runner writes json + md, resumes
from its reward cache, and runs end to end on the shared data with a tiny model."""

from __future__ import annotations

import json
import math

import pytest

from hiprm.config import ConfigError
from hiprm.records import Completion, LabeledStep, Solution
from hiprm.rm import evaluate
from hiprm.rm.eval_data import step_groups
from hiprm.rm.evaluate import RewardCache, RMEvalConfig, eval_prm800k, eval_processbench
from hiprm.rm.metrics import binary_metrics, bootstrap_ci, wilson_ci
from tests.rm_fixtures import FakeScorer, shared_tiny_rm

REWARD = {"good0": 0.9, "bad0": 0.6, "good1": 0.4, "neu1": 0.7, "bad1": 0.1, "fin": 0.8, "p1": 0.3, "p2": 0.2,
          "ok": 0.9, "meh": 0.45, "bad": 0.2}


def by_text(question, previous, step):
    return REWARD[step]


def sol_a() -> Solution:
    """Step 0 offers good0(+1, chosen)/bad0(-1); step 1 good1(+1, chosen)/neu1(0)/bad1(-1); the
    last step has no chosen text but one rated completion."""
    return Solution("pa", "Q-a", "5", [
        LabeledStep("good0", 1, [Completion("good0", 1), Completion("bad0", -1)]),
        LabeledStep("good1", 1, [Completion("good1", 1), Completion("neu1", 0), Completion("bad1", -1)]),
        LabeledStep(None, None, [Completion("fin", 1), Completion("unrated", None)]),
    ])


def sol_b() -> Solution:
    return Solution("pb", "Q-b", "1", [LabeledStep("p1", 1, [Completion("p1", 1), Completion("p2", 1)])])


def test_step_groups_condition_on_chosen_steps_and_skip_unrated():
    groups = step_groups([sol_a()])
    assert [(g.prefix, g.texts, g.ratings) for g in groups] == [
        ([], ["good0", "bad0"], [1, -1]),
        (["good0"], ["good1", "neu1", "bad1"], [1, 0, -1]),
        (["good0", "good1"], ["fin"], [1]),
    ]


def test_classification_numbers_by_hand(tmp_path):
    fake = FakeScorer(by_text)
    groups = step_groups([sol_a()])
    res = eval_prm800k(fake, "m", groups, RewardCache(tmp_path / "c.jsonl"), RMEvalConfig(bootstrap=200))
    c = res["classification"]
    # labels/scores: good0 1/.9, bad0 0/.6, good1 1/.4, neu1 0/.7 (neutral=negative), bad1 0/.1, fin 1/.8
    # at 0.5: right on good0, bad1, fin -> 3/6; precision 2/4, recall 2/3 -> F1 4/7;
    # AUROC: .9 > 3 negatives, .4 > 1, .8 > 3 -> 7/9.
    assert (c["n"], c["n_positive"]) == (6, 3)
    assert c["accuracy"]["value"] == pytest.approx(0.5)
    assert c["accuracy"]["ci95"] == pytest.approx(list(wilson_ci(3, 6)))
    assert c["f1"]["value"] == pytest.approx(4 / 7)
    assert c["auroc"]["value"] == pytest.approx(7 / 9)
    lo, hi = c["auroc"]["ci95"]
    assert lo <= 7 / 9 <= hi
    # neutral=drop removes neu1: accuracy 3/5, AUROC 5/6.
    drop = eval_prm800k(fake, "m", groups, RewardCache(tmp_path / "c.jsonl"), RMEvalConfig(neutral="drop", bootstrap=50))
    assert drop["classification"]["accuracy"]["value"] == pytest.approx(0.6)
    assert drop["classification"]["auroc"]["value"] == pytest.approx(5 / 6)


def test_selection_numbers_by_hand(tmp_path):
    groups = step_groups([sol_a(), sol_b()])
    sel = eval_prm800k(FakeScorer(by_text), "m", groups, RewardCache(tmp_path / "c.jsonl"),
                       RMEvalConfig(bootstrap=50))["selection"]
    # step0 of A: top = good0 (+1) hit, random 1/2; step1 of A: top = neu1 miss, random 1/3;
    # B: both +1 (not mixed) top = p1 hit, random 1; the last step of A has one rated: not counted.
    assert (sel["n_steps_2plus"], sel["n_steps_mixed"]) == (3, 2)
    assert sel["mixed"]["hits"] == 1 and sel["mixed"]["top1_positive"]["value"] == pytest.approx(0.5)
    assert sel["mixed"]["random"]["value"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert sel["all"]["hits"] == 2 and sel["all"]["top1_positive"]["value"] == pytest.approx(2 / 3)
    assert sel["all"]["random"]["value"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert sel["mixed"]["top1_positive"]["ci95"] == pytest.approx(list(wilson_ci(1, 2)))


def _pb_entries():
    from hiprm.records import StepVerdicts

    def e(i, steps, label):
        return StepVerdicts(str(i), f"p{i}", f"Q{i}", steps, label, label == -1)

    gsm = [e(1, ["ok", "ok", "bad"], 2), e(2, ["ok", "meh", "ok"], 1), e(3, ["ok", "ok"], -1), e(4, ["ok", "meh"], -1)]
    math_ = [e(5, ["meh", "ok"], 0), e(6, ["ok"], -1)]
    return {"gsm8k": gsm, "math": math_}


def test_processbench_threshold_and_f1_by_hand(tmp_path):
    # On gsm8k: t in (.2, .45] -> preds [2, -1, -1, -1]: acc_err 1/2, acc_cor 1 -> F1 2/3;
    # t in (.45, .9] -> [2, 1, -1, 1]: acc_err 1, acc_cor 1/2 -> F1 2/3; else F1 0.
    # The lowest best grid value is 0.21; on math it gives [-1, -1]: acc_err 0, acc_cor 1 -> F1 0.
    res = eval_processbench(FakeScorer(by_text), "m", _pb_entries(), RewardCache(tmp_path / "c.jsonl"),
                            RMEvalConfig(bootstrap=50))
    assert res["threshold"] == pytest.approx(0.21) and res["threshold_split"] == "gsm8k"
    assert res["threshold_split_f1"] == pytest.approx(2 / 3)
    g, m = res["splits"]["gsm8k"], res["splits"]["math"]
    assert (g["n"], g["n_erroneous"], g["n_correct"]) == (4, 2, 2)
    assert g["acc_erroneous"]["value"] == pytest.approx(0.5) and g["acc_correct"]["value"] == pytest.approx(1.0)
    assert g["f1"]["value"] == pytest.approx(2 / 3)
    assert m["f1"]["value"] == 0.0 and m["acc_correct"]["value"] == 1.0
    assert res["average_f1"] == pytest.approx(1 / 3)
    # A fixed threshold skips the search.
    fixed = eval_processbench(FakeScorer(by_text), "m", _pb_entries(), RewardCache(tmp_path / "c.jsonl"),
                              RMEvalConfig(threshold=0.5, bootstrap=50))
    assert fixed["threshold"] == 0.5 and fixed["threshold_split"] is None
    assert fixed["splits"]["gsm8k"]["acc_correct"]["value"] == pytest.approx(0.5)
    assert fixed["splits"]["math"]["acc_erroneous"]["value"] == pytest.approx(1.0)


def test_metric_helpers():
    m = binary_metrics([1, 1, 0, 0], [0.5, 0.2, 0.1, 0.9])
    assert (m["accuracy"], m["auroc"]) == (0.5, 0.5)
    assert math.isnan(binary_metrics([1, 1], [0.2, 0.3])["auroc"])
    lo, hi = bootstrap_ci(lambda a: float(a.mean()), [0, 1] * 50, n_boot=300)
    assert lo < 0.5 < hi and hi - lo < 0.3
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(10, 10)[1] == 1.0


# ---- the runner ----------------------------------------------------------------------------------


def _write_data(root):
    def rec(problem, steps):
        return {"question": {"problem": problem, "ground_truth_answer": "5"},
                "label": {"steps": steps, "finish_reason": "solution"}}

    def step(completions, chosen):
        return {"completions": [{"text": t, "rating": r, "flagged": False} for t, r in completions],
                "human_completion": None, "chosen_completion": chosen}

    (root / "prm800k").mkdir(parents=True)
    (root / "processbench").mkdir()
    a = rec("Q-a", [step([("good0", 1), ("bad0", -1)], 0), step([("good1", 1), ("neu1", 0), ("bad1", -1)], 0),
                    step([("fin", 1)], None)])
    b = rec("Q-b", [step([("p1", 1), ("p2", 1)], 0)])
    (root / "prm800k" / "test.jsonl").write_text(json.dumps(a) + "\n" + json.dumps(b) + "\n")
    for name, entries in _pb_entries().items():
        (root / "processbench" / f"{name}.json").write_text(json.dumps([
            {"id": e.id, "generator": "g", "problem": e.question, "steps": e.steps,
             "final_answer_correct": e.final_answer_correct, "label": e.first_error} for e in entries]))


def test_runner_writes_reports_and_resumes_from_cache(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _write_data(data)
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "config.json").write_text("{}")
    fakes: list[FakeScorer] = []

    def fake_from_pretrained(path, *a, **k):
        fakes.append(FakeScorer(by_text))
        return fakes[-1]

    monkeypatch.setattr("hiprm.rm.scorer.Scorer.from_pretrained", fake_from_pretrained)
    cfg = RMEvalConfig(models=[str(model)], out=str(tmp_path / "out"), data_dir=str(data), prm800k="prm800k/test.jsonl",
                     processbench_splits=["gsm8k", "math"], bootstrap=50, prmbench_dir="")
    path = evaluate.run(cfg)
    report = json.loads(path.read_text())
    res = report["models"][str(model)]
    assert res["prm800k"]["classification"]["auroc"]["value"] == pytest.approx(
        binary_metrics([1, 0, 1, 0, 0, 1, 1, 1], [0.9, 0.6, 0.4, 0.7, 0.1, 0.8, 0.3, 0.2])["auroc"])
    assert res["processbench"]["splits"]["gsm8k"]["f1"]["value"] == pytest.approx(2 / 3)
    md = (tmp_path / "out" / "rm_eval.md").read_text()
    assert "ProcessBench" in md and "step selection" in md and "0.21 (on gsm8k)" in md
    assert (tmp_path / "out" / "meta.json").is_file()
    assert fakes[0].calls > 0

    # Rerun: everything comes from the cache; the report is the same.
    evaluate.run(cfg)
    assert fakes[1].calls == 0
    assert json.loads(path.read_text())["models"] == report["models"]

    # An interrupted run (half-written last cache line) resumes and rescored only what is missing.
    cache = tmp_path / "out" / "rewards.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])
    evaluate.run(cfg)
    assert 1 <= fakes[2].calls <= 2
    assert json.loads(path.read_text())["models"] == report["models"]


def test_runner_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="models"):
        evaluate.run(RMEvalConfig(out=str(tmp_path)))
    with pytest.raises(ConfigError, match="threshold_split"):
        evaluate.run(RMEvalConfig(models=["x"], out=str(tmp_path), processbench_splits=["math"]))


def test_runner_on_shared_data_with_tiny_model(tmp_path, shared_data, tmp_path_factory, tiny_tokenizer):
    ckpt = shared_tiny_rm(tmp_path_factory, tiny_tokenizer)
    cfg = RMEvalConfig(models=[str(ckpt)], out=str(tmp_path / "out"), data_dir=str(shared_data), prm800k_limit=2,
                     limit=3, processbench_splits=["gsm8k", "math"], bootstrap=50, device="cpu",
                       prmbench_limit=1)
    report = json.loads(evaluate.run(cfg).read_text())
    res = report["models"][str(ckpt)]
    cls = res["prm800k"]["classification"]
    assert cls["n"] > 5 and 0.0 <= cls["accuracy"]["value"] <= 1.0
    assert set(res["processbench"]["splits"]) == {"gsm8k", "math"}
    assert res["processbench"]["splits"]["math"]["n"] == 3
    bench = res["prmbench"]["subsets"]
    assert set(bench) == {"test", "prm800k_train", "all"}
    assert bench["test"]["categories"]["multi_solutions"]["n"] == 1  # one per category and source
    assert "correct" in bench["test"]["categories"]
    assert (tmp_path / "out" / "prmbench.png").stat().st_size > 1000
    assert "PRMBench" in (tmp_path / "out" / "rm_eval.md").read_text()


def test_mixed_inputs_in_one_call_score_as_each_alone(tmp_path_factory, tiny_tokenizer):
    """Evaluation sends every rated completion of a solution in one `score_inputs` call: first
    steps, shared prefixes and single inputs together give what each input gives alone."""
    from hiprm.rm.scorer import Scorer

    scorer = Scorer.from_pretrained(shared_tiny_rm(tmp_path_factory, tiny_tokenizer), device="cpu")
    q = "What is 2 + 3?"
    inputs = [(q, [], "First, 2 + 3 = 5."), (q, ["First, 2 + 3 = 5."], "x = 7"),
              (q, ["First, 2 + 3 = 5."], "# Answer 5"), (q, [], "so x = 7")]  # fmt: skip
    alone = [scorer.score_inputs([x])[0] for x in inputs]
    assert scorer.score_inputs(inputs) == pytest.approx(alone, abs=1e-5)


@pytest.mark.parametrize("neutral", ["negative", "drop", "positive"])
def test_evaluation_items_are_the_training_data_definition(shared_data, neutral):
    """One definition of a PRM example: the (question, previous steps, step, label) items that
    `rm eval` classifies on the phase-1 test file are exactly the PRM examples `data build`
    makes from it."""
    from collections import Counter

    from hiprm.data.labels import build_examples
    from hiprm.data.prm800k import read_prm800k
    from hiprm.rm.evaluate import RMEvalConfig, classification_rows

    skip = RMEvalConfig().skip_finish_reasons
    sols = [s for s in read_prm800k(shared_data / "prm800k" / "phase1_test.jsonl") if s.finish_reason not in skip]
    groups = step_groups(sols)
    # Each item's "reward" is its own index, so the rows say which item got which label.
    items = [(g.question, tuple(g.prefix), t) for g in groups for t in g.texts]
    rewards, k = [], 0
    for g in groups:
        rewards.append(list(range(k, k + len(g.texts))))
        k += len(g.texts)
    labels, picked = classification_rows(groups, rewards, neutral)
    got = Counter((*items[i], y) for i, y in zip(picked, labels, strict=True))
    want = Counter((e.question, tuple(e.previous_steps), e.current_step, e.label)
                   for e in build_examples(sols, "prm", neutral=neutral))  # fmt: skip
    assert got == want and sum(want.values()) > 2000


def _bench_file(folder, name, records):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _record(idx, classification, steps, errors, original=None):
    return {"original_question": "oq", "modified_question": f"q {idx}", "original_process": original or ["o1"],
            "modified_process": steps, "modified_steps": errors, "error_steps": errors, "reason": "",
            "idx": idx, "question": "oq", "classification": classification}


def test_prmbench_metrics_by_hand(tmp_path):
    """PRMBench's official numbers on a small file, worked out by hand (and checked against
    ssmisya/PRMBench's own `evaluate_function` on the same predictions):
    - correct_a (derived from redundency_a's original process, 3 steps) predicted [T, T, F];
    - redundency_a, error steps [2, 3], predicted [T, F, T, T]: TP 2 FP 1 TN 1 FN 0 ->
      F1 0.8, negative F1 2/3, PRMScore 0.7333;
    - circular_a, error step [4], predicted [T, T, T, F, F]: TP 3 FP 0 TN 1 FN 1 ->
      F1 6/7, negative F1 2/3, PRMScore 0.7619;
    - multi_solutions_a, no errors, predicted [T, F, T]: F1 0.8 = its PRMScore (F1 only);
    - overall (all but the correct sample): TP 7 FP 1 TN 2 FN 2 -> F1 14/17, negative F1 4/7,
      PRMScore 0.69748; simplicity = (0.7333 + 0.7619) / 2 = 0.7476.
    A reward of exactly the threshold is a negative prediction (the rule is reward > threshold).
    """
    folder = tmp_path / "prmbench"
    _bench_file(folder, "prm800k_test_p1_4o_redundency.jsonl",
                [_record("a", "redundency", ["r1", "r2", "r3", "r4"], [2, 3], original=["c1", "c2", "c3"])])
    _bench_file(folder, "prm800k_test_p1_4o_circular.jsonl", [_record("a", "circular", ["s1", "s2", "s3", "s4", "s5"], [4])])
    _bench_file(folder, "prm_test_p12_multi_solutions.jsonl",
                [_record("a", "multi_solutions", ["m1", "m2", "m3"], []),
                 _record("a", "multi_solutions", ["dup"], [])])  # a repeated (classification, idx): the first kept
    preds = {"c1": 1, "c2": 1, "c3": 0.5, "r1": 1, "r2": 0, "r3": 1, "r4": 1, "s1": 1, "s2": 1, "s3": 1, "s4": 0,
             "s5": 0, "m1": 1, "m2": 0, "m3": 1}
    fake = FakeScorer(lambda q, prev, cur: float(preds[cur]))
    from hiprm.rm.eval_data import load_prmbench

    samples = load_prmbench(folder, None, 0)
    assert [s.id for s in samples] == ["circular_a", "redundency_a", "multi_solutions_a", "correct_a"]
    res = evaluate.eval_prmbench(fake, "m", samples, RewardCache(tmp_path / "c.jsonl"),
                                 RMEvalConfig(bootstrap=50))["subsets"]
    assert set(res) == {"test"}  # no PRM800K-train files: no separate subsets
    cats = res["test"]["categories"]
    assert cats["redundency"]["prm_score"]["value"] == pytest.approx(0.73333, abs=1e-4)
    assert cats["circular"]["prm_score"]["value"] == pytest.approx(0.76190, abs=1e-4)
    assert cats["multi_solutions"]["prm_score"]["value"] == pytest.approx(0.8)
    assert (cats["correct"]["f1"], cats["correct"]["negative_f1"]) == (pytest.approx(0.8), 0.0)
    overall = res["test"]["overall"]
    assert overall["f1"] == pytest.approx(14 / 17) and overall["negative_f1"] == pytest.approx(4 / 7)
    assert overall["prm_score"]["value"] == pytest.approx(0.69748, abs=1e-5)
    assert res["test"]["groups"]["simplicity"] == pytest.approx(0.74762, abs=1e-4)
    lo, hi = overall["prm_score"]["ci95"]
    assert lo <= overall["prm_score"]["value"] <= hi


def test_prmbench_bad_record_names_file_line_field(tmp_path):
    from hiprm.artifacts import DataError
    from hiprm.data.prmbench import read_prmbench

    folder = tmp_path / "prmbench"
    bad = _record("a", "circular", ["s1", "s2"], [0])
    _bench_file(folder, "x.jsonl", [_record("b", "circular", ["s"], [1]), bad])
    with pytest.raises(DataError, match=r"x.jsonl:2: field 'error_steps\[0\]'"):
        read_prmbench(folder)
