"""Tiny random checkpoints in the layouts of the public PRMs, and each model card's own usage.

Each `make_*` writes a folder the way the public repository is laid out (its `architectures`,
config fields, weight names, special tokens and chat template) from a tiny random model, so the
real loading path runs offline. Each `reference_*` computes step rewards the way the model card
(or TRL's PRMTrainer, for its layout) does: written here from their usage, sharing no code with
hiprm's formats.

- Qwen2.5-Math-PRM (`Qwen2ForProcessRewardModel`): written with safetensors directly (no hiprm
  class involved): `model.*` of a Qwen2 decoder, `score.0.*` / `score.2.*` of its two-layer head;
- TRL PRM: `LlamaForTokenClassification`, 2 labels;
- Math-Shepherd: `LlamaForCausalLM`, ` ки` a token of its own, `+` / `-` one token each;
- RLHFlow Llama3.1-8B-PRM: `LlamaForCausalLM` with a Llama-3-style chat template.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _tokenizer_with(base, specials=(), tokens=(), template=None):
    tok = copy.deepcopy(base)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    if tokens:
        tok.add_tokens(list(tokens))
    if template is not None:
        tok.chat_template = template
    return tok


def _llama_config(tok, width: int, **kw):
    """tests.conftest's tiny Llama, `width` wide: 32 in-process; 64 (head size 32, the smallest
    vLLM's CPU attention takes) for a model vLLM serves."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                       initializer_range=0.3, **kw)  # fmt: skip


def make_qwen_prm(folder: Path, base_tokenizer, seed: int = 0, width: int = 32) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    tok = _tokenizer_with(base_tokenizer, specials=["<extra_0>"], template=(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"))
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
                      initializer_range=0.3)
    body = Qwen2Model(cfg)
    head = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))
    with torch.no_grad():
        head[2].weight.mul_(4.0)
    state = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    state.update({f"score.{k}": v.contiguous() for k, v in head.state_dict().items()})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config.update(architectures=["Qwen2ForProcessRewardModel"], auto_map={
        "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig", "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(folder)
    return folder


def reference_qwen(folder: Path, question: str, steps: list[str]) -> list[float]:
    """The model card: chat template, `<extra_0>` after each step, softmax[1] at each tag."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2Model

    tok = AutoTokenizer.from_pretrained(folder)
    body = Qwen2Model.from_pretrained(folder).eval()
    w = load_file(str(folder / "model.safetensors"))
    messages = [{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": question},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        h = body(ids).last_hidden_state
        h = torch.relu(h @ w["score.0.weight"].T + w["score.0.bias"])
        logits = h @ w["score.2.weight"].T + w["score.2.bias"]
    probs = logits.softmax(-1)[0]
    sep = tok.encode("<extra_0>")[0]
    return probs[ids[0] == sep][:, 1].tolist()


def make_trl_prm(folder: Path, base_tokenizer, seed: int = 0, width: int = 32) -> Path:
    import torch
    from transformers import LlamaForTokenClassification

    torch.manual_seed(seed)
    model = LlamaForTokenClassification(_llama_config(base_tokenizer, width, num_labels=2))
    model.save_pretrained(folder)
    base_tokenizer.save_pretrained(folder)
    return folder


def reference_trl(folder: Path, question: str, steps: list[str], separator: str = "\n") -> list[float]:
    """TRL's PRMTrainer.tokenize_row: [bos] + prompt + (step + separator)...; softmax[1] at each
    separator's last token."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    prompt = tok(question, add_special_tokens=False)["input_ids"]
    sep = tok.encode(separator, add_special_tokens=False)
    completions = [tok(s, add_special_tokens=False)["input_ids"] + sep for s in steps]
    labels = [[-100] * (len(c) - 1) + [1] for c in completions]
    if tok.bos_token_id is not None:
        prompt = [tok.bos_token_id] + prompt
    ids = prompt + [t for c in completions for t in c]
    lab = [-100] * len(prompt) + [x for row in labels for x in row]
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits.softmax(-1)[0]
    return [probs[i, 1].item() for i, x in enumerate(lab) if x != -100]


def make_math_shepherd(folder: Path, base_tokenizer, seed: int = 0, width: int = 32) -> Path:
    return _causal_lm(folder, _tokenizer_with(base_tokenizer, tokens=[" ки"]), seed, width)


def _causal_lm(folder: Path, tok, seed: int, width: int) -> Path:
    """A tiny random Llama causal LM saved with `tok`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(_llama_config(tok, width)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def reference_math_shepherd(folder: Path, question: str, steps: list[str]) -> list[float]:
    """The model card: `f"{question} {output}"`, logits of `+`/`-` at every ` ки`, softmax[0]."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    candidates = [tok.encode("+", add_special_tokens=False)[0], tok.encode("-", add_special_tokens=False)[0]]
    tag = tok.encode(" ки", add_special_tokens=False)[-1]
    output = "\n".join(f"{s} ки" for s in steps)
    ids = torch.tensor([tok.encode(f"{question} {output}")])
    with torch.no_grad():
        logits = model(ids).logits[:, :, candidates]
    scores = logits.softmax(dim=-1)[:, :, 0]
    return scores[ids == tag].tolist()


def make_rlhflow(folder: Path, base_tokenizer, seed: int = 0, width: int = 32) -> Path:
    tok = _tokenizer_with(base_tokenizer, specials=["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                                    "<|eot_id|>"], template=LLAMA3_TEMPLATE)  # fmt: skip
    return _causal_lm(folder, tok, seed, width)


def reference_rlhflow(folder: Path, question: str, steps: list[str]) -> list[float]:
    """The model card: a conversation per step (earlier steps answered `+`), the logits of
    `+`/`-` at position -3, softmax[0]."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    candidates = [tok.encode("+", add_special_tokens=False)[-1], tok.encode("-", add_special_tokens=False)[-1]]
    out, conversation = [], []
    for k, step in enumerate(steps):
        conversation.append({"content": f"{question} {step}" if k == 0 else step, "role": "user"})
        conversation.append({"content": "+", "role": "assistant"})
        ids = tok.apply_chat_template(conversation, return_tensors="pt", return_dict=False)
        with torch.no_grad():
            logits = model(ids).logits[:, -3, candidates]
        out.append(logits.softmax(dim=-1)[:, 0].item())
    return out
