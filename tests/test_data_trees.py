"""`hiprm data build trees=...` (hiprm.data.trees): MC-score labels on tiny hand-made trees and on
OpenR's sample trees, pairs, HNC examples on the training split only, the split by problem,
duplicates, hard labels, balancing, and that `rm train`'s validator accepts the output."""

from __future__ import annotations

import json
import random

import pytest

from hiprm.artifacts import DataError, read_jsonl, write_jsonl
from hiprm.data.build import BuildConfig, run
from hiprm.data.trees import tree_examples
from hiprm.records import example_from_json
from hiprm.tree import Tree, path_to, read_trees, recompute

OPENR = "/work/shared/data/samples/openr_samples_math-aps-tree.jsonl"


def small_tree(pid: str, rng: random.Random) -> Tree:
    """root -> 2 steps -> 4-5 steps each -> 0-2 leaves each: every depth-1 node can give a child."""
    t = Tree.new(pid, f"What is {pid}?", "1")
    for a in range(2):
        na = t.add(t.root.id, f"{pid} first {a}")
        for b in range(rng.choice([4, 5])):
            nb = t.add(na.id, f"second {b}")
            if rng.random() < 0.3:
                nb.outcome = rng.choice(["correct", "wrong"])
                continue
            for c in range(rng.choice([1, 2])):
                t.add(nb.id, f"third {c}", outcome=rng.choice(["correct", "wrong"]))
    recompute(t)
    return t


@pytest.fixture
def forest(tmp_path):
    rng = random.Random(0)
    trees = [small_tree(f"p{k}", rng) for k in range(12)]
    path = tmp_path / "trees.jsonl"
    write_jsonl(path, [t.to_dict() for t in trees])
    return path, {t.problem_id: t for t in trees}


def rows(path):
    return [example_from_json(o, path, line).to_dict() for line, o in read_jsonl(path)]


def test_prm_labels_are_mc_scores_conditioned_on_the_path(forest, tmp_path):
    path, trees = forest
    out = run(
        BuildConfig(kind="prm", trees=str(path), out_dir=str(tmp_path / "prm"), val_fraction=0.25, quiet=True)
    )
    got = rows(out / "train.jsonl") + rows(out / "val.jsonl")
    assert len(got) == sum(len(t.nodes) - 1 for t in trees.values())
    for r in got:
        file_line, nid = r["source"].split("#")
        assert file_line.startswith(str(path) + ":")
        t = trees[r["problem_id"]]
        node = t.node(nid)
        assert r["label"] == node.mc and r["kind"] == "prm" and r["current_step"] == node.step
        assert r["previous_steps"] == [n.step for n in path_to(t, nid)[1:-1]]
        assert r["previous_labels"] == [n.mc for n in path_to(t, nid)[1:-1]]  # what export-trl writes


def test_hrm_split_by_problem_and_hnc_on_train_only(forest, tmp_path, capsys):
    path, trees = forest
    common = dict(kind="hrm", trees=str(path), val_fraction=0.25, seed=1, hnc_p=1.0, pairs="all")
    with_hnc = run(BuildConfig(out_dir=str(tmp_path / "a"), **common))
    printed = capsys.readouterr().out
    without = run(BuildConfig(out_dir=str(tmp_path / "b"), hnc=False, **common))
    train, val = rows(with_hnc / "train.jsonl"), rows(with_hnc / "val.jsonl")
    assert not {r["problem_id"] for r in train} & {r["problem_id"] for r in val}
    assert len({r["problem_id"] for r in val}) == 3
    # Validation is the same with or without HNC; training gains HNC's re-scored nodes.
    assert val == rows(without / "val.jsonl")
    base = rows(without / "train.jsonl")
    extra = [r for r in train if r not in base]
    assert extra and len(train) == len(base) + len(extra)
    meta = json.loads((with_hnc / "meta.json").read_text())
    assert meta["trees"]["val"].get("hnc_moves", 0) == 0 and meta["trees"]["train"]["hnc_moves"] > 0
    assert "HRM/PRM example ratio" in printed
    # Each HNC example is a node whose score HNC changed: same input as a PRM example, new label.
    prm = {
        (r["problem_id"], tuple(r["previous_steps"]), r["current_step"]): r["label"]
        for r in base
        if r["kind"] == "prm"
    }
    for r in extra:
        key = (r["problem_id"], tuple(r["previous_steps"]), r["current_step"])
        assert r["kind"] == "prm" and key in prm and prm[key] != r["label"]


def test_paper_rule_is_prm_plus_hnc(forest, tmp_path):
    """The default `pairs=hnc` (the paper, Sec. 4.2): HRM data from trees = the PRM examples + what
    HNC adds on the training split (merged nodes as hrm_pair, re-scored nodes as prm); no
    consecutive pairs; validation = the PRM validation examples."""
    path, _ = forest
    common = dict(trees=str(path), val_fraction=0.25, seed=1, hnc_p=1.0, quiet=True)
    prm = run(BuildConfig(kind="prm", out_dir=str(tmp_path / "prm"), **common))
    hrm = run(BuildConfig(kind="hrm", out_dir=str(tmp_path / "hrm"), **common))
    allp = run(BuildConfig(kind="hrm", out_dir=str(tmp_path / "all"), pairs="all", **common))
    assert rows(hrm / "val.jsonl") == rows(prm / "val.jsonl")
    base, train = rows(prm / "train.jsonl"), rows(hrm / "train.jsonl")
    extra = [r for r in train if r not in base]
    assert len(train) == len(base) + len(extra)  # every PRM example is there (per problem: PRM, then HNC)
    counts = json.loads((hrm / "meta.json").read_text())["trees"]["train"]
    assert len(extra) == counts["hnc_merged"] + counts["hnc_rescored"] > 0
    assert {r["kind"] for r in extra} <= {"hrm_pair", "prm"}
    merged = [r for r in extra if r["kind"] == "hrm_pair"]
    assert len(merged) == counts["hnc_merged"] > 0  # no pair example to duplicate them any more
    assert len(rows(allp / "train.jsonl")) > len(train)


def test_pairs_are_labelled_by_the_child():
    t = small_tree("q", random.Random(3))
    ex = tree_examples(t, "f:1", "hrm", "val", with_hnc=False, pairs="all")
    pairs = [e for e in ex if e["kind"] == "hrm_pair"]
    assert len(pairs) == sum(n.depth >= 2 for n in t.nodes)
    for e in pairs:
        child = t.node(e["source"].split("#")[1])
        parent = t.node(child.parent)
        assert e["current_step"] == parent.step + "\n\n" + child.step and e["label"] == child.mc
        assert e["previous_steps"] == [n.step for n in path_to(t, parent.id)[1:-1]]
    with pytest.raises(ValueError, match="training split only"):
        tree_examples(t, "f:1", "hrm", "val", with_hnc=True)


def test_merged_duplicates_of_pairs_are_dropped():
    # root -> n1 -> {n2, a, b, c}: the merged "n1\n\nn2" is exactly n2's pair example.
    t = Tree.new("d", "q", "1")
    n1 = t.add(t.root.id, "n1")
    for s, o in [("n2", "correct"), ("a", "wrong"), ("b", "wrong"), ("c", "correct")]:
        t.add(n1.id, s, outcome=o)
    recompute(t)
    ex = tree_examples(t, "f:1", "hrm", "train", hnc_p=1.0)
    keys = [(tuple(e["previous_steps"]), e["current_step"], e["label"]) for e in ex]
    assert len(keys) == len(set(keys))
    assert [e["current_step"] for e in ex if e["kind"] == "hrm_pair"].count("n1\n\nn2") == 1
    assert [(e["current_step"], round(e["label"], 3)) for e in ex if e["current_step"] == "n1"] == [
        ("n1", 0.5),
        ("n1", 0.333),
    ]


def test_hard_labels_and_balancing(forest, tmp_path):
    path, trees = forest
    hard = run(BuildConfig(kind="prm", trees=str(path), out_dir=str(tmp_path / "h"), val_fraction=0, quiet=True,
                           label_rule="hard", hard_threshold=0.5))  # fmt: skip
    for r in rows(hard / "train.jsonl"):
        assert r["label"] == (
            1.0 if trees[r["problem_id"]].node(r["source"].split("#")[1]).mc >= 0.5 else 0.0
        )
    cfg = dict(kind="prm", trees=str(path), val_fraction=0, quiet=True, balance=True)
    a = rows(run(BuildConfig(out_dir=str(tmp_path / "b1"), **cfg)) / "train.jsonl")
    b = rows(run(BuildConfig(out_dir=str(tmp_path / "b2"), **cfg)) / "train.jsonl")
    assert a == b and 0 < len(a) < sum(len(t.nodes) - 1 for t in trees.values())


def test_openr_sample_trees(tmp_path, capsys):
    out = run(BuildConfig(kind="hrm", trees=OPENR, out_dir=str(tmp_path / "o"), val_fraction=0.34))
    printed = capsys.readouterr().out
    assert "HRM/PRM example ratio" in printed
    trees = {t.problem_id: t for t in read_trees(OPENR)}
    train, val = rows(out / "train.jsonl"), rows(out / "val.jsonl")
    assert train and val and not {r["problem_id"] for r in train} & {r["problem_id"] for r in val}
    for r in val:  # val: only nodes of the original trees, labelled with their given MC-score
        node = trees[r["problem_id"]].node(r["source"].split("#")[1])
        assert r["label"] == node.mc
    assert all(0.0 <= r["label"] <= 1.0 for r in train + val)


def test_orm_from_trees_is_an_error(forest, tmp_path):
    path, _ = forest
    with pytest.raises(DataError, match="not orm"):
        run(BuildConfig(kind="orm", trees=str(path), out_dir=str(tmp_path / "x")))
