"""The `hiprm` command: a thin layer that maps subcommands to (Config dataclass, run function).

Every subcommand is called the same way:

    hiprm SUBCOMMAND [CONFIG.yaml] [POSITIONAL] [key=value ...] [--flag] [--key value]

Defaults < CONFIG.yaml < key=value. `--key value` is the same as `key=value` and a bare `--flag`
is `flag=true` (so `--kind hrm --skip-bad` works). A positional argument that is neither a
YAML file nor key=value fills the subcommand's positional field (e.g. the file of `data stats`).
`hiprm validate SUBCOMMAND CONFIG.yaml [key=value ...]` loads and prints the resolved config
without running. The runners live in their stages; imports happen only when a command runs so
`hiprm --help` stays fast and light.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from dataclasses import asdict
from typing import Any

import yaml

from hiprm.artifacts import DataError, StageError
from hiprm.commands import COMMANDS
from hiprm.config import ConfigError, load_config

log = logging.getLogger("hiprm")


def _split_args(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """Return (yaml path, positionals, key=value overrides) from the words after the command."""
    config_path = None
    positionals: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--") and len(word) > 2:
            key = word[2:].replace("-", "_")
            if "=" in key:
                overrides.append(key)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and "=" not in argv[i + 1]:
                overrides.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                overrides.append(f"{key}=true")
        elif "=" in word:
            overrides.append(word)
        elif word.endswith((".yaml", ".yml")) and config_path is None:
            config_path = word
        else:
            positionals.append(word)
        i += 1
    return config_path, positionals, overrides


def _resolve(name: str, argv: list[str]) -> tuple[Any, Any]:
    module_name, cls_name, run_name, positional = COMMANDS[name]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    config_path, positionals, overrides = _split_args(argv)
    if positionals:
        if positional is None or len(positionals) > 1:
            raise ConfigError(f"'hiprm {name}' takes no positional argument {positionals!r}")
        overrides = [f"{positional}={positionals[0]}", *overrides]
    cfg = load_config(cls, config_path, overrides)
    return cfg, getattr(module, run_name)


def _first_line(module_name: str) -> str:
    """What a command does: the first line of its module's docstring, without the command name."""
    import importlib.util

    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return ""
    import ast

    with open(spec.origin, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    return line.split(": ", 1)[1] if line.startswith("`hiprm") and ": " in line else line


def command_help(name: str) -> str:
    """`hiprm NAME --help`: what it does, how to call it, and every key with type and default."""
    from hiprm.config import describe_config

    module_name, cls_name, _, positional = COMMANDS[name]
    cls = getattr(importlib.import_module(module_name), cls_name)
    arg = f" {positional.upper()}" if positional else ""
    lines = [f"usage: hiprm {name}{arg} [CONFIG.yaml] [key=value ...]", "", _first_line(module_name), "",
             "keys (defaults < CONFIG.yaml < key=value; --key value works too; unknown keys are errors):"]  # fmt: skip
    rows = describe_config(cls)
    width = max(len(k) for k, *_ in rows)
    for key, tp, default, text in rows:
        lines.append(f"  {key:<{width}}  {tp} = {default}" + (f"\n  {'':<{width}}    {text}" if text else ""))
    return "\n".join(lines)


def _command_name(argv: list[str]) -> tuple[str | None, list[str]]:
    for width in (2, 1):
        name = " ".join(argv[:width])
        if name in COMMANDS:
            return name, argv[width:]
    return None, argv


def _usage() -> str:
    lines = ["usage: hiprm SUBCOMMAND [CONFIG.yaml] [key=value ...]   (hiprm SUBCOMMAND --help: its keys)", "",
             "subcommands:"]  # fmt: skip
    rows = [
        (f"{name}{' ' + pos.upper() if pos else ''}", _first_line(module))
        for name, (module, _, _, pos) in COMMANDS.items()
    ]
    rows.append(("validate SUBCOMMAND ...", "print the resolved config of a command without running it"))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {a:<{width}}  {b}" for a, b in rows]
    return "\n".join(lines)


def _leave_process_group() -> None:
    """Under `accelerate launch` / torchrun, tear the process group down before exiting: left to
    interpreter exit, its gloo threads sometimes abort a finished run ("terminate called without
    an active exception", exit -6; seen in CI on `selftrain` with two processes). Every
    collective of the run is over once `run` returns on this rank, and so on every rank."""
    torch = sys.modules.get("torch")  # never import torch just for this
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hiprm", add_help=False)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    known, rest = parser.parse_known_args(argv[:1]) if argv and argv[0].startswith("-") else (None, argv)
    if known is not None:
        rest = argv[1:]
    verbose = bool(known and known.verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not rest or (known and known.help) or rest[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    validate = rest[0] == "validate"
    name, tail = _command_name(rest[1:] if validate else rest)
    if name is None:
        print(f"hiprm: unknown subcommand {' '.join(rest[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if any(w in ("-h", "--help") for w in tail):
        print(command_help(name))
        return 0
    try:
        cfg, run = _resolve(name, tail)
        if validate:
            print(yaml.safe_dump(asdict(cfg), sort_keys=False, allow_unicode=True), end="")
            return 0
        result = run(cfg)
    except (ConfigError, DataError, StageError) as e:
        print(f"hiprm {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only or vanished folder: one line, not a traceback
        log.debug("what failed", exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        print(f"hiprm {name}: error: {where}{e.strerror or e}{full}; outputs written atomically are as they "
              f"were, and an interrupted run resumes when rerun", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"hiprm {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
    if result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
