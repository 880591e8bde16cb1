"""The paper's Fig. 4 for self-training runs: log-KL (top) and LM loss (bottom) against optimizer
steps, one column per lambda. Input: {lambda: metrics.jsonl of its run}; output: a PNG (Agg).

    plot_fig4({0.001: Path("runs/st/lam_0.001/metrics.jsonl"), 0.5: ...}, Path("runs/st/fig4.png"))
"""

from __future__ import annotations

import math
from pathlib import Path

from hiprm.artifacts import atomic_write
from hiprm.training import read_metrics


def curves(metrics: Path, eps: float = 1e-6) -> tuple[list[int], list[float], list[float]]:
    """(steps, log_kl, lm_loss) from the training rows of one metrics.jsonl."""
    steps, log_kl, lm = [], [], []
    for row in read_metrics(metrics):
        if "lm_loss" in row and "kl" in row:
            steps.append(int(row["step"]))
            log_kl.append(row.get("log_kl", math.log(max(row["kl"], 0.0) + eps)))
            lm.append(row["lm_loss"])
    return steps, log_kl, lm


def plot_fig4(runs: dict[float, Path], png_path: Path, eps: float = 1e-6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lams = sorted(runs)
    fig, axes = plt.subplots(2, len(lams), figsize=(3.2 * len(lams) + 0.8, 5.2), squeeze=False)
    for j, lam in enumerate(lams):
        steps, log_kl, lm = curves(runs[lam], eps)
        top, bottom = axes[0][j], axes[1][j]
        top.plot(steps, log_kl, color="tab:red")
        bottom.plot(steps, lm, color="tab:blue")
        top.set_title(f"λ = {lam:g}")
        bottom.set_xlabel("optimizer step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("log KL")
    axes[1][0].set_ylabel("LM loss")
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return png_path
