"""`Qwen2ForProcessRewardModel`: Qwen2.5-Math-PRM's architecture, loadable without remote code.

The public checkpoints (Qwen/Qwen2.5-Math-PRM-7B and -72B) ship their model class as remote code
(`trust_remote_code=True`), which hiprm never runs. The architecture is small: a Qwen2 decoder
(`model.*`) and a two-layer head `score = Sequential(Linear(H, H), ReLU, Linear(H, num_labels))`
(`score.0.*`, `score.2.*`) applied at every token; a step's reward is softmax(logits)[1] at its
`<extra_0>` tag. This class has the same weight names and `architectures` entry, so it loads
the public files, and a checkpoint it saves is one that vLLM serves as `Qwen2ForProcessRewardModel`.

    model = Qwen2ForProcessRewardModel.from_pretrained("Qwen/Qwen2.5-Math-PRM-7B")
    logits = model(input_ids).logits          # (batch, seq, num_labels)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Qwen2Config
from transformers.modeling_outputs import TokenClassifierOutput
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model, Qwen2PreTrainedModel


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    config_class = Qwen2Config

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2Model(config)
        h = config.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, config.num_labels))
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> TokenClassifierOutput:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            **kwargs).last_hidden_state  # fmt: skip
        return TokenClassifierOutput(logits=self.score(hidden))  # (batch, seq, num_labels)
