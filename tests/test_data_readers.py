"""Readers on the real shared files and on the edge cases SOURCES.md documents, plus the
bad-input contract: one clear error naming file, line and field, exit code 2, no partial output,
and `--skip-bad` that continues and says how many lines it skipped and why."""

from __future__ import annotations

import json

import pytest

from hiprm.artifacts import DataError, SkipLog, read_jsonl
from hiprm.cli import main
from hiprm.data.prm800k import read_prm800k
from hiprm.data.problems import read_gsm8k, read_math500, read_problems_jsonl
from hiprm.data.processbench import read_processbench
from tests.test_data_labels import record


def test_phase1_test_real_file(shared_data):
    sols = read_prm800k(shared_data / "prm800k" / "phase1_test.jsonl")
    assert len(sols) == 81
    reasons = {s.finish_reason for s in sols}
    assert reasons <= {"solution", "give_up"}
    # null ratings stay None (SOURCES: 110 of 5,192 in the full file), never 0
    ratings = [c.rating for s in sols for st in s.steps for c in st.completions]
    assert None in ratings and set(ratings) == {-1, 0, 1, None}
    # the one step with `completions: null` and the human completions are read
    assert any(st.chosen_is_human for s in sols for st in s.steps)
    assert all(s.steps[-1].chosen is None for s in sols if s.finish_reason == "give_up")


def test_reconstructed_train_tolerates_extra_keys(shared_data):
    sols = read_prm800k(shared_data / "prm800k" / "phase1_train.reconstructed.jsonl")
    assert len(sols) == 942
    assert sum(len(s.steps) for s in sols) == 15416
    assert sum(s.finish_reason == "unknown_not_solution" for s in sols) == 134
    assert all(s.reference_answer for s in sols)


def test_problem_sets(shared_data):
    math500 = read_math500(shared_data / "math500" / "test.jsonl")
    assert len(math500) == 400 and math500[0].extra["unique_id"].startswith("test/")
    gsm = read_gsm8k(shared_data / "gsm8k" / "test.jsonl")
    short = read_gsm8k(shared_data / "gsm8k" / "hrm_evaluation.jsonl")
    assert len(gsm) == len(short) == 1055
    assert gsm[0].answer == "18" and "####" in gsm[0].extra["solution"]
    agree = sum(a.answer == b.answer for a, b in zip(gsm, short, strict=True))
    assert agree / len(gsm) > 0.98  # SOURCES: the cut-down answers differ only in formatting


def test_processbench_splits(shared_data):
    for split, n in [("gsm8k", 316), ("math", 978), ("olympiadbench", 1000), ("omnimath", 1000)]:
        items = read_processbench(shared_data / "processbench" / f"{split}.json")
        assert len(items) == n
        assert all(-1 <= it.first_error < len(it.steps) for it in items)
        # an entry whose first wrong step exists cannot be fully correct
        assert all(it.first_error >= 0 for it in items if not it.final_answer_correct) or split != "gsm8k"


BAD_LINES = [
    (b"{not json\n", "invalid JSON", None),
    (b'{"question": {"problem": "caf\xe9"}}\n', "not valid UTF-8", None),
    (json.dumps({"label": {"steps": []}}).encode() + b"\n", "missing", "question"),
    (json.dumps({"question": {"problem": 3}, "label": {"steps": []}}).encode() + b"\n", "expected str", "question.problem"),
    (
        json.dumps(record([([("a", 5)], 0)])).encode() + b"\n",
        "expected -1, 0, 1 or null",
        "label.steps[0].completions[0].rating",
    ),
    (json.dumps(record([([("   ", 1)], 0)])).encode() + b"\n", "empty step text", "label.steps[0].completions[0].text"),
    (json.dumps(record([([("a", 1)], 3)])).encode() + b"\n", "outside", "label.steps[0].chosen_completion"),
    (json.dumps(record([([("a", 1)], 0)], finish="weird")).encode() + b"\n", "unknown value", "label.finish_reason"),
]


@pytest.mark.parametrize("payload, message, field", BAD_LINES)
def test_bad_prm800k_lines_name_file_line_field(tmp_path, payload, message, field):
    good = json.dumps(record([([("a", 1)], 0), ([("b", -1)], 0)])).encode() + b"\n"
    p = tmp_path / "bad.jsonl"
    p.write_bytes(good + payload)
    with pytest.raises(DataError) as e:
        read_prm800k(p)
    text = str(e.value)
    assert text.startswith(f"{p}:2: ")
    assert message in text
    if field:
        assert e.value.field == field and f"field '{field}'" in text
    skipped = SkipLog()
    assert len(read_prm800k(p, skipped)) == 1 and skipped.count == 1
    assert "skipped 1 bad lines" in skipped.summary()


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_prm800k(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        read_math500(tmp_path / "nope.jsonl")


def test_problem_and_processbench_field_errors(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"problem": "x", "answer": "1"}\n{"problem": "y"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'answer': missing"):
        read_math500(p)
    assert len(read_problems_jsonl(p, skip_bad=SkipLog())) == 1
    pb = tmp_path / "pb.json"
    pb.write_text(json.dumps([{"problem": "x", "steps": ["a"], "label": 4, "final_answer_correct": True}]))
    with pytest.raises(DataError, match=r"field 'label': entry 1: 4 is not -1 or a step index"):
        read_processbench(pb)


def test_cli_bad_input_exits_2_and_leaves_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(record([([("a", 1)], 0), ([("b", -1)], 0)]))
    bad.write_text(good + "\n" + good[:-5] + "\n" + good + "\n")
    out = tmp_path / "out"
    rc = main(["data", "build", "--kind", "prm", f"input={bad}", f"out_dir={out}", "val_fraction=0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{bad}:2: invalid JSON" in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())
    rc = main(["data", "build", "--kind", "prm", f"input={bad}", f"out_dir={out}", "val_fraction=0", "--skip-bad"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "skipped 1 bad lines (1 x invalid JSON" in captured.out
    # The two good lines are one record twice: the second copy's examples are duplicates, dropped.
    assert len((out / "train.jsonl").read_text().splitlines()) == 2
    assert "duplicates: 2 dropped" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "meta.json", "train.jsonl", "val.jsonl"]


def test_cli_unknown_config_key(capsys):
    assert main(["data", "build", "kindd=hrm"]) == 2
    assert "unknown key(s) kindd" in capsys.readouterr().err


def test_cli_build_orm_on_real_test_file(shared_data, tmp_path, capsys):
    out = tmp_path / "orm"
    inp = shared_data / "prm800k" / "phase1_test.jsonl"
    assert main(["data", "build", "--kind", "orm", f"input={inp}", f"out_dir={out}", "val_fraction=0"]) == 0
    rows = [o for _, o in read_jsonl(out / "train.jsonl")]
    labels = [r["label"] for r in rows]
    # 66 finished solutions; their chosen final answers are almost all right, alternatives less so
    assert len({r["problem_id"] for r in rows}) >= 60
    assert labels.count(1.0) >= 100 and labels.count(0.0) >= 4
    assert all(r["kind"] == "orm" and "# Answer" in r["current_step"] for r in rows)
    assert "orm" in capsys.readouterr().out


def test_stats_and_export_validate_examples_like_the_trainer(tmp_path, capsys):
    p = tmp_path / "ex.jsonl"
    good = {"problem_id": "a", "question": "Q", "previous_steps": [], "current_step": "s", "label": 1.0, "kind": "prm"}
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": 1.5}) + "\n"
                 + json.dumps({**good, "previous_steps": ["x"], "previous_labels": [2]}) + "\n")
    assert main(["data", "stats", str(p)]) == 2
    assert f"{p}:2: field 'label': expected a number in [0, 1]" in capsys.readouterr().err
    assert main(["data", "stats", str(p), "--skip-bad"]) == 0
    assert "previous_labels[0]" in capsys.readouterr().out + capsys.readouterr().err
    assert main(["data", "export-trl", str(p), "--skip-bad", f"out={tmp_path / 't.jsonl'}"]) == 0
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1
