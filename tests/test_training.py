"""hiprm.training.last_complete_checkpoint: which checkpoint a rerun resumes from.

Trainer writes a checkpoint's weights first and `trainer_state.json` last, not atomically, so a
kill leaves checkpoints with no state file, an empty or torn one, or (killed earlier) no weights.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from hiprm.training import last_complete_checkpoint  # noqa: E402

STATE = json.dumps({"global_step": 10, "log_history": [{"step": 10, "loss": 0.5}]})


def checkpoint(folder, step, state=STATE, weights="model.safetensors"):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / weights).write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_newest_whole_checkpoint_wins_and_cut_ones_are_cleaned(tmp_path):
    ck = tmp_path / "checkpoints"
    checkpoint(ck, 10)
    checkpoint(ck, 20, weights="adapter_model.safetensors")  # LoRA: only the adapter is saved
    checkpoint(ck, 30, state=None)  # killed before trainer_state.json
    checkpoint(ck, 40, state="")  # killed as it was created
    checkpoint(ck, 50, state=STATE[:25])  # killed while it was written
    checkpoint(ck, 60, weights=None)  # killed before the weights (state copied in by hand, say)
    checkpoint(ck, 70, state="[]")  # parses, but is not a Trainer state
    assert last_complete_checkpoint(ck).name == "checkpoint-20"
    assert len(list(ck.iterdir())) == 7  # only the main process cleans
    assert last_complete_checkpoint(ck, clean=True).name == "checkpoint-20"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-10", "checkpoint-20"]


def test_empty_state_file_falls_back_to_the_previous_checkpoint(tmp_path):
    ck = tmp_path / "checkpoints"
    checkpoint(ck, 4)
    checkpoint(ck, 8, state="")
    assert last_complete_checkpoint(ck).name == "checkpoint-4"
    (ck / "checkpoint-4" / "trainer_state.json").write_text("")
    assert last_complete_checkpoint(ck) is None
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_sharded_and_deepspeed_checkpoints_are_complete(tmp_path):
    ck = tmp_path / "checkpoints"
    checkpoint(ck, 1, weights="model.safetensors.index.json")
    assert last_complete_checkpoint(ck).name == "checkpoint-1"
    (checkpoint(ck, 2, weights=None) / "global_step2").mkdir()  # ZeRO-3 without gathered weights
    assert last_complete_checkpoint(ck).name == "checkpoint-2"
