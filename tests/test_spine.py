"""The package spine: config loading and overrides, atomic writes, meta.json, the CLI's argument
conventions, and the rule that imports only go down the stage order."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hiprm.artifacts import atomic_write, read_jsonl, write_jsonl, write_meta
from hiprm.cli import COMMANDS, _split_args, main
from hiprm.config import ConfigError, load_config

SRC = Path(__file__).resolve().parents[1] / "src" / "hiprm"


@dataclass
class Inner:
    lr: float = 1e-5
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    items: list[str] = field(default_factory=lambda: ["a"])
    maybe: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_config_layers_and_types(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("name: from_yaml\ninner:\n  steps: 20\n")
    cfg = load_config(Outer, y, ["inner.lr=3e-4", "flag=true", "items=[b, c]", "maybe=null"])
    assert cfg == Outer("from_yaml", True, ["b", "c"], None, Inner(3e-4, 20))
    assert load_config(Outer, None, ["inner.lr=1"]).inner.lr == 1.0  # int -> float is lossless


@pytest.mark.parametrize(
    "override, message",
    [
        ("nmae=3", "unknown key(s) nmae"),
        ("inner.stpes=3", "unknown key(s) inner.stpes"),
        ("inner.steps=many", "inner.steps: expected an integer"),
        ("flag=maybe", "flag: expected true/false"),
        ("noequals", "not key=value"),
    ],
)
def test_config_errors_are_specific(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(Outer, None, [override])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"a": 1}])
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert [o for _, o in read_jsonl(target)] == [{"a": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_meta_records_config_and_input_hash(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("hello")
    write_meta(tmp_path / "run", {"k": 1}, inputs=[inp])
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["config"] == {"k": 1}
    assert meta["inputs"][str(inp)] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert (tmp_path / "run" / "config.yaml").read_text() == "k: 1\n"


def test_cli_argument_conventions():
    assert _split_args(["c.yaml", "FILE", "a=1", "--kind", "hrm", "--skip-bad"]) == (
        "c.yaml",
        ["FILE"],
        ["a=1", "kind=hrm", "skip_bad=true"],
    )


def test_cli_validate_prints_resolved_config(capsys):
    assert main(["validate", "data", "build", "--kind", "prm", "neutral=drop"]) == 0
    out = capsys.readouterr().out
    assert "kind: prm" in out and "neutral: drop" in out


def test_every_command_resolves_to_a_config_and_run():
    import importlib

    for name, (module, cls, run, _) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert hasattr(mod, cls) and callable(getattr(mod, run)), name


# Stage order: a module may import only from its own stage or lower ones. A plain order of the
# top-level modules and packages, with no exceptions for single modules: the shared nouns (the
# tree record, HNC, executors, model resolution, the HTTP client) live at the bottom.
LEVEL = {
    "records": 0, "artifacts": 0, "config": 0, "grading": 0, "tree": 0, "hnc": 0, "executors": 0, "models": 0,
    "http": 0, "commands": 0,
    "training": 1,
    "data": 1, "policy": 1,
    "annotate": 2, "rm": 2,
    "search": 3, "selftrain": 3, "serve": 3, "rl": 3,
    "quickstart": 4, "report": 4, "cli": 5,
}  # fmt: skip


def _level(module: str) -> int:
    return LEVEL[module.split(".")[0]]


def _imports() -> dict[str, set[str]]:
    """module -> the hiprm modules it imports (anywhere in it, function bodies included)."""
    out: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if not parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hiprm."):
                names.add(node.module.removeprefix("hiprm."))
                # `from hiprm.rm import evaluate` imports the module hiprm.rm.evaluate
                names.update(f"{node.module.removeprefix('hiprm.')}.{a.name}" for a in node.names
                             if (SRC / node.module.removeprefix("hiprm.").replace(".", "/") / f"{a.name}.py").exists())  # fmt: skip
            elif isinstance(node, ast.Import):
                names.update(a.name.removeprefix("hiprm.") for a in node.names if a.name.startswith("hiprm."))
        out[".".join(parts)] = names
    return out


def test_no_import_cycles():
    """No module reaches itself through the modules it imports (a config class imported by a
    helper of its own runner made such cycles)."""
    graph = _imports()
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen and nxt in graph:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, cycles[:10]


def test_imports_only_go_down():
    bad = [f"{me} imports {target}" for me, targets in _imports().items() for target in sorted(targets)
           if _level(target) > _level(me)]  # fmt: skip
    assert not bad, bad


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers_help_with_its_keys(name, capsys):
    import importlib

    from hiprm.config import describe_config

    module, cls, _, _ = COMMANDS[name]
    keys = [k for k, *_ in describe_config(getattr(importlib.import_module(module), cls))]
    for flag in ("--help", "-h"):
        assert main([*name.split(), flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: hiprm {name}") and all(f"  {k} " in out for k in keys)
    assert main(["--help"]) == 0
    assert name in capsys.readouterr().out


def test_one_name_per_config_class():
    """Two runners' configs never share a class name (`rm eval`'s and `eval`'s were both EvalConfig)."""
    names = [cls for _, cls, _, _ in COMMANDS.values()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
