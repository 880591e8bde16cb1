"""`hiprm annotate stats TREES.jsonl`: what a tree file holds, as text, JSON and an MC-score histogram.

    hiprm annotate stats runs/annotate/trees.jsonl     # prints; writes runs/annotate/trees.stats.json + trees.mc.png
    hiprm annotate stats OTHER.jsonl out_dir=runs/stats  # outputs go to out_dir (never beside a shared input)

Problems, nodes, leaves by outcome, depth and branching histograms, the MC-score histogram
(non-root nodes), the share of nodes with 0 < MC < 1 (the nodes that carry a graded signal), and
generated tokens per node (from the trees' cost blocks; the nodes' own step tokens beside them).
Reads hiprm trees and OpenR tree files alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError, locked, prepare_out_dir, write_files
from hiprm.tree import read_trees, tree_stats


@dataclass
class TreeStatsConfig:
    """`path`: a trees JSONL file. `out_dir`: where `<stem>.stats.json` and `<stem>.mc.png` go
    (default: beside the file when it is in a writable run folder, else runs/annotate_stats).
    `plot`: write the PNG."""

    path: str = ""
    out_dir: str = ""
    plot: bool = True


def format_tree_stats(s: dict[str, Any], title: str = "") -> str:
    bins = s["mc_histogram"]
    lines = [title] if title else []
    lines += [
        f"problems {s['problems']}, nodes {s['nodes']} ({s['non_root_nodes']} below the roots), leaves {s['leaves']}",
        "leaf outcomes: " + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()),
        "depth: " + ", ".join(f"{k}:{v}" for k, v in s["depth"].items()),
        "branching (children: nodes): " + ", ".join(f"{k}:{v}" for k, v in s["branching"].items()),
        "MC-score histogram (10 bins over [0, 1]): " + " ".join(str(b) for b in bins),
        f"nodes with 0 < MC < 1: {s['share_strictly_between']:.1%} of {s['scored_nodes']} scored",
        (
            f"generated tokens {s['generated_tokens']} ({s['step_tokens']} in the nodes' steps), "
            f"{s['tokens_per_node']:.1f} per node"
            if s["generated_tokens"] is not None
            else "generated tokens: not recorded (trees without a cost block)"
        ),
    ]
    return "\n".join(lines)


def plot_mc_histogram(s: dict[str, Any], title: str = "") -> bytes:
    """The MC-score histogram as PNG bytes (written by the caller, together with the JSON)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    edges = [i / 10 for i in range(10)]
    ax.bar(edges, s["mc_histogram"], width=0.1, align="edge", edgecolor="black", color="#4c72b0")
    ax.set_xlabel("MC-score (correct leaves / leaves below the node)")
    ax.set_ylabel("nodes")
    ax.set_xlim(0, 1)
    ax.set_title(
        title or f"{s['scored_nodes']} nodes; {s['share_strictly_between']:.0%} strictly between 0 and 1",
        fontsize=9,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def _default_out(path: Path) -> Path:
    # Beside a tree file that a hiprm run wrote (its folder has meta.json); never into a data folder.
    if (path.parent / "meta.json").is_file():
        return path.parent
    return Path("runs/annotate_stats")


def stats_path(cfg: TreeStatsConfig) -> Path | None:
    """`<stem>.stats.json` in the output folder (the PNG goes beside it); None without a path."""
    if not cfg.path:
        return None
    path = Path(cfg.path)
    folder = Path(cfg.out_dir) if cfg.out_dir else _default_out(path)
    return folder / f"{path.stem}.stats.json"


@locked(stats_path)
def run(cfg: TreeStatsConfig) -> Path:
    if not cfg.path:
        raise DataError("<none>", "give a trees file: hiprm annotate stats TREES.jsonl")
    path = Path(cfg.path)
    trees = list(read_trees(path))
    if not trees:
        raise DataError(path, "no trees in this file")
    s = tree_stats(trees)
    print(format_tree_stats(s, title=f"{path}:"))
    out = stats_path(cfg)
    assert out is not None
    png = out.with_name(f"{path.stem}.mc.png") if cfg.plot else None
    write_stats(s, out, png)
    if png is not None:
        print(f"MC-score histogram: {png}")
    return out


def write_stats(s: dict[str, Any], json_path: Path, png_path: Path | None) -> None:
    """The statistics as JSON and (unless `png_path` is None) the histogram PNG, both or
    neither: a full disk or a bad folder leaves the previous pair as it was."""
    prepare_out_dir(json_path.parent)
    files = {json_path: (json.dumps(s, indent=2, ensure_ascii=False) + "\n").encode()}
    if png_path is not None:
        files[png_path] = plot_mc_histogram(s)
    write_files(files)
