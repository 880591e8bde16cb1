"""Every command that reads trees refuses a spoilt tree file the same way: exit 2, one line that
names the file, the line and the field, and no output left behind.

The corpus starts from two real trees, an OpenR MCTS tree (`../shared/data/samples`) and a hiprm
tree grown by the record's own API, and spoils one field at a time: the wrong JSON type, a number
outside [0, 1], NaN, a boolean or a float where a count belongs, the same problem twice. The
commands: `annotate stats`, `annotate hnc`, `data build trees=` (PRM and HRM) and `selftrain`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hiprm.cli import main
from hiprm.tree import Tree, read_trees, recompute


def _hiprm_tree() -> dict:
    t = Tree.new("p1", "What is 1 + 1?", "2")
    a = t.add(t.root.id, "1 + 1 = 2.")
    t.add(a.id, "# Answer\n\n2", outcome="correct", answer="2")
    t.add(a.id, "# Answer\n\n3", outcome="wrong", answer="3")
    t.add(t.root.id, "# Answer\n\n2", outcome="correct", answer="2")
    recompute(t)
    return t.to_dict()


def _openr_tree(shared_data: Path) -> dict:
    line = (shared_data / "samples" / "openr_samples_math-aps-tree.jsonl").read_text().splitlines()[0]
    return json.loads(line)


def _set(path: str, value) -> Callable[[dict], None]:
    """A spoiler that sets the field at `path` (dots and [i]) to `value`."""

    def spoil(d: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return spoil


NAN = float("nan")

# (name, format, spoiler, what the one line must say)
CASES = [
    ("openr mc_value string", "openr", _set("reasoning_steps.children[0].mc_value", "0.5"), "mc_value"),
    ("openr mc_value null", "openr", _set("reasoning_steps.children[0].mc_value", None), "mc_value"),
    ("openr mc_value list", "openr", _set("reasoning_steps.children[0].mc_value", [0.5]), "mc_value"),
    ("openr mc_value nan", "openr", _set("reasoning_steps.children[0].mc_value", NAN), "invalid JSON"),
    ("openr mc_value above 1", "openr", _set("reasoning_steps.children[0].mc_value", 1.5), "mc_value"),
    ("openr mc_value negative", "openr", _set("reasoning_steps.mc_value", -0.1), "mc_value"),
    ("openr mc_value boolean", "openr", _set("reasoning_steps.children[0].mc_value", True), "mc_value"),
    ("openr mc_value missing", "openr", lambda d: d["reasoning_steps"]["children"][0].pop("mc_value"), "children[0]"),
    ("openr children int", "openr", _set("reasoning_steps.children[0].children", 3), "children"),
    ("openr children dict", "openr", _set("reasoning_steps.children", {"a": 1}), "children"),
    ("openr children string", "openr", _set("reasoning_steps.children", "x"), "children"),
    ("openr child not an object", "openr", _set("reasoning_steps.children[0]", "step"), "children[0]"),
    ("openr text int", "openr", _set("reasoning_steps.children[0].text", 7), "text"),
    ("openr question int", "openr", _set("question", 7), "question"),
    ("openr question empty", "openr", _set("question", ""), "question"),
    ("openr final_answer list", "openr", _set("final_answer", ["2"]), "final_answer"),
    ("openr reasoning_steps missing", "openr", lambda d: d.pop("reasoning_steps"), "nodes"),
    ("hiprm mc nan", "hiprm", _set("nodes[1].mc", NAN), "invalid JSON"),
    ("hiprm mc negative", "hiprm", _set("nodes[1].mc", -0.5), "nodes[1].mc"),
    ("hiprm mc 7", "hiprm", _set("nodes[1].mc", 7.0), "nodes[1].mc"),
    ("hiprm mc string", "hiprm", _set("nodes[1].mc", "0.5"), "nodes[1].mc"),
    ("hiprm mc boolean", "hiprm", _set("nodes[1].mc", True), "nodes[1].mc"),
    ("hiprm count boolean", "hiprm", _set("nodes[2].count", True), "nodes[2].count"),
    ("hiprm count float", "hiprm", _set("nodes[2].count", 2.0), "nodes[2].count"),
    ("hiprm count string", "hiprm", _set("nodes[2].count", "2"), "nodes[2].count"),
    ("hiprm count zero", "hiprm", _set("nodes[2].count", 0), "count must be >= 1"),
    ("hiprm depth float", "hiprm", _set("nodes[1].depth", 1.0), "nodes[1].depth"),
    ("hiprm depth boolean", "hiprm", _set("nodes[1].depth", True), "nodes[1].depth"),
    ("hiprm leaves float", "hiprm", _set("nodes[0].leaves", 3.0), "nodes[0].leaves"),
    ("hiprm step int", "hiprm", _set("nodes[1].step", 5), "nodes[1].step"),
    ("hiprm id missing", "hiprm", lambda d: d["nodes"][1].pop("id"), "nodes[1].id"),
    ("hiprm parent int", "hiprm", _set("nodes[1].parent", 3), "nodes[1].parent"),
    ("hiprm outcome int", "hiprm", _set("nodes[2].outcome", 1), "nodes[2].outcome"),
    ("hiprm outcome unknown", "hiprm", _set("nodes[2].outcome", "right"), "outcome 'right'"),
    ("hiprm nodes dict", "hiprm", _set("nodes", {"0": {}}), "nodes"),
    ("hiprm nodes empty", "hiprm", _set("nodes", []), "nodes"),
    ("hiprm node not an object", "hiprm", _set("nodes[1]", "x"), "nodes[1]"),
    ("hiprm mc_from unknown", "hiprm", _set("mc_from", "votes"), "mc_from"),
    ("hiprm cost list", "hiprm", _set("cost", [1]), "cost"),
    ("hiprm merged_from string", "hiprm", _set("nodes[1].merged_from", "ab"), "merged_from"),
    ("hiprm answer object", "hiprm", _set("answer", {"x": 1}), "answer"),
    ("hiprm counts do not add up", "hiprm", _set("nodes[0].correct", 3), "do not add up"),
    ("hiprm not an object", "hiprm", lambda d: d.clear(), "missing"),
]
DUPLICATES = [("openr same problem twice", "openr"), ("hiprm same problem twice", "hiprm")]


def _commands(trees: Path, out: Path, tiny_lm_dir: Path) -> dict[str, tuple[list[str], Path]]:
    return {
        "annotate stats": (["annotate", "stats", str(trees), f"out_dir={out}"], out),
        "annotate hnc": (["annotate", "hnc", f"trees={trees}", f"out={out / 'hnc.jsonl'}"], out),
        "data build prm": (["data", "build", "--kind", "prm", f"trees={trees}", f"out_dir={out}", "quiet=true"], out),
        "data build hrm": (["data", "build", "--kind", "hrm", f"trees={trees}", f"out_dir={out}", "quiet=true"], out),
        "selftrain": (["selftrain", f"trees={trees}", f"model={tiny_lm_dir}", f"out_dir={out}"], out),
    }


def _write_file(tmp_path: Path, fmt: str, good: dict, spoil: Callable[[dict], None] | None, twice: bool) -> Path:
    bad = copy.deepcopy(good)
    if spoil is not None:
        spoil(bad)
    lines = [json.dumps(bad)] * (2 if twice else 1)
    if not twice:  # the spoilt tree is the second line: the message must name line 2
        other = copy.deepcopy(good)
        other["question"] = "What is 2 + 2?"
        if fmt == "hiprm":
            other["problem_id"] = "p2"
        lines = [json.dumps(other), *lines]
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _expect_refusal(args: list[str], out: Path, trees: Path, line: int, fragment: str, capsys) -> None:
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}: {err}"
    lines = [x for x in err.splitlines() if not x.startswith(("hnc:", "\r"))]  # less the progress bar
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{trees}:{line}:" in lines[0] and fragment in lines[0], err
    assert not out.exists() or not any(out.iterdir()), f"{sorted(p.name for p in out.iterdir())} left in {out}"


@pytest.fixture(scope="module")
def good_trees(shared_data) -> dict[str, dict]:
    return {"openr": _openr_tree(shared_data), "hiprm": _hiprm_tree()}


def test_the_unspoilt_trees_are_read(good_trees, tmp_path):
    for fmt, good in good_trees.items():
        trees = list(read_trees(_write_file(tmp_path, fmt, good, None, twice=False)))
        assert len(trees) == 2


@pytest.mark.parametrize("command", ["annotate stats", "annotate hnc", "data build prm", "data build hrm", "selftrain"])
@pytest.mark.parametrize(("name", "fmt", "spoil", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_a_spoilt_tree_is_one_line_naming_file_line_and_field(
    command, name, fmt, spoil, fragment, good_trees, tmp_path, tiny_lm_dir, capsys
):
    trees = _write_file(tmp_path, fmt, good_trees[fmt], spoil, twice=False)
    args, out = _commands(trees, tmp_path / "out", tiny_lm_dir)[command]
    _expect_refusal(args, out, trees, 2, fragment, capsys)


@pytest.mark.parametrize("command", ["annotate stats", "annotate hnc", "data build prm", "data build hrm", "selftrain"])
@pytest.mark.parametrize(("name", "fmt"), DUPLICATES, ids=[c[0] for c in DUPLICATES])
def test_the_same_problem_twice_is_an_error_naming_both_lines(
    command, name, fmt, good_trees, tmp_path, tiny_lm_dir, capsys
):
    trees = _write_file(tmp_path, fmt, good_trees[fmt], None, twice=True)
    args, out = _commands(trees, tmp_path / "out", tiny_lm_dir)[command]
    _expect_refusal(args, out, trees, 2, "again (first at line 1)", capsys)
