"""`hiprm annotate hnc`: rewrite a tree file with hierarchical node compression (HNC).

    hiprm annotate hnc trees=runs/annotate/x/trees.jsonl out=runs/annotate/x/trees_hnc.jsonl
    hiprm annotate hnc trees=../shared/data/samples/openr_samples_math-aps-tree.jsonl out=runs/hnc/openr.jsonl \\
        seed=0 min_children=4 p=0.5 score=leaf_fraction separator="\\n\\n"

Input: a tree file in either format (hiprm trees or OpenR's MCTS trees); output: OUT, one
compressed hiprm tree per line (written atomically), and `OUT.meta/meta.json` +
`OUT.meta/config.yaml`: a folder named after the output file, so two runs writing different
outputs into one directory never overwrite each other's meta.json. Prints how many nodes were
merged. HNC is training-data augmentation: `split=` names what the input file is, and anything
but `train` is refused (split trees by problem first, as `hiprm data build` does).
`hiprm data build trees=... --kind hrm` applies HNC itself; this command is for inspecting HNC
trees or feeding them elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from hiprm.artifacts import DataError, check_output_file, locked, write_jsonl, write_meta
from hiprm.config import ConfigError, Positive, Probability
from hiprm.hnc import hnc
from hiprm.tree import read_trees, validate

log = logging.getLogger(__name__)


@dataclass
class HNCConfig:
    trees: str = ""
    out: str = ""
    split: Literal["train", "val", "test"] = "train"
    seed: int = 0
    min_children: Positive = 4
    p: Probability = 0.5
    score: Literal["leaf_fraction", "child_mean"] = "leaf_fraction"
    rule: Literal["reference", "node"] = "reference"
    separator: str = "\n\n"
    check: bool = True  # validate every output tree (linear; catches a broken record early)
    quiet: bool = False


@locked(lambda cfg: cfg.out)
def run(cfg: HNCConfig) -> Path:
    start = time.perf_counter()
    if not cfg.trees or not cfg.out:
        raise ConfigError("annotate hnc needs trees=IN and out=OUT")
    if cfg.split != "train":
        raise ConfigError(
            f"split={cfg.split}: HNC augments training trees only; an evaluation split stays as grown"
        )
    out = check_output_file(cfg.out, "out")
    if out.resolve() == Path(cfg.trees).resolve():
        raise ConfigError(f"out={cfg.out} would overwrite the input trees")
    totals = {"trees": 0, "nodes": 0, "merged": 0, "rescored": 0, "skipped_collisions": 0}

    def rows() -> Iterator[dict[str, Any]]:
        for tree in tqdm(read_trees(cfg.trees), desc="hnc", unit="tree", disable=cfg.quiet):
            r = hnc(tree, cfg.seed, cfg.min_children, cfg.p, cfg.separator, cfg.score, cfg.rule)
            if cfg.check:
                validate(r.tree, f"{out} (from {tree.source or tree.problem_id})")
            totals["trees"] += 1
            totals["nodes"] += len(tree.nodes)
            totals["merged"] += len(r.merged)
            totals["rescored"] += len(r.changed)
            totals["skipped_collisions"] += r.skipped
            yield r.tree.to_dict()

    write_jsonl(out, rows())
    if not totals["trees"]:
        raise DataError(cfg.trees, "no trees in the file")
    meta_dir = out.with_name(out.name + ".meta")
    write_meta(meta_dir, asdict(cfg), inputs=[cfg.trees], counts=totals)
    if not cfg.quiet:
        print(f"{cfg.trees}: {totals['trees']} trees, {totals['nodes']} nodes; merged {totals['merged']} nodes "
              f"({totals['rescored']} re-scored, {totals['skipped_collisions']} skipped as sibling collisions) "
              f"-> {out} in {time.perf_counter() - start:.2f}s")  # fmt: skip
    return out
