"""`hiprm quickstart`: run a plan of stages, each an ordinary hiprm command with its own config file.

    hiprm quickstart                                        # configs/quickstart -> runs/quickstart/
    hiprm quickstart configs/paper/quickstart               # the paper-scale plan on a GPU machine
    hiprm quickstart out_dir=runs/qs2 "set=[rm_prm.optim.max_steps=4,eval.limit=1]"
    hiprm quickstart "stages=[annotate,annotate_stats]"     # only these stages

A plan is a folder: `stages.yaml` lists the stages in order, and each stage's config is a YAML
file of its runner, which runs alone with the command on its first line
(`hiprm rm train configs/quickstart/03_rm_prm.yaml`). `stages.yaml`:

    run_dir: runs/quickstart          # where the stage configs put their outputs
    stages:
      - {name: rm_prm, command: rm train, config: 03_rm_prm.yaml,
         launcher: "accelerate launch --config_file configs/accelerate/fsdp.yaml"}   # optional
      - {name: selftrain, command: selftrain, config: 13_selftrain.yaml,
         skip_if: no trajectory passes}   # a DataError saying this skips the stage
      - {name: eval_tuned, command: eval, config: 14_eval_tuned.yaml,
         needs: [runs/quickstart/selftrain/model]}   # skipped while a needed path is missing

`out_dir` moves the run: every config string that starts with the plan's `run_dir` starts with
`out_dir` instead. `set=[NAME.key=value, ...]` overrides a stage's key, so every runner key is
reachable. A stage with a `launcher` runs as `LAUNCHER -m hiprm.cli COMMAND CONFIG` (its resolved
config written to `OUT/.quickstart/NAME.yaml`), e.g. training through `accelerate launch` with
DeepSpeed or FSDP; the others run in this process. Every stage resumes or returns its finished
result, so rerunning the same command after an interruption continues where it stopped.
`OUT/quickstart.json` records each stage's command, resolved config, output, status and seconds;
`hiprm report OUT` (run at the end) builds `OUT/report.md` from it and the stages' outputs.
"""

from __future__ import annotations

import importlib
import logging
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hiprm.artifacts import DataError, StageError, atomic_write, locked, read_json, write_json, write_meta
from hiprm.commands import COMMANDS
from hiprm.config import ConfigError, build_config, read_yaml_config, to_dict

log = logging.getLogger(__name__)

DEFAULT_PLAN = "configs/quickstart"


@dataclass
class QuickstartConfig:
    """`plan`: a folder with `stages.yaml` (or that file). `out_dir`: where the run goes (default:
    the plan's run_dir). `stages`: only these stage names ([] = all). `set`: NAME.key=value
    overrides of stage keys."""

    plan: str = DEFAULT_PLAN
    out_dir: str = ""
    stages: list[str] = field(default_factory=list)
    set: list[str] = field(default_factory=list)


@dataclass
class Stage:
    name: str
    command: str
    config: Path
    launcher: str = ""
    skip_if: str = ""
    needs: list[str] = field(default_factory=list)


def plan_file(plan: str) -> Path:
    """`plan` as the path of its stages.yaml; a relative plan not found here is looked up in the
    repository hiprm runs from (an editable install), so `hiprm quickstart` works from anywhere."""
    p = Path(plan)
    for candidate in (p, Path(__file__).resolve().parents[2] / p):
        f = candidate / "stages.yaml" if candidate.is_dir() else candidate
        if f.is_file():
            return f
    raise ConfigError(f"plan: {plan} is neither a folder holding stages.yaml nor such a file")


def load_plan(plan: str) -> tuple[str, list[Stage]]:
    """(run_dir, stages) of a plan, checked: known commands, config files that exist, unique names."""
    path = plan_file(plan)
    raw = read_yaml_config(path)
    run_dir, entries = raw.get("run_dir"), raw.get("stages")
    if not isinstance(run_dir, str) or not run_dir:
        raise ConfigError(f"{path}: run_dir: expected the folder the stage configs write under")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: stages: expected a non-empty list of {{name, command, config}}")
    stages: list[Stage] = []
    for i, e in enumerate(entries):
        where = f"{path}: stages[{i}]"
        if not isinstance(e, dict) or not {"name", "command", "config"} <= set(e):
            raise ConfigError(f"{where}: expected {{name, command, config}}, got {e!r}")
        unknown = set(e) - {"name", "command", "config", "launcher", "skip_if", "needs"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        if e["command"] not in COMMANDS or e["command"] in ("quickstart", "report", "serve"):
            raise ConfigError(f"{where}: command {e['command']!r} is not a stage command")
        config = path.parent / str(e["config"])
        if not config.is_file():
            raise ConfigError(f"{where}: config {config} not found")
        if e["name"] in {s.name for s in stages}:
            raise ConfigError(f"{where}: the name {e['name']!r} is used twice")
        stages.append(Stage(str(e["name"]), e["command"], config, str(e.get("launcher") or ""),
                            str(e.get("skip_if") or ""), [str(x) for x in e.get("needs") or []]))  # fmt: skip
    return run_dir, stages


def relocate(value: Any, old: str, new: str) -> Any:
    """Every string in `value` (nested) that is `old` or starts with `old/`, moved under `new`.

    >>> relocate({"a": "runs/q/x", "b": ["runs/q", "runs/qq"]}, "runs/q", "out")
    {'a': 'out/x', 'b': ['out', 'runs/qq']}
    """
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + "/") else value
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    return value


def stage_overrides(cfg: QuickstartConfig, stages: list[Stage]) -> dict[str, list[str]]:
    """`set=[NAME.key=value]` split by stage; an unknown stage name is an error."""
    names = {s.name for s in stages}
    out: dict[str, list[str]] = {n: [] for n in names}
    for item in cfg.set:
        name, _, rest = item.partition(".")
        if name not in names or "=" not in rest:
            raise ConfigError(f"set: {item!r} is not NAME.key=value with NAME one of {sorted(names)}")
        out[name].append(rest)
    return out


def stage_config(stage: Stage, run_dir: str, out_dir: str, overrides: list[str]) -> tuple[Any, Any]:
    """(the runner's run function, its config) for `stage`, moved to `out_dir` and overridden."""
    module_name, cls_name, run_name, _ = COMMANDS[stage.command]
    module = importlib.import_module(module_name)
    values = relocate(read_yaml_config(stage.config), run_dir, out_dir)
    cfg = build_config(getattr(module, cls_name), values, overrides, where=str(stage.config))
    return getattr(module, run_name), cfg


def output_of(command: str, cfg: Any) -> str:
    """Where a stage command writes (what `hiprm report` reads)."""
    if command == "annotate stats":
        from hiprm.annotate.stats import stats_path

        return str(stats_path(cfg))
    key = {"rm train": "output_dir", "rm eval": "out", "rm score": "output", "annotate hnc": "out",
           "data export-trl": "out"}.get(command, "out_dir")  # fmt: skip
    return str(getattr(cfg, key))


def _launch(stage: Stage, cfg: Any, out: Path) -> None:
    """Run a stage through its launcher, in a process of its own."""
    resolved = out / ".quickstart" / f"{stage.name}.yaml"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(resolved) as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False, allow_unicode=True)
    cmd = [*shlex.split(stage.launcher), "-m", "hiprm.cli", *stage.command.split(), str(resolved)]
    log.info("%s: %s", stage.name, " ".join(cmd))
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise StageError(f"stage {stage.name}: `{' '.join(cmd)}` exited with {proc.returncode}")


def _out_dir(cfg: QuickstartConfig) -> str:
    return cfg.out_dir or load_plan(cfg.plan)[0]


@locked(_out_dir)
def run(cfg: QuickstartConfig) -> Path:
    """Run the plan's stages in order, record them in `quickstart.json`, write the report."""
    from hiprm.report import write_report

    run_dir, stages = load_plan(cfg.plan)
    out = Path(cfg.out_dir or run_dir)
    unknown = sorted(set(cfg.stages) - {s.name for s in stages})
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; this plan has {[s.name for s in stages]}")
    overrides = stage_overrides(cfg, stages)
    chosen = [s for s in stages if not cfg.stages or s.name in cfg.stages]
    # Every config is built (and checked) before the first stage runs.
    built = {s.name: stage_config(s, run_dir, str(out), overrides[s.name]) for s in chosen}
    plan_path = str(plan_file(cfg.plan))
    write_meta(out, to_dict(cfg), plan=plan_path)
    manifest_path = out / "quickstart.json"
    old = read_json(manifest_path).get("stages", {}) if manifest_path.is_file() else {}
    record: dict[str, Any] = {s.name: old[s.name] for s in stages if s.name in old}
    for k, stage in enumerate(chosen, 1):
        runner, scfg = built[stage.name]
        print(f"\n=== quickstart: {k}/{len(chosen)} {stage.name}: hiprm {stage.command} ===", flush=True)
        entry = {"command": stage.command, "config": to_dict(scfg), "output": output_of(stage.command, scfg),
                 "launcher": stage.launcher}  # fmt: skip
        missing = [p for p in (relocate(n, run_dir, str(out)) for n in stage.needs) if not Path(p).exists()]
        t = time.perf_counter()
        if missing:
            entry |= {"status": "skipped", "why": f"needs {', '.join(missing)}"}
        else:
            try:
                _launch(stage, scfg, out) if stage.launcher else runner(scfg)
                entry["status"] = "done"
            except DataError as e:
                if not stage.skip_if or stage.skip_if not in str(e):
                    raise
                entry |= {"status": "skipped", "why": str(e)}
        entry["seconds"] = round(time.perf_counter() - t, 1)
        if entry["status"] == "skipped":
            print(f"{stage.name} skipped: {entry['why']}")
            log.warning("%s skipped: %s", stage.name, entry["why"])
        record[stage.name] = entry
        ordered = {s.name: record[s.name] for s in stages if s.name in record}
        write_json(manifest_path, {"plan": plan_path, "stages": ordered})
    report = write_report(out)
    seconds = sum(record[s.name]["seconds"] for s in chosen)
    print(f"\nquickstart done in {seconds / 60:.1f} min; report: {report}")
    return report

