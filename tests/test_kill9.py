"""Kill -9, then rerun: every resumable stage ends with what an uninterrupted run writes.

Each test runs the real `hiprm` command (`tests.killing`) twice on the same tiny inputs: once to
the end, once killed with SIGKILL mid-run (after its first checkpoint, or once its output holds a
record) and run again with the same command. The outputs are then compared: the same weights bit
for bit (`rm train`), the same records byte for byte with none lost or repeated (`rm score`,
`rm eval`, `eval`), the same files (`data build`, which is not incremental: its test is that a
killed build leaves the previous build as it was, no torn file and no file of the new one).
The tests that run a stage three or four times (15-30 s each) are marked `slow`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hiprm.artifacts import write_jsonl
from tests.killing import checkpoint_saved, complete_lines, hiprm_cmd, kill_when, run_to_end
from tests.rm_fixtures import make_tuned_copy
from tests.test_rm_train import toy_examples

pytest.importorskip("torch")


# ---- rm train ------------------------------------------------------------------------------------


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("batching, fmt", [("rows", "seqcls"), ("trie", "seqcls"), ("trie", "tag")])
def test_rm_train_killed_after_a_checkpoint_ends_with_the_uninterrupted_weights(
    tmp_path, tiny_backbone_dir, batching, fmt
):
    """40 examples, batches of 4: 10 steps an epoch, 3 epochs. The first checkpoint (step 14) is
    in the second epoch, where a sampler drawing from the global RNG (Trainer's own length
    grouping) would order the resumed epoch differently; ours is a function of (seed, epoch).
    The tag format (a causal LM learning `+`/`-` at a step tag) resumes the same way."""
    write_jsonl(tmp_path / "train.jsonl", toy_examples(40, seed=0))
    args = [f"model.name={tiny_backbone_dir}", f"data.train={tmp_path / 'train.jsonl'}", "data.val=null",
            f"data.batching={batching}", "optim.group_by_length=true", "optim.batch_size=4", "optim.epochs=3",
            "optim.learning_rate=3e-3", "checkpoint.every_steps=14", "checkpoint.keep=5", "logging_steps=4",
            f"format={fmt}"]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "killed"
    run_to_end(hiprm_cmd("rm", "train", *args, f"output_dir={ref}"))
    cmd = hiprm_cmd("rm", "train", *args, f"output_dir={out}")
    kill_when(cmd, checkpoint_saved(out / "checkpoints" / "checkpoint-14"), tmp_path / "killed.log")
    assert not (out / "model").exists()
    run_to_end(cmd)

    want, got = _weights(ref / "model"), _weights(out / "model")
    assert want.keys() == got.keys()
    differ = [k for k in want if not (want[k] == got[k]).all()]
    assert not differ, f"weights differ from the uninterrupted run's: {differ[:5]}"
    meta_ref, meta = (json.loads((d / "meta.json").read_text()) for d in (ref, out))
    assert meta["batching"] == meta_ref["batching"] == batching
    assert meta["global_step"] == 30

    def rows(d: Path) -> list[dict]:
        return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]

    assert [(r["step"], r["loss"]) for r in rows(out) if "loss" in r] == [
        (r["step"], r["loss"]) for r in rows(ref) if "loss" in r]  # fmt: skip
    # train_loss is the whole run's (from the log rows restored with the checkpoint), not the last
    # session's: for the uninterrupted run, what Trainer itself reports at the end.
    assert meta["train_loss"] == meta_ref["train_loss"]
    trainer_own = next(r["train_loss"] for r in rows(ref) if "train_loss" in r)
    assert meta_ref["train_loss"] == pytest.approx(trainer_own, rel=1e-6)


# ---- rm score ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    from tests.rm_fixtures import shared_tiny_rm

    return shared_tiny_rm(tmp_path_factory, tiny_tokenizer)


def _solutions(path: Path, n: int) -> Path:
    import random

    rng = random.Random(0)
    rows = [{"id": i, "question": f"What is {i} + {i % 7}?",
             "steps": [f"Step {j}: {rng.randint(0, 99)} + {rng.randint(0, 99)} = {rng.randint(0, 200)}."
                       for j in range(rng.randint(1, 6))]} for i in range(n)]  # fmt: skip
    write_jsonl(path, rows)
    return path


def _lines(path: Path) -> list[bytes]:
    lines = path.read_bytes().splitlines()
    assert len(set(lines)) == len(lines), f"{path}: a record written twice"
    return lines


@pytest.mark.slow
def test_rm_score_killed_mid_run_ends_with_the_uninterrupted_records(tmp_path, tiny_rm_dir):
    """Chunks of 16 solutions; a reward's last float bits depend on the batch it was computed in,
    so a resumed run must score the same chunks, a chunk cut short by the kill included."""
    src = _solutions(tmp_path / "solutions.jsonl", 600)
    args = [f"model={tiny_rm_dir}", f"input={src}", "device=cpu", "chunk_size=16"]
    ref, out = tmp_path / "ref.jsonl", tmp_path / "killed.jsonl"
    run_to_end(hiprm_cmd("rm", "score", *args, f"output={ref}"))
    partial = out.with_name(out.name + ".partial")
    cmd = hiprm_cmd("rm", "score", *args, f"output={out}")
    kill_when(cmd, lambda: complete_lines(partial) >= 1, tmp_path / "killed.log")
    assert not out.exists() and 0 < complete_lines(partial) < 600
    run_to_end(cmd)
    assert _lines(out) == _lines(ref) and not partial.exists()

    # The kill can also land inside a chunk's write (its lines go out in several buffer flushes):
    # here the partial keeps 1.5 chunks and half a line.
    out.unlink()
    lines = ref.read_bytes().splitlines(keepends=True)
    partial.write_bytes(b"".join(lines[:24]) + lines[24][:20])
    run_to_end(cmd)
    assert _lines(out) == _lines(ref)


# ---- rm eval -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("models, task", [("one", "processbench"), ("shared_trunk", "processbench"),
                                          ("one", "prmbench")])  # fmt: skip
def test_rm_eval_killed_mid_run_ends_with_the_uninterrupted_cache_and_report(
    tmp_path, tiny_rm_dir, tiny_tokenizer, shared_data, models, task
):
    """PRM800K solutions are scored one at a time, ProcessBench entries and PRMBench samples in
    batches of 8; the reward cache (`rewards.jsonl`) is the resumable output. With two models
    that share their bottom layer, both are scored in one pass and each writes its own records.
    The kill lands while ProcessBench, or PRMBench, is being scored."""
    paths = [tiny_rm_dir]
    if models == "shared_trunk":
        paths.append(make_tuned_copy(tiny_rm_dir, tmp_path / "tuned", tiny_tokenizer, seed=5))
    args = [f"models=[{','.join(map(str, paths))}]", f"data_dir={shared_data}", "prm800k_limit=10", "limit=48",
            "processbench_splits=[gsm8k,math]", "bootstrap=50", "device=cpu",
            f"prmbench_limit={2 if task == 'prmbench' else 1}"]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "killed"
    run_to_end(hiprm_cmd("rm", "eval", *args, f"out={ref}"))
    cache = out / "rewards.jsonl"

    def in_task() -> bool:  # a batch of `task` is being written or scored
        return complete_lines(cache) >= 1 and f'"{task}/'.encode() in cache.read_bytes()

    cmd = hiprm_cmd("rm", "eval", *args, f"out={out}")
    kill_when(cmd, in_task, tmp_path / "killed.log")
    assert not (out / "rm_eval.json").exists()
    run_to_end(cmd)

    def report(d: Path) -> dict:
        r = json.loads((d / "rm_eval.json").read_text())
        return {"models": r["models"], "data": r["data"]}  # `config` names the out dir

    assert _lines(cache) == _lines(ref / "rewards.jsonl")
    assert report(out) == report(ref)

    # The kill can also land inside a batch (its records are appended one by one): here the
    # cache keeps the records before `task`, 3 of its first batch and half a line.
    lines = (ref / "rewards.jsonl").read_bytes().splitlines(keepends=True)
    first = next(k for k, x in enumerate(lines) if f'"{task}/'.encode() in x)
    cache.write_bytes(b"".join(lines[: first + 3]) + lines[first + 3][:30])
    (out / "rm_eval.json").unlink()
    run_to_end(cmd)
    assert _lines(cache) == _lines(ref / "rewards.jsonl")
    assert report(out) == report(ref)


# ---- eval ----------------------------------------------------------------------------------------


def _without_times(obj):
    """A record less its wall-clock fields (`cost.seconds`, `rm_seconds`, ...), which differ per run."""
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if not k.endswith("seconds") and k != "seconds_per_problem"}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


@pytest.mark.slow
def test_eval_killed_mid_run_ends_with_the_uninterrupted_problems(tmp_path, tiny_rm_dir):
    """150 problems with the scripted policy and the tiny reward model as ORM and PRM; one record
    per finished problem in `problems.jsonl`."""
    from tests.test_eval_run import _texts

    problems = [(f"[p{i}] What is {i % 9}+{i % 5}?", str(i % 9 + i % 5)) for i in range(150)]
    data = tmp_path / "problems.jsonl"
    write_jsonl(data, [{"q": q, "a": a} for q, a in problems])
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": {q: _texts(q.split()[-1][:-1], a) for q, a in problems}}))
    args = [f"dataset={data}", "question_field=q", "answer_field=a", "methods=[majority,orm,prm-min,prm-step]",
            "n_values=[1,2,4]", "subsamples=2", f"orm={tiny_rm_dir}", f"prm={tiny_rm_dir}", "rm.device=cpu",
            "policy.backend=scripted", f"policy.script={script}", "progress=false"]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "killed"
    run_to_end(hiprm_cmd("eval", *args, f"out_dir={ref}"))
    cmd = hiprm_cmd("eval", *args, f"out_dir={out}")
    kill_when(cmd, lambda: complete_lines(out / "problems.jsonl") >= 1, tmp_path / "killed.log")
    assert not (out / "metrics.json").exists() and 0 < complete_lines(out / "problems.jsonl") < 150
    run_to_end(cmd)

    def records(d: Path) -> list[dict]:
        rows = [json.loads(x) for x in _lines(d / "problems.jsonl")]
        assert len({r["problem_id"] for r in rows}) == len(rows) == 150
        return _without_times(rows)

    assert records(out) == records(ref)
    assert _lines(out / "samples.jsonl") == _lines(ref / "samples.jsonl")
    metrics = [_without_times(json.loads((d / "metrics.json").read_text())) for d in (ref, out)]
    assert metrics[0] == metrics[1]


# ---- data build ----------------------------------------------------------------------------------


def test_data_build_killed_leaves_the_old_build_whole_and_reruns_to_the_same_files(tmp_path, shared_data):
    """`data build` is not incremental: a rerun starts over. It writes the new build beside the
    folder (`killed.tmp-PID`) and renames it in whole, so a kill while it writes must leave the
    previous build exactly: no file of the new one, none torn, none missing. A rebuild
    (another seed, so another split) over a finished build is killed while writing train.jsonl,
    then val.jsonl; the rerun removes the killed builds' temporaries."""
    src = shared_data / "prm800k" / "phase1_train.reconstructed.jsonl"
    args = ["--kind", "hrm", f"input={src}", "val_fraction=0.3", "quiet=true"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    names = ("train.jsonl", "val.jsonl", "meta.json")

    def meta(d: Path) -> dict:  # but for the out_dir it names (and the config hash of that)
        m = json.loads((d / "meta.json").read_text())
        m["config"].pop("out_dir")
        m.pop("config_hash")
        return m

    def built_by(d: Path, like: Path) -> bool:  # d holds like's build, every file whole
        return sorted(p.name for p in d.iterdir()) == sorted(p.name for p in like.iterdir()) and all(
            meta(d) == meta(like) if n == "meta.json" else (d / n).read_bytes() == (like / n).read_bytes()
            for n in names
        )

    run_to_end(hiprm_cmd("data", "build", *args, "seed=1", f"out_dir={ref}"))
    old = tmp_path / "old"
    run_to_end(hiprm_cmd("data", "build", *args, "seed=0", f"out_dir={old}"))
    assert (old / "val.jsonl").read_bytes() != (ref / "val.jsonl").read_bytes()  # another split
    cmd = hiprm_cmd("data", "build", *args, "seed=1", f"out_dir={out}")

    def writing_now(name: str) -> bool:
        try:
            return any(tmp_path.glob(f"killed.tmp-*/.{name}.*.tmp"))
        except FileNotFoundError:  # the run is removing an earlier kill's temporary under the glob
            return False

    for writing in ("train.jsonl", "val.jsonl"):
        shutil.copytree(old, out)  # the previous build, finished
        kill_when(cmd, lambda w=writing: writing_now(w), tmp_path / f"killed-{writing}.log")
        assert out.is_dir() and built_by(out, old), (
            f"killed writing {writing}: {sorted(p.name for p in out.iterdir()) if out.is_dir() else 'no folder'}"
        )
        assert list(tmp_path.glob("killed.tmp-*")), "no temporary left, so the rerun's cleanup is untested"
        if writing == "val.jsonl":
            run_to_end(cmd)
        else:
            shutil.rmtree(out)
    assert built_by(out, ref)
    assert not list(tmp_path.glob("killed.*")), "a killed build's temporaries are left"
