"""The README is a guide whose CPU recipes run as written, and the docs site builds strictly.

`test_the_readme_recipes_run_as_written` takes every ```bash block of the README's "Recipes"
section, in order, and runs it with bash from a fresh folder laid out like a checkout (the shared
data folder beside it), with this venv's `hiprm` first on PATH: the commands a user copies. A
block whose paragraph says "not run by the README test" (the server, which keeps listening) is
left out. Each block must exit 0 and leave what the README says it makes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def recipe_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Recipes", 1)[1].split("\n## ", 1)[0]
    blocks, last = [], 0
    for m in re.finditer(r"```bash\n(.*?)```", section, re.S):
        before = section[last : m.start()]
        last = m.end()
        if "not run by the README test" not in before:
            blocks.append(m.group(1))
    return blocks


def test_the_readme_is_a_guide_of_at_most_250_lines_and_its_links_resolve():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    assert lines[3:5] == [
        "bash scripts/install.sh && .venv/bin/hiprm quickstart",
        'bash scripts/install.sh --with-llama-server --with-vllm && .venv/bin/python -m pytest -q -m "not gpu"',
    ]
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    assert len(recipe_blocks()) >= 7


def test_the_docs_build_strictly(tmp_path):
    """`mkdocs build --strict`: every page in the nav, every link and anchor resolves, and the
    config reference is generated from the commands' field help."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "hiprm rm train" in reference and "optim.learning_rate" in reference


@pytest.mark.slow
def test_the_readme_recipes_run_as_written(tmp_path, shared_data):
    repo = tmp_path / "checkout"
    repo.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    for block in recipe_blocks():
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert proc.returncode == 0, f"this README block failed ({proc.returncode}):\n{block}\n{proc.stderr[-3000:]}"
    runs = repo / "runs"
    for made in ("data/prm/train.jsonl", "data/hrm/val.jsonl", "rm/hrm/model/config.json", "rm_eval/rm_eval.json",
                 "eval/table.md", "annotate/trees.jsonl", "annotate/trees_hnc.jsonl", "data/tree_hrm/train.jsonl",
                 "selftrain/model/config.json"):  # fmt: skip
        assert (runs / made).is_file(), f"the README's recipes did not make runs/{made}"
    import json

    (scored,) = [json.loads(x) for x in (runs / "scored.jsonl").read_text().splitlines()]
    assert len(scored["step_rewards"]) == 2 and all(0 <= r <= 1 for r in scored["step_rewards"])
