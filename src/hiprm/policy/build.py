"""The one place a policy is built from its config block (`policy.*`, `prompt.*`).

`hiprm eval` and `hiprm annotate` both take these blocks, so a config written for one works for
the other:

    policy = build_policy(PolicyConfig(backend="openai", base_url="http://127.0.0.1:8000/v1"))
    style = build_style(PromptConfig(style="step"))

Backends are imported only when chosen (transformers for `hf`, httpx for `openai`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hiprm.artifacts import DataError, read_json
from hiprm.config import ConfigError, NonNegative, Positive, PositiveFloat
from hiprm.policy.decode import DECODERS
from hiprm.policy.prompts import PromptStyle, make_style


@dataclass
class PolicyConfig:
    """`backend`: hf | openai | scripted. `model`: HF folder / embedded name (hf, and the
    served model name for openai). `tokenizer` (openai): a local tokenizer for exact token
    counts. `decoder` (hf): hiprm (`hiprm.policy.decode`) | generate (transformers' `generate`,
    for a model that the static KV cache does not fit). `server_stops` (openai): false for servers that drop stop strings without saying which
    matched (llama-cpp-python); the client then cuts. `script` (scripted): a JSON file
    `{"rules": {substring: [texts]}, "default": [...]}`."""

    backend: str = "hf"
    model: str = "smollm2-135m-instruct"
    chat_template: bool = True
    batch_size: Positive = 16
    device: str = "cpu"
    decoder: str = "hiprm"
    base_url: str | list[str] = "http://127.0.0.1:8000/v1"  # or a list: requests spread over the servers
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: Positive = 8
    timeout: PositiveFloat = 600.0  # a busy server queues requests: a short timeout retries them into a livelock
    max_retries: NonNegative = 5
    tokenizer: str = ""
    server_stops: bool = True
    script: str = ""


@dataclass
class PromptConfig:
    """`style`: step | formula | paragraph | brief (see `hiprm.policy.prompts`); `template` (with
    {question} and {previous_steps}) and `step_stops` replace the style's own."""

    style: str = "step"
    template: str = ""
    step_stops: list[str] = field(default_factory=list)
    end_stop: str = "# END!"


# Keys of the policy block that may change between a run and its resumption without changing
# any result's meaning (throughput settings).
OPERATIONAL_POLICY_KEYS = {
    "policy.batch_size",
    "policy.concurrency",
    "policy.timeout",
    "policy.max_retries",
    "policy.device",
    "policy.decoder",
}


def _hf_policy(c: PolicyConfig) -> Any:
    from hiprm.policy.hf import HFPolicy

    return HFPolicy(c.model, chat_template=c.chat_template, batch_size=c.batch_size, device=c.device, decoder=c.decoder)


def _openai_policy(c: PolicyConfig) -> Any:
    from hiprm.policy.openai_http import OpenAIPolicy

    return OpenAIPolicy(
        base_url=c.base_url, model=c.model, api_key_env=c.api_key_env, concurrency=c.concurrency,
        timeout=c.timeout, max_retries=c.max_retries, tokenizer=c.tokenizer, server_stops=c.server_stops,
    )  # fmt: skip


def _scripted_policy(c: PolicyConfig) -> Any:
    from hiprm.policy.scripted import ScriptedPolicy

    if not c.script:
        raise ConfigError("policy.script: the scripted backend needs a JSON file of texts")
    spec = read_json(c.script)
    if not isinstance(spec, dict) or not isinstance(spec.get("rules", {}), dict):
        raise DataError(c.script, 'expected {"rules": {substring: [texts]}, "default": [texts]}')
    try:
        return ScriptedPolicy(spec.get("rules", {}), default=spec.get("default"))
    except ValueError as e:
        raise DataError(c.script, str(e)) from None


POLICIES = {"hf": _hf_policy, "openai": _openai_policy, "scripted": _scripted_policy}


def check_policy_config(c: PolicyConfig) -> None:
    """Fail before any work starts on a backend name that does not exist, or an hf policy whose
    folder holds a reward model (`check_policy_folder` reads its config.json, no weights)."""
    if c.backend not in POLICIES:
        raise ConfigError(f"policy.backend: {c.backend!r} is not one of {sorted(POLICIES)}")
    if c.decoder not in DECODERS:
        raise ConfigError(f"policy.decoder: {c.decoder!r} is not one of {sorted(DECODERS)}")
    if c.backend == "hf":
        from hiprm.policy.hf import check_policy_folder

        check_policy_folder(c.model)


def build_policy(c: PolicyConfig) -> Any:
    check_policy_config(c)
    return POLICIES[c.backend](c)


def build_style(c: PromptConfig) -> PromptStyle:
    try:
        return make_style(c.style, c.template, c.step_stops, c.end_stop)
    except ValueError as e:
        raise ConfigError(f"prompt: {e}") from None
