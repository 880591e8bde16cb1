"""Reward-model formats: how (question, steps) become tokens, and where a step's reward is read.

Every reward model in this field answers the same question (how good is step i of a solution?)
but packs it differently. A format is that packing. Each one turns a scoring input (question,
previous steps, current step) into token ids that END at the position where the current step's
reward is read, and names the head that turns the hidden state there into two logits
`[bad, good]`, so that the reward is always softmax(row)[1] (`hiprm.rm.scorer.reward_from_logits`).
Because a causal model's state at a position never depends on later tokens, the input of step i
ends where step i's reward is read in the whole solution, and the inputs of one solution are
prefixes of each other: the trie packing (`hiprm.rm.trie`) then scores a whole solution in one
pass, as the public models' own usage does.

- `seqcls` (hiprm's, the paper's): `hiprm.rm.template.render` text, one input per step prefix;
  a 2-label sequence classifier read at the last token.
- `token`, layout `qwen` (Qwen2.5-Math-PRM, `Qwen2ForProcessRewardModel`): the chat template with
  the model card's system prompt, the steps joined and followed by `<extra_0>`; a two-layer head
  (`score.0`, ReLU, `score.2`) read at each `<extra_0>`.
- `token`, layout `trl` (TRL's PRMTrainer, `*ForTokenClassification`): [bos] + prompt tokens +
  for each step its tokens + the `step_separator` tokens (tokenized piece by piece, as TRL's
  `tokenize_row` does), read at the separator's last token.
- `tag` (Math-Shepherd, OpenR, OpenRLHF): a causal LM on `question + " " + "\\n".join(step + tag)`
  (tag ` ки`), read at the tag: the LM head's logits of the good (`+`) and bad (`-`) tokens.
- `chat` (RLHFlow Llama3.1-8B-PRM): a conversation, one user turn per step (the first one is
  `question + " " + step`) answered `+`, rendered whole by the tokenizer's chat template; read at
  the token before the last answer's `+`, the logits of `+` and `-`.

Long inputs: an input over `max_length` tokens loses its oldest previous steps first (the
question and the steps nearest the current one stay); if the question and the current step alone
are still too long, the question's tail and then the current step's tail are cut, and the tag is
put back after it, so no step is ever read at a position that is not its own. Every cut is
counted (`hiprm.rm.template.FitReport`) and reported by the scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError
from hiprm.config import ConfigError
from hiprm.rm.template import FitReport, TemplateConfig, fitted_texts

FORMATS = ("seqcls", "token", "tag", "chat")
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_TAG = "<extra_0>"
MATH_SHEPHERD_TAG = " ки"
TRL_SEPARATOR = "\n"
DEFAULT_TAGS = {("token", "qwen"): QWEN_TAG, ("token", "trl"): TRL_SEPARATOR, ("tag", ""): MATH_SHEPHERD_TAG}
# The longest input a public model gets by default (its max_position_embeddings when smaller).
DEFAULT_MAX_LENGTH = 4096


@dataclass(frozen=True)
class FormatSpec:
    """What a user (`format=tag` in a config, `MODEL?format=tag&step_tag=...` in a scorer spec)
    or a checkpoint (`config.json`: `architectures`, hiprm's `hiprm_format`) says of a format.
    Empty fields are filled from the checkpoint by `resolve_format`."""

    format: str = "auto"  # auto | seqcls | token | tag | chat
    layout: str = ""  # token: qwen | trl (default from the architecture)
    step_tag: str | None = None  # qwen: <extra_0>; trl: the step_separator "\n"; tag: " ки"
    good_token: str = "+"  # tag, chat
    bad_token: str = "-"
    system_prompt: str | None = None  # qwen: the model card's
    max_length: int | None = None  # tokens per input; default min(max_position_embeddings, 4096)

    @classmethod
    def parse(cls, options: dict[str, str], where: str) -> FormatSpec:
        """From `key=value` options (a spec's query); unknown keys and formats are errors."""
        known = {f.name: f for f in fields(cls)}
        out: dict[str, Any] = {}
        for k, v in options.items():
            if k not in known:
                raise ConfigError(f"{where}: unknown scorer option {k!r} (known: {', '.join(known)})")
            out[k] = int(v) if k == "max_length" else v
        spec = cls(**out)
        if spec.format not in ("auto", *FORMATS):
            raise ConfigError(f"{where}: format={spec.format!r} is not one of auto, {', '.join(FORMATS)}")
        if spec.layout not in ("", "qwen", "trl"):
            raise ConfigError(f"{where}: layout={spec.layout!r} is not qwen or trl")
        return spec


@dataclass(frozen=True)
class Format:
    """A resolved format: everything `encode_inputs` and the scorer's head need."""

    name: str  # seqcls | token | tag | chat
    layout: str = ""  # token: qwen | trl
    step_tag: str = ""
    good_token: str = "+"
    bad_token: str = "-"
    system_prompt: str = ""
    max_length: int = 1024
    template: TemplateConfig | None = None  # seqcls only

    @property
    def label(self) -> str:
        return f"{self.name}/{self.layout}" if self.layout else self.name

    def saved(self) -> dict[str, Any]:
        """What a trained checkpoint keeps in `config.json` (`hiprm_format`), read back by
        `resolve_format`."""
        return {"format": self.name, "layout": self.layout, "step_tag": self.step_tag, "good_token": self.good_token,
                "bad_token": self.bad_token, "system_prompt": self.system_prompt, "max_length": self.max_length}  # fmt: skip


def split_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """A scorer spec -> (location, checkpoint after '#', options after '?').

    >>> split_spec("runs/rm/model")
    ('runs/rm/model', '', {})
    >>> split_spec("http://gpu1:8000?format=tag&step_tag=%20%D0%BA%D0%B8#ckpt/ms")
    ('http://gpu1:8000', 'ckpt/ms', {'format': 'tag', 'step_tag': ' ки'})
    """
    from urllib.parse import parse_qsl

    rest, _, fragment = spec.partition("#")
    location, _, query = rest.partition("?")
    return location, fragment, dict(parse_qsl(query, keep_blank_values=True))


def parse_spec(spec: str) -> tuple[str, str, FormatSpec]:
    """A scorer spec -> (location, checkpoint after '#', its checked options)."""
    location, fragment, options = split_spec(spec)
    return location, fragment, FormatSpec.parse(options, spec)


# ---- which format a checkpoint is ---------------------------------------------------------------


def checkpoint_format(folder: str | Path, spec: FormatSpec) -> tuple[Path, Format, Any]:
    """(folder, its format, its tokenizer) of a checkpoint folder under `spec`, from its
    config.json and tokenizer files only (no weights: a served model's folder may hold no more)."""
    from transformers import AutoTokenizer

    from hiprm.artifacts import read_json

    p = Path(folder)
    if not (p / "config.json").is_file():
        raise ConfigError(f"model: {p} is not a checkpoint folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(p))
    return p, resolve_format(p, read_json(p / "config.json"), spec, tokenizer), tokenizer


def architecture_format(archs: Sequence[str]) -> tuple[str, str] | None:
    """(format, layout) that a checkpoint's `architectures` imply; None for a causal LM, which
    could be a policy as well as a tag or chat PRM: those need an explicit `format=`.

    >>> architecture_format(["Qwen2ForProcessRewardModel"]), architecture_format(["LlamaForCausalLM"])
    (('token', 'qwen'), None)
    """
    for a in archs:
        if a.endswith("ForProcessRewardModel"):
            return "token", "qwen"
        if a.endswith("ForTokenClassification"):
            return "token", "trl"
        if a.endswith("ForSequenceClassification"):
            return "seqcls", ""
    return None


def resolve_format(folder: Path, config: dict[str, Any], spec: FormatSpec, tokenizer: Any) -> Format:
    """The format of the checkpoint in `folder` (its parsed `config.json`) under the user's
    `spec`; a pairing that cannot work is one error naming the checkpoint and what is missing."""
    cfg_path = folder / "config.json"
    archs = [str(a) for a in config.get("architectures") or []]
    saved = config.get("hiprm_format") or {}
    implied = architecture_format(archs)
    name = spec.format if spec.format != "auto" else saved.get("format") or (implied[0] if implied else "")
    if not name:
        raise DataError(cfg_path, f"{', '.join(archs) or 'no architectures'} is not a reward model by itself (no trained "
                                  "classification head: a policy or base model?); give a checkpoint from `hiprm rm train`, "
                                  "or format=tag / format=chat for a causal-LM PRM (Math-Shepherd, RLHFlow)",
                        field="architectures")  # fmt: skip
    is_lm = any(a.endswith("ForCausalLM") for a in archs)
    if name in ("tag", "chat") and archs and not is_lm:
        raise DataError(cfg_path, f"format={name} reads a causal LM's next-token logits; {', '.join(archs)} has no "
                                  "LM head", field="architectures")  # fmt: skip
    if name in ("seqcls", "token") and (implied is None or implied[0] != name):
        raise DataError(cfg_path, f"format={name} needs a {'sequence' if name == 'seqcls' else 'token'} classifier "
                                  f"(or Qwen2ForProcessRewardModel); {', '.join(archs) or 'no architecture'} is not one",
                        field="architectures")  # fmt: skip
    layout = spec.layout or saved.get("layout") or (implied[1] if implied else "")  # token only: build_format
    limit = int(config.get("max_position_embeddings") or DEFAULT_MAX_LENGTH)
    max_length = spec.max_length or saved.get("max_length") or min(limit, DEFAULT_MAX_LENGTH)
    if name == "seqcls":
        template = TemplateConfig.from_saved(config.get("hiprm_template"), folder)
        if spec.max_length:
            template = replace(template, max_length=spec.max_length)
        return Format("seqcls", max_length=template.max_length, template=template)
    num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels") or 2)
    if name == "token" and num_labels != 2:
        raise DataError(cfg_path, f"a token-format PRM has 2 labels; this classifier has {num_labels}", field="id2label")
    return build_format(name, layout, spec.step_tag if spec.step_tag is not None else saved.get("step_tag"),
                        spec.good_token if spec.good_token != "+" else saved.get("good_token", "+"),
                        spec.bad_token if spec.bad_token != "-" else saved.get("bad_token", "-"),
                        spec.system_prompt if spec.system_prompt is not None else saved.get("system_prompt"),
                        int(max_length), tokenizer, folder)  # fmt: skip


def build_format(name: str, layout: str, step_tag: str | None, good_token: str, bad_token: str,
                 system_prompt: str | None, max_length: int, tokenizer: Any, where: Path) -> Format:
    """A token / tag / chat format, its defaults filled (the tag of each layout, the Qwen system
    prompt) and its tokens checked against the tokenizer: what scoring (`resolve_format`) and
    training (`hiprm.rm.train`) both build."""
    layout = layout if name == "token" else ""
    tag = step_tag if step_tag is not None else DEFAULT_TAGS.get((name, layout), "")
    fmt = Format(name, layout, tag, good_token, bad_token, system_prompt or QWEN_SYSTEM, max_length)
    check_tokenizer(fmt, tokenizer, where)
    return fmt


def single_token(tokenizer: Any, text: str) -> int | None:
    """The id of `text` when the tokenizer reads it as exactly one token, else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def check_tokenizer(fmt: Format, tokenizer: Any, folder: Path) -> None:
    """The tokens a format reads must exist: one error naming the checkpoint and the token."""
    where = f"{folder}: format={fmt.label}"
    if fmt.name in ("tag", "chat"):
        for role, tok in (("good_token", fmt.good_token), ("bad_token", fmt.bad_token)):
            if single_token(tokenizer, tok) is None:
                raise ConfigError(f"{where}: {role} {tok!r} is not one token of this tokenizer "
                                  f"({tokenizer(tok, add_special_tokens=False)['input_ids']})")  # fmt: skip
    if (fmt.name == "chat" or fmt.layout == "qwen") and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{where}: the tokenizer has no chat template (tokenizer_config.json 'chat_template')")
    if fmt.layout == "qwen" and single_token(tokenizer, fmt.step_tag) is None:
        raise ConfigError(f"{where}: step tag {fmt.step_tag!r} is not a token of this tokenizer "
                          "(Qwen2.5-Math-PRM's <extra_0> is an added token)")  # fmt: skip
    if fmt.name in ("tag", "token") and not tokenizer(fmt.step_tag, add_special_tokens=False)["input_ids"]:
        raise ConfigError(f"{where}: the step tag {fmt.step_tag!r} has no tokens")


def head_token_ids(fmt: Format, tokenizer: Any) -> list[int]:
    """tag / chat: the ids of [bad, good] whose logits make the reward row."""
    return [int(single_token(tokenizer, fmt.bad_token)), int(single_token(tokenizer, fmt.good_token))]  # type: ignore[arg-type]


# ---- the formatters -----------------------------------------------------------------------------


def qwen_messages(system: str, question: str, steps: Sequence[str], tag: str = QWEN_TAG) -> list[dict[str, str]]:
    """Qwen2.5-Math-PRM's conversation (its model card): each step followed by the tag.

    >>> qwen_messages("S", "1+1?", ["a", "b"])[2]
    {'role': 'assistant', 'content': 'a<extra_0>b<extra_0>'}
    """
    return [{"role": "system", "content": system}, {"role": "user", "content": question},
            {"role": "assistant", "content": tag.join(steps) + tag}]  # fmt: skip


def tag_text(question: str, steps: Sequence[str], tag: str = MATH_SHEPHERD_TAG) -> str:
    """Math-Shepherd's input (its model card): the question, a space, the steps one per line,
    each ending with the tag.

    >>> tag_text("1+1?", ["Step 1: 1+1=2.", "The answer is 2"])
    '1+1? Step 1: 1+1=2. ки\\nThe answer is 2 ки'
    """
    return f"{question} " + "\n".join(s + tag for s in steps)


def chat_messages(question: str, steps: Sequence[str], good: str = "+") -> list[dict[str, str]]:
    """RLHFlow's PRM conversation up to the last step's user turn (the reward is read where the
    assistant answers it): one user turn per step, the earlier ones answered `good`.

    >>> [m["content"] for m in chat_messages("1+1?", ["a", "b"])]
    ['1+1? a', '+', 'b']
    """
    out: list[dict[str, str]] = []
    for i, s in enumerate(steps):
        if i:
            out.append({"role": "assistant", "content": good})
        out.append({"role": "user", "content": f"{question} {s}" if i == 0 else s})
    return out


def trl_ids(prompt: list[int], steps: Sequence[list[int]], separator: list[int], bos: int | None) -> list[int]:
    """TRL's PRM layout from token ids: [bos] + prompt + each step + separator; a step's label
    sits on its separator's last token.

    >>> trl_ids([7, 8], [[1], [2, 3]], [9], bos=0)
    [0, 7, 8, 1, 9, 2, 3, 9]
    """
    head = [bos] if bos is not None else []
    return head + list(prompt) + [t for s in steps for t in (*s, *separator)]


class Encoder:
    """Token ids of scoring inputs in one format, each ending at its reward position."""

    def __init__(self, fmt: Format, tokenizer: Any):
        self.fmt = fmt
        self.tokenizer = tokenizer
        tok = tokenizer
        if fmt.name == "tag":
            self.tag_id = int(tok(fmt.step_tag, add_special_tokens=False)["input_ids"][-1])
        elif fmt.layout == "qwen":
            self.tag_id = int(single_token(tok, fmt.step_tag))  # type: ignore[arg-type]
        else:
            self.tag_id = -1
        self.good_id = single_token(tok, fmt.good_token) if fmt.name == "chat" else None

    def encode(self, inputs: Sequence[tuple[str, Sequence[str], str]]) -> tuple[list[list[int]], list[FitReport]]:
        """Per input: token ids ending at its reward position, and what fitting cut."""
        if self.fmt.name == "seqcls":
            assert self.fmt.template is not None
            texts, reports = fitted_texts(self.tokenizer, inputs, self.fmt.template)
            ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
            return [list(x) for x in ids], reports
        if self.fmt.layout == "trl":
            return self._encode_trl(inputs)
        seqs, reports = [], []
        for q, prev, cur in inputs:
            ids, report = self._fit(q, list(prev), cur, self._ids)
            seqs.append(ids)
            reports.append(report)
        return seqs, reports

    def _fit(self, q: str, prev: list[str], cur: str, ids_of: Any) -> tuple[list[int], FitReport]:
        """Oldest previous steps dropped until the input fits; then the question's and the step's tails."""
        report = FitReport()
        limit = self.fmt.max_length
        ids = ids_of(q, [*prev, cur])
        while len(ids) > limit and prev:
            prev = prev[1:]
            report.dropped_steps += 1
            ids = ids_of(q, [*prev, cur])
        if len(ids) <= limit:
            return ids, report
        tok = self.tokenizer
        q_ids = tok(q, add_special_tokens=False)["input_ids"]
        c_ids = tok(cur, add_special_tokens=False)["input_ids"]
        over = len(ids) - limit
        cut_q = min(over, max(len(q_ids) - 1, 0))
        report.cut_question_tokens = cut_q
        q = tok.decode(q_ids[: len(q_ids) - cut_q])
        cut_c = min(over - cut_q, max(len(c_ids) - 1, 0))
        report.cut_current_tokens = cut_c
        cur = tok.decode(c_ids[: len(c_ids) - cut_c])
        ids = ids_of(q, [cur])
        if len(ids) > limit:
            raise ConfigError(f"max_length={limit}: the {self.fmt.label} format's fixed text alone is {len(ids)} tokens")
        return ids, report

    def _ids(self, question: str, steps: list[str]) -> list[int]:
        tok, fmt = self.tokenizer, self.fmt
        if fmt.name == "tag":
            ids = list(tok(tag_text(question, steps, fmt.step_tag), add_special_tokens=True)["input_ids"])
            return self._ending_at_tag(ids, steps[-1])
        if fmt.layout == "qwen":
            text = tok.apply_chat_template(qwen_messages(fmt.system_prompt, question, steps, fmt.step_tag),
                                           tokenize=False, add_generation_prompt=False)  # fmt: skip
            ids = list(tok(text, add_special_tokens=True)["input_ids"])
            last = max(i for i, t in enumerate(ids) if t == self.tag_id)
            return ids[: last + 1]
        # chat: the conversation with the last step answered, as the model card scores it, cut
        # just before that answer (the model card reads position -3: before `+` and <|eot_id|>).
        messages = [*chat_messages(question, steps, fmt.good_token), {"role": "assistant", "content": fmt.good_token}]
        ids = list(tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])
        good = self.good_id
        answer = max((i for i, t in enumerate(ids) if t == good), default=-1)
        if answer < 1:
            raise ConfigError(f"format=chat: the good token {fmt.good_token!r} is not its own token in the rendered "
                              "conversation; check the tokenizer's chat template")  # fmt: skip
        return ids[:answer]

    def _ending_at_tag(self, ids: list[int], step: str) -> list[int]:
        # The model card reads every position holding the tag token; the text ends with the tag.
        if not ids or ids[-1] != self.tag_id:
            raise ConfigError(f"format=tag: the step tag {self.fmt.step_tag!r} does not end as its own token after "
                              f"the step {step[-40:]!r} (the tokenizer merges it with the text); give another step_tag")  # fmt: skip
        return ids

    def _encode_trl(self, inputs: Sequence[tuple[str, Sequence[str], str]]) -> tuple[list[list[int]], list[FitReport]]:
        """TRL's layout, each distinct question and step tokenized once for the whole call."""
        tok = self.tokenizer
        pieces = list(dict.fromkeys([q for q, _, _ in inputs] + [s for _, p, c in inputs for s in (*p, c)]))
        ids = {p: list(x) for p, x in zip(pieces, tok(pieces, add_special_tokens=False)["input_ids"] if pieces
                                          else [], strict=True)}  # fmt: skip
        sep = list(tok(self.fmt.step_tag, add_special_tokens=False)["input_ids"])
        bos = tok.bos_token_id

        def ids_of(q: str, steps: list[str]) -> list[int]:
            return trl_ids(ids[q] if q in ids else tok(q, add_special_tokens=False)["input_ids"],
                           [ids[s] if s in ids else tok(s, add_special_tokens=False)["input_ids"] for s in steps],
                           sep, bos)  # fmt: skip

        seqs, reports = [], []
        for q, prev, cur in inputs:
            seq, report = self._fit(q, list(prev), cur, ids_of)
            seqs.append(seq)
            reports.append(report)
        return seqs, reports


def vllm_args(fmt: Format, tokenizer: Any) -> list[str]:
    """The `vllm serve` arguments (vLLM 0.32) that make a checkpoint of this format answer as
    hiprm reads it: `/classify` with P(positive) in column 1 for seqcls, `/pooling` with one
    [P(bad), P(good)] row per step tag (STEP pooling) for token/qwen and tag, and a row per
    token (ALL pooling) for chat, whose reward position is not a tag.

    A causal-LM PRM becomes a 2-label token classifier whose head is the LM head's rows of the
    bad and good tokens (`--convert classify`, `classifier_from_token`, in that order, so the
    softmax's column 1 is P(good) as for every format).
    """
    import json

    if fmt.name == "seqcls":
        return ["--runner", "pooling"]
    if fmt.layout == "qwen":
        return ["--pooler-config", json.dumps({"step_tag_id": single_token(tokenizer, fmt.step_tag)})]
    if fmt.name in ("tag", "chat"):
        bad, good = head_token_ids(fmt, tokenizer)
        names = tokenizer.convert_ids_to_tokens([bad, good])
        pooling: dict[str, Any] = {"task": "token_classify", "pooling_type": "STEP" if fmt.name == "tag" else "ALL"}
        if fmt.name == "tag":
            pooling["step_tag_id"] = int(tokenizer(fmt.step_tag, add_special_tokens=False)["input_ids"][-1])
        return ["--runner", "pooling", "--convert", "classify",
                "--hf-overrides", json.dumps({"classifier_from_token": names, "method": "no_post_processing"}),
                "--pooler-config", json.dumps(pooling)]  # fmt: skip
    raise ConfigError(f"format={fmt.label}: hiprm knows no vLLM 0.32 settings that serve this layout; score it in process")
