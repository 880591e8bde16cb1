"""ORM / PRM / HRM labelling on hand-written PRM800K records: every Table 6 row, neutral handling,
conditioning on the chosen trajectory, and the phase-2 example record."""

from __future__ import annotations

import json

import pytest

from hiprm.data.labels import build_examples, hrm_pair_examples, merged_label, prm_examples, step_label
from hiprm.data.prm800k import read_prm800k


def record(steps, finish="solution", answer="6"):
    """A PRM800K phase-1 record from [(completions [(text, rating)], chosen index | 'human:TEXT' | None)]."""
    out = []
    for comps, chosen in steps:
        step = {
            "completions": [{"text": t, "rating": r, "flagged": False} for t, r in comps],
            "human_completion": None,
            "chosen_completion": chosen if isinstance(chosen, int) else None,
        }
        if isinstance(chosen, str):
            step["human_completion"] = {"text": chosen.removeprefix("human:"), "rating": None, "source": "human"}
        out.append(step)
    return {
        "labeler": "x",
        "question": {"problem": "What is 1+2+3?", "ground_truth_answer": answer},
        "label": {"steps": out, "finish_reason": finish, "total_time": 1},
    }


@pytest.fixture
def write_jsonl(tmp_path):
    def _write(*records, name="r.jsonl"):
        p = tmp_path / name
        p.write_text("".join(json.dumps(r) + "\n" for r in records))
        return p

    return _write


@pytest.mark.parametrize(
    "first, second, expected",
    [
        (1, 1, 1.0),  # pos + pos -> pos
        (1, 0, 0.0),  # pos + neu -> neg
        (1, -1, 0.0),  # pos + neg -> neg
        (0, 1, 1.0),  # neu + pos -> pos
        (-1, 1, 1.0),  # neg + pos -> pos
        (0, 0, 0.0),  # neu + neu -> neg
        (0, -1, 0.0),  # neu + neg -> neg
        (-1, 0, 0.0),  # neg + neu -> neg
        (-1, -1, 0.0),  # neg + neg -> neg
    ],
)
def test_table6_every_row_through_a_real_record(write_jsonl, first, second, expected):
    # Step 0 offers one completion with rating `first` (chosen); step 1 offers one with `second`.
    path = write_jsonl(record([([("A", first)], 0), ([("B", second)], 0)]))
    (sol,) = read_prm800k(path)
    pairs = list(hrm_pair_examples(sol))
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair.current_step == "A\n\nB"
    assert pair.previous_steps == []
    assert pair.label == expected == merged_label(first, second)
    assert pair.ratings == [first, second]
    assert pair.kind == "hrm_pair"


def test_prm_examples_condition_on_chosen_trajectory(write_jsonl):
    path = write_jsonl(
        record(
            [
                ([("s0", 1)], 0),
                ([("bad", -1), ("good", 1), ("meh", 0), ("unrated", None)], 1),
                ([("end\n\n# Answer\n\n6", 1)], 0),
            ]
        )
    )
    (sol,) = read_prm800k(path)
    ex = list(prm_examples(sol))
    got = [(e.previous_steps, e.current_step, e.label, e.ratings) for e in ex]
    assert got == [
        ([], "s0", 1.0, [1]),
        (["s0"], "bad", 0.0, [-1]),
        (["s0"], "good", 1.0, [1]),
        (["s0"], "meh", 0.0, [0]),  # neutral -> negative by default
        (["s0", "good"], "end\n\n# Answer\n\n6", 1.0, [1]),
    ]  # the unrated completion is never an example (null is not 0)


def test_neutral_setting(write_jsonl):
    path = write_jsonl(record([([("s0", 1)], 0), ([("meh", 0), ("ok", 1)], 1)]))
    (sol,) = read_prm800k(path)
    assert [e.label for e in prm_examples(sol, "positive")] == [1.0, 1.0, 1.0]
    assert [e.current_step for e in prm_examples(sol, "drop")] == ["s0", "ok"]
    # drop also removes the pair decided by the neutral step; Table 6 still labels the rest
    assert [(e.current_step, e.label) for e in hrm_pair_examples(sol, "drop")] == [("s0\n\nok", 1.0)]
    assert [(e.current_step, e.label) for e in hrm_pair_examples(sol, "positive")] == [
        ("s0\n\nmeh", 0.0),  # Table 6 is fixed: pos + neu -> neg whatever the single-step setting
        ("s0\n\nok", 1.0),
    ]
    assert step_label(0, "drop") is None


def test_hrm_is_prm_plus_pairs_along_trajectory(write_jsonl):
    path = write_jsonl(
        record(
            [
                ([("a", 1)], 0),
                ([("b", 1), ("b2", -1)], 0),
                ([("c", 0), ("c2", 1)], 1),
                ([("d", -1)], None),  # give-up style last step: rated but not chosen
            ]
        )
    )
    (sol,) = read_prm800k(path)
    prm = build_examples([sol], "prm")
    hrm = build_examples([sol], "hrm")
    assert [e.to_dict() for e in hrm if e.kind == "prm"] == [e.to_dict() for e in prm]
    pairs = [(e.previous_steps, e.current_step, e.label) for e in hrm if e.kind == "hrm_pair"]
    assert pairs == [
        ([], "a\n\nb", 1.0),
        ([], "a\n\nb2", 0.0),
        (["a"], "b\n\nc", 0.0),
        (["a"], "b\n\nc2", 1.0),
        (["a", "b"], "c2\n\nd", 0.0),
    ]


def test_human_completion_continues_the_trajectory(write_jsonl):
    path = write_jsonl(record([([("x", -1), ("y", -1)], "human:fixed"), ([("z", 1)], 0)]))
    (sol,) = read_prm800k(path)
    assert sol.steps[0].chosen == "fixed" and sol.steps[0].chosen_rating is None
    ex = list(prm_examples(sol))
    assert [(e.previous_steps, e.current_step) for e in ex] == [([], "x"), ([], "y"), (["fixed"], "z")]
    (pair,) = hrm_pair_examples(sol)
    assert pair.current_step == "fixed\n\nz" and pair.label == 1.0 and pair.ratings == [None, 1]


def test_orm_examples_graded_against_reference(write_jsonl):
    path = write_jsonl(
        record(
            [
                ([("1+2=3", 1)], 0),
                ([("3+3=6\n\n# Answer\n\n6", 1), ("3+3=7\n\n# Answer\n\n7", -1), ("hmm", 0)], 0),
            ]
        )
    )
    (sol,) = read_prm800k(path)
    orm = build_examples([sol], "orm", grade=lambda text, ref: None if "# Answer" not in text else text.endswith(ref))
    assert [(e.previous_steps, e.current_step[-1], e.label, e.kind) for e in orm] == [
        (["1+2=3"], "6", 1.0, "orm"),
        (["1+2=3"], "7", 0.0, "orm"),
    ]


def test_phase2_example_record(shared_data):
    (sol,) = read_prm800k(shared_data / "prm800k" / "phase2_test_example.json")
    assert sol.finish_reason == "found_error"
    assert len(sol.steps) == 7 and sol.extra["n_pre_generated_steps"] == 13
    assert sol.steps[-1].chosen is None
    assert [c.rating for c in sol.steps[-1].completions] == [-1, 1, 1, 1]
    prm = build_examples([sol], "prm")
    # 6 chosen steps with one rating each + 4 alternatives at the error step
    assert len(prm) == 10
    last = prm[-4:]
    assert all(len(e.previous_steps) == 6 for e in last)
    assert [e.label for e in last] == [0.0, 1.0, 1.0, 1.0]
    pairs = [e for e in build_examples([sol], "hrm") if e.kind == "hrm_pair"]
    # 5 pairs along the labelled prefix + 4 pairs (chosen step 5, each error-step alternative)
    assert len(pairs) == 9
    assert [e.label for e in pairs[-4:]] == [0.0, 1.0, 1.0, 1.0]


def test_export_trl_keeps_each_previous_steps_label(shared_data, tmp_path):
    """Phase-2 trajectories go through neutral steps: the TRL export must say so (TRL's own
    converter labels a step true only for rating == 1), checked on the export as `datasets`
    loads it against the record's ratings."""
    import datasets

    from hiprm.artifacts import write_jsonl
    from hiprm.cli import main

    (sol,) = read_prm800k(shared_data / "prm800k" / "phase2_test_example.json")
    chosen = [s.chosen_rating for s in sol.steps if s.chosen is not None]
    assert 0 in chosen  # the record does go through a neutral step
    src = tmp_path / "ex.jsonl"
    examples = build_examples([sol], "hrm")
    write_jsonl(src, examples)
    assert main(["data", "export-trl", str(src), f"out={tmp_path / 'trl.jsonl'}"]) == 0
    rows = datasets.load_dataset("json", data_files=str(tmp_path / "trl.jsonl"), split="train")
    assert len(rows) == len(examples)
    for row, ex in zip(rows, examples, strict=True):
        n = len(ex.previous_steps)
        assert row["labels"][:n] == [r in (1, None) for r in chosen[:n]]
        assert row["labels"][n] == (ex.label >= 0.5) and row["completions"][-1] == ex.current_step
    assert any(not all(r["labels"][:-1]) for r in rows)  # the old export wrote all true here
    # A file without previous labels (built before them) is refused, naming the field.
    old = [{k: v for k, v in e.to_dict().items() if k != "previous_labels"} for e in examples]
    write_jsonl(src, old)
    assert main(["data", "export-trl", str(src), f"out={tmp_path / 'old.jsonl'}"]) == 2
    assert not (tmp_path / "old.jsonl").exists()


def test_build_drops_duplicates_and_averages_conflicts(shared_data, tmp_path, capsys):
    """Phase-1 train HRM: 3,074 exact duplicates (41 with disagreeing labels) are dropped by
    default and counted; dedupe=false keeps them."""
    import json

    from hiprm.data.build import BuildConfig, run

    src = str(shared_data / "prm800k" / "phase1_train.reconstructed.jsonl")
    out = run(BuildConfig(kind="hrm", input=src, out_dir=str(tmp_path / "d"), val_fraction=0))
    counts = json.loads((out / "meta.json").read_text())["counts"]
    assert (counts["duplicates_dropped"], counts["duplicate_conflicts"]) == (3074, 41)
    assert "3074 dropped" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    keys = [(r["question"], tuple(r["previous_steps"]), r["current_step"]) for r in rows]
    assert len(keys) == len(set(keys)) == 71098
    assert sum(1 for r in rows if 0 < r["label"] < 1) == 41
    full = run(BuildConfig(kind="hrm", input=src, out_dir=str(tmp_path / "all"), val_fraction=0, dedupe=False))
    assert sum(1 for _ in (full / "train.jsonl").open()) == 74172
