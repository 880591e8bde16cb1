"""Bad settings and bad inputs end in one line and exit 2, before any work: never a Python
traceback, a hang, or a run that silently does nothing (issue 13 §4).

Each case runs the real `hiprm` entry point (`cli.main`) in this process, so an exception other
than the three the CLI turns into messages fails the test with its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hiprm import cli
from hiprm.config import ConfigError, load_config
from hiprm.data.build import BuildConfig
from tests.rm_fixtures import make_tiny_rm

SMALL_PRM800K_LINES = 3


@pytest.fixture()
def place(tmp_path: Path, shared_data: Path, tiny_tokenizer) -> dict[str, str]:
    """Files the cases refer to by {name}."""
    lines = (shared_data / "prm800k" / "phase1_test.jsonl").read_text(encoding="utf-8").splitlines()
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(lines[:SMALL_PRM800K_LINES]) + "\n", encoding="utf-8")
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "dup.yaml").write_text("kind: hrm\nseed: 1\nkind: prm\n", encoding="utf-8")
    (tmp_path / "latin1.yaml").write_bytes("kind: hrm  # caf\xe9\n".encode("latin-1"))
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{", encoding="utf-8")
    (tmp_path / "problems_empty.jsonl").write_text("", encoding="utf-8")
    no_steps = tmp_path / "no_steps.jsonl"
    import json

    rec = json.loads(lines[0])
    rec["label"]["steps"] = []
    no_steps.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    good = {"problem_id": "p", "question": "q", "previous_steps": [], "current_step": "s", "label": 1.0, "kind": "prm"}
    (tmp_path / "good.jsonl").write_text(json.dumps(good) + "\n", encoding="utf-8")
    examples = tmp_path / "bad_ratings.jsonl"
    examples.write_text(json.dumps({"problem_id": "p", "question": "q", "previous_steps": [], "current_step": "s",
                                    "label": 1.0, "kind": "prm", "ratings": [7]}) + "\n", encoding="utf-8")  # fmt: skip
    (tmp_path / "problems.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n", encoding="utf-8")
    (tmp_path / "script.json").write_text(json.dumps({"default": ["# Answer\n2\n# END!"]}), encoding="utf-8")
    (tmp_path / "solutions.jsonl").write_text(json.dumps({"question": "q", "steps": ["a"]}) + "\n", encoding="utf-8")
    (tmp_path / "no_texts.json").write_text(json.dumps({"rules": {"1+1": []}}), encoding="utf-8")
    make_tiny_rm(tmp_path / "rm", tiny_tokenizer)
    return {"tmp": str(tmp_path), "small": str(small)}


# (argv with {placeholders}, words the one-line error must contain)
CASES = [
    ("data build input={small} out_dir={tmp}/o val_fraction=1.0", "val_fraction"),
    ("data build input={small} out_dir={tmp}/o val_fraction=nan", "val_fraction"),
    ("data build input={small} out_dir={tmp}/o val_fraction=-0.1", "val_fraction"),
    ("data build input={small} out_dir={tmp}/o max_problems=-1", "max_problems"),
    ("data build input={small} out_dir={tmp}/o max_problems=0", "max_problems"),
    ("data build {tmp}/dup.yaml input={small} out_dir={tmp}/o", "appears twice"),
    ("data build {tmp}/latin1.yaml input={small} out_dir={tmp}/o", "UTF-8"),
    ("data build {tmp}/missing.yaml", "not found"),
    ("data build input={small} out_dir={tmp}/o seed=" + "9" * 5000, "seed"),
    ("data build input={small} out_dir={tmp}/o skip_finish_reasons=[a", "skip_finish_reasons"),
    ("data build input={tmp}/no_steps.jsonl out_dir={tmp}/o", "label.steps"),
    ("data build input={tmp}/emptydir out_dir={tmp}/o", "directory"),
    ("data stats {tmp}/emptydir", "train.jsonl"),
    ("data stats {tmp}/bad_ratings.jsonl", "ratings[0]"),
    ("eval out_dir={tmp}/e subsamples=0", "subsamples"),
    ("eval out_dir={tmp}/e subsamples=-2", "subsamples"),
    ("eval out_dir={tmp}/e max_solution_tokens=0", "max_solution_tokens"),
    ("eval out_dir={tmp}/e max_steps=-1", "max_steps"),
    ("eval out_dir={tmp}/e rm.device=tpu", "rm.device"),
    ("eval out_dir={tmp}/e top_p=1.5", "top_p"),
    ("eval out_dir={tmp}/e n_values=[0]", "n_values"),
    ("eval out_dir={tmp}/e dataset={tmp}/problems_empty.jsonl policy.backend=scripted", "no problems"),
    ("rm train output_dir={tmp}/t optim.learning_rate=-1", "learning_rate"),
    ("rm train output_dir={tmp}/t optim.scheduler=bogus", "scheduler"),
    ("rm train output_dir={tmp}/t optim.batch_size=0", "batch_size"),
    ("rm train output_dir={tmp}/t data.train={tmp}/good.jsonl data.val=null model.name={tmp}/no_such_model",
     "no_such_model"),
    ("rm score model={tmp}/broken_model input={small} output={tmp}/s.jsonl", "config.json"),
    ("rm score model={tmp}/broken_model input={small} output={tmp}/s.jsonl device=tpu", "device"),
    ("rm score model={tmp}/broken_model input={small} output={tmp}/s.jsonl chunk_size=0", "chunk_size"),
    ("rm eval out={tmp}/r model={tmp}/broken_model bootstrap=-1", "bootstrap"),
    ("annotate out_dir={tmp}/a children=0", "children"),
    ("annotate out_dir={tmp}/a max_depth=0", "max_depth"),
    ("annotate out_dir={tmp}/a dataset={tmp}/problems_empty.jsonl policy.backend=scripted", "no problems"),
    ("selftrain out_dir={tmp}/st min_mc=2", "min_mc"),
    ("selftrain out_dir={tmp}/st val_fraction=1", "val_fraction"),
    ("serve model={tmp}/broken_model device=tpu", "device"),
    ("quickstart out_dir={tmp}/q problems=0", "problems"),
    # Output places where nothing can be written: refused before the work, naming the place.
    ("rm score model={tmp}/rm input={tmp}/solutions.jsonl output=/proc/s.jsonl", "/proc"),
    ("rm score model={tmp}/rm input={tmp}/solutions.jsonl output={tmp}/afile/s.jsonl", "afile"),
    ("eval out_dir={tmp}/e dataset={tmp}/problems.jsonl policy.backend=scripted policy.script={tmp}/no_texts.json",
     "no texts"),
    ("eval out_dir=/proc/e dataset={tmp}/problems.jsonl policy.backend=scripted policy.script={tmp}/script.json",
     "/proc/e"),
    ("eval out_dir={tmp}/afile dataset={tmp}/problems.jsonl policy.backend=scripted policy.script={tmp}/script.json",
     "afile"),
    ("annotate out_dir=/proc/a dataset={tmp}/problems.jsonl policy.backend=scripted policy.script={tmp}/script.json",
     "/proc/a"),
]


@pytest.mark.parametrize(("argv", "says"), CASES, ids=[c[0].split(" {")[0][:60] for c in CASES])
def test_a_bad_setting_is_one_line_and_exit_2(argv, says, place, capsys, monkeypatch):
    monkeypatch.chdir(place["tmp"])
    words = argv.format(**place).split(" ")
    rc = cli.main(words)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, f"exit {rc}; stderr: {err[-3:]}"
    assert err and err[-1].startswith("hiprm "), err
    assert says in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)


def test_ranges_show_in_help_and_defaults_pass_them():
    """The range is part of the type in `--help`, and every stage's defaults satisfy their own ranges."""
    help_text = cli.command_help("data build")
    assert "val_fraction         float >= 0 and < 1 = 0.05" in help_text
    for name in cli.COMMANDS:
        cfg, _ = cli._resolve(name, [])
        assert cfg is not None


def test_in_range_values_still_load():
    cfg = load_config(BuildConfig, None, ["val_fraction=0", "max_problems=1", "skip_finish_reasons=[a, b]"])
    assert (cfg.val_fraction, cfg.max_problems, cfg.skip_finish_reasons) == (0.0, 1, ["a", "b"])
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(BuildConfig, None, ["val_fraction=inf"])


@pytest.mark.parametrize("command", ["data build input={fifo} out_dir={tmp}/o", "data stats {fifo}",
                                     "data build {fifo_yaml}", "rm score model={tmp}/rm input={fifo} output={tmp}/s.jsonl"])  # fmt: skip
def test_a_named_pipe_is_refused_not_read_forever(command, tmp_path, tiny_tokenizer):
    fifo = tmp_path / "pipe.jsonl"
    fifo_yaml = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    os.mkfifo(fifo_yaml)
    if "rm score" in command:
        make_tiny_rm(tmp_path / "rm", tiny_tokenizer)
    words = command.format(fifo=fifo, fifo_yaml=fifo_yaml, tmp=tmp_path).split(" ")
    proc = subprocess.run([sys.executable, "-m", "hiprm.cli", *words], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["annotate", "stats", "{trees}", "out_dir={tmp}/afile"], "afile is in the way"),
        (["annotate", "stats", "{trees}", "out_dir={tmp}/loop/x"], "Too many levels of symbolic links"),
        (["annotate", "hnc", "trees={trees}", "out={tmp}"], "is a folder; give the path of a file"),
        (["annotate", "hnc", "trees={trees}", "out={tmp}/afile/x.jsonl"], "afile is in the way"),
        (["annotate", "hnc", "trees={trees}", "out={tmp}/loop/x.jsonl"], "loop is in the way"),
        (["data", "build", "--kind", "prm", "trees={trees}", "out_dir={tmp}/afile/x/y"], "afile is in the way"),
        (["data", "build", "--kind", "prm", "trees={trees}", "out_dir={tmp}/loop"], "cannot create the output folder"),
        (["data", "export-trl", "{tmp}/afile", "out={tmp}"], "is a folder; give the path of a file"),
    ],
)
def test_an_output_path_that_cannot_be_one_is_one_line_and_leaves_nothing(args, fragment, tmp_path, shared_data,
                                                                          capsys):  # fmt: skip
    """A file where a folder must be, a symbolic link to itself, a folder where a file must be."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    trees = shared_data / "samples" / "openr_samples_math-aps-tree.jsonl"
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert cli.main([a.format(tmp=tmp_path, trees=trees) for a in args]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("hiprm ")]
    assert len(err) == 1 and fragment in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("command", [["data", "export-trl"], ["data", "stats"]])
def test_an_empty_example_file_is_an_error_not_an_empty_result(command, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    capsys.readouterr()
    assert cli.main([*command, str(empty)]) == 2
    assert "no examples" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]
