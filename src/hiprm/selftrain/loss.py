"""The self-training loss (paper Eq. 3): L = L_LM + lam * f(KL), from logits or hidden states.

Pure functions on tensors; no model is touched. Two entry points, same maths, same outputs:

- `selftrain_loss(logits, ref_logits, labels, ...)` takes the two models' logits
  (batch, seq, vocab). The per-token log-softmaxes are built `chunk_size` tokens at a time
  under activation checkpointing, so the full-vocabulary log-probabilities of both models are
  never held for the whole sequence (only the logits the caller already has).
- `selftrain_loss_from_hidden(hidden, weight, ref_hidden, ref_weight, labels, ...)` takes the
  last hidden states (batch, seq, hidden) and the lm_head weights (vocab, hidden) and never
  materialises full logits: the completion positions are gathered first, then each chunk's
  logits, loss and gradients (w.r.t. hidden and weight) are computed in the forward pass
  (as liger-kernel's fused linear cross-entropy does), and backward only scales them. This is
  what the trainer and `benchmarks/bench_selftrain.py` use. (liger-kernel itself is Triton:
  GPU only, so it is not used here.)

Terms (P = policy, Q = frozen reference, both per token over the whole vocabulary):

    L_LM = mean over completion tokens of -log P(y_t | y_<t)
    KL   = mean over completion tokens of KL(P||Q)  (direction "policy_ref", the paper's)
                                       or KL(Q||P)  (direction "ref_policy", the reference code's)
    f    = log(KL + eps) (paper, Eq. 3) | log1p(KL) (reference code) | identity

`labels` are HF-aligned (batch, seq): labels[b, t] is the token at position t, -100 where no
loss is wanted (prompt, padding); the logits at t-1 predict it. The shift happens exactly once,
here. (The reference code shifts inside its collator *and* again in the loss, so it trains
position t to predict token t+2; `tests/test_selftrain_loss.py` catches that.)

`eps` (default 1e-6): log(KL) is -inf at KL = 0, which is exactly where training starts
(policy == reference); log(KL + eps) is finite there and its gradient 1/(KL + eps) is bounded
by 1/eps. KL is clamped at 0 first (rounding can make it a hair negative in bf16).

Gradient accumulation (sums and counts). Pass `num_tokens` = the number of completion tokens
in the whole optimizer step (all micro-batches, all processes; Trainer's `num_items_in_batch`).
Each call then returns

    total = lm_sum / num_tokens + lam * (n / num_tokens) * f(kl_sum / n)      (n = this call's tokens)
    lm    = lm_sum / num_tokens,  kl = kl_sum / num_tokens

so summing `total` (and `lm`, `kl`) over the micro-batches gives exactly the token-mean LM
loss and token-mean KL of the whole step, whatever the split; with a nonlinear f the KL term is
the token-weighted mean of f over micro-batches (f(KL) of one micro-batch, as the paper's
per-batch formula; identical to the unsplit batch when there is one micro-batch or f is the
identity). Without `num_tokens` everything is a mean over this call's tokens. Tested in
`test_accumulation_sums_to_the_full_batch`.

A tiny worked case (vocab 2, one completion token whose logits are [0, 0] for the policy and
[0, log 3] for the reference, target token 0):

>>> import math, torch
>>> logits = torch.tensor([[[0.0, 0.0], [9.0, 9.0]]])     # (batch 1, seq 2, vocab 2)
>>> ref = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])
>>> labels = torch.tensor([[-100, 0]])                    # position 1 holds the target
>>> total, lm, kl = selftrain_loss(logits, ref, labels, lam=1.0, transform="identity")
>>> round(lm.item(), 4), round(kl.item(), 4)              # -log 0.5; 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75)
(0.6931, 0.1438)
>>> round(total.item(), 3)                                # lm + 1.0 * kl
0.837
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Direction = Literal["policy_ref", "ref_policy"]
Transform = Literal["log", "log1p", "identity"]
DIRECTIONS = ("policy_ref", "ref_policy")
TRANSFORMS = ("log", "log1p", "identity")
IGNORE = -100
DEFAULT_EPS = 1e-6


def kl_transform(kl: torch.Tensor, transform: str, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """f(KL) for a scalar mean KL.

    >>> round(kl_transform(torch.tensor(0.0), "log").item(), 3)   # log(eps), not -inf
    -13.816
    >>> round(kl_transform(torch.tensor(1.0), "log1p").item(), 4)  # log 2
    0.6931
    """
    kl = kl.clamp(min=0.0)
    if transform == "log":
        return torch.log(kl + eps)
    if transform == "log1p":
        return torch.log1p(kl)
    if transform == "identity":
        return kl
    raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")


def _kl_transform_grad(kl: float, transform: str, eps: float) -> float:
    """f'(KL), for the fused path that forms gradients by hand."""
    kl = max(kl, 0.0)
    return {"log": 1.0 / (kl + eps), "log1p": 1.0 / (1.0 + kl), "identity": 1.0}[transform]


def _check(direction: str, transform: str, lam: float) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")


def shifted_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The one shift: (batch, seq) HF labels -> (positions, targets) of the predicting tokens.

    positions: (n, 2) [batch, t] indices into logits[:, :-1]; targets: (n,) token ids.

    >>> shifted_targets(torch.tensor([[-100, 5, 6, -100]]))
    (tensor([[0, 0],
            [0, 1]]), tensor([5, 6]))
    """
    nxt = labels[:, 1:]
    positions = (nxt != IGNORE).nonzero()
    return positions, nxt[positions[:, 0], positions[:, 1]]


def _token_terms(
    z: torch.Tensor, r: torch.Tensor, y: torch.Tensor, direction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE and KL of a chunk. z, r: (n, vocab) policy/reference logits; y: (n,)."""
    logp = F.log_softmax(z.float(), dim=-1)
    logq = F.log_softmax(r.float(), dim=-1)
    ce = F.nll_loss(logp, y, reduction="sum")
    if direction == "policy_ref":
        kl = (logp.exp() * (logp - logq)).sum()
    else:
        kl = (logq.exp() * (logq - logp)).sum()
    return ce, kl


def _combine(
    lm_sum: torch.Tensor, kl_sum: torch.Tensor, n: int, lam: float, transform: str, eps: float,
    num_tokens: int | float | torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    denom = torch.as_tensor(
        n if num_tokens is None else num_tokens, dtype=torch.float32, device=lm_sum.device
    )
    lm = lm_sum / denom
    kl = kl_sum / denom
    if n == 0:
        return lm, lm, kl
    if lam == 0:
        return lm, lm, kl.detach()  # exactly SFT: nothing of the KL reaches the graph
    total = lm + lam * (n / denom) * kl_transform(kl_sum / n, transform, eps)
    return total, lm, kl


def selftrain_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.5,
    direction: Direction = "policy_ref",
    transform: Transform = "log",
    chunk_size: int = 128,
    eps: float = DEFAULT_EPS,
    num_tokens: int | float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, lm, kl) from logits (batch, seq, vocab), ref_logits (same), labels (batch, seq).

    `chunk_size` tokens' log-softmaxes at a time (0 = all at once); chunks are checkpointed, so
    backward recomputes one chunk's softmaxes at a time instead of keeping all of them.
    `ref_logits` gets no gradient. See the module docstring for `num_tokens` and `eps`.
    """
    _check(direction, transform, lam)
    positions, y = shifted_targets(labels)
    b, t = positions[:, 0], positions[:, 1]
    z, r = logits[:, :-1][b, t], ref_logits[:, :-1][b, t].detach()  # (n, vocab)
    n = int(y.numel())
    step = n if chunk_size <= 0 else chunk_size
    lm_sum = logits.new_zeros((), dtype=torch.float32)
    kl_sum = logits.new_zeros((), dtype=torch.float32)
    for s in range(0, n, max(step, 1)):
        zs, rs, ys = z[s : s + step], r[s : s + step], y[s : s + step]
        if chunk_size > 0 and zs.requires_grad:
            ce, kl = checkpoint(_token_terms, zs, rs, ys, direction, use_reentrant=False)
        else:
            ce, kl = _token_terms(zs, rs, ys, direction)
        lm_sum = lm_sum + ce
        kl_sum = kl_sum + kl
    return _combine(lm_sum, kl_sum, n, lam, transform, eps, num_tokens)


class _FusedLoss(torch.autograd.Function):
    """Chunked lm_head + CE + KL with gradients formed in the forward pass.

    Per token (z policy logits, p = softmax z, q = softmax of the reference logits, y target):
        d CE / dz       = p - onehot(y)
        d KL(P||Q) / dz = p * (log p - log q - KL_token)
        d KL(Q||P) / dz = p - q
    The LM and KL parts are accumulated separately (their mix, lam * f'(KL), is known only
    after the last chunk) and combined once at the end; backward scales by the upstream grad.
    """

    @staticmethod
    def forward(ctx, h, weight, rh, ref_weight, y, lam, direction, transform, eps, denom, chunk_size):  # type: ignore[override]
        n = h.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_h_lm = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        g_h_kl = torch.zeros_like(g_h_lm) if need_h and lam > 0 else None
        g_w_lm = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        g_w_kl = torch.zeros_like(g_w_lm) if need_w and lam > 0 else None
        lm_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        kl_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        wf = weight.float() if weight.dtype != torch.float32 else weight
        rwf = ref_weight.float() if ref_weight.dtype != torch.float32 else ref_weight
        for s in range(0, n, chunk_size):
            hs = h[s : s + chunk_size].float()
            ys = y[s : s + chunk_size]
            logp = torch.log_softmax(hs @ wf.T, dim=-1)  # (c, vocab)
            logq = torch.log_softmax(rh[s : s + chunk_size].float() @ rwf.T, dim=-1)
            rows = torch.arange(ys.numel(), device=h.device)
            lm_sum += -logp[rows, ys].sum()
            p = logp.exp()
            if direction == "policy_ref":
                diff = logp.sub_(logq)  # logp is not needed after this
                kl_tok = (p * diff).sum(-1, keepdim=True)
                kl_sum += kl_tok.sum()
                g_kl = diff.sub_(kl_tok).mul_(p) if lam > 0 else None
            else:
                q = logq.exp()
                kl_sum += (q * (logq - logp)).sum()
                g_kl = (p - q) if lam > 0 else None
            g_lm = p
            g_lm[rows, ys] -= 1.0  # p is not needed after this
            if need_h:
                g_h_lm[s : s + chunk_size] = g_lm @ wf
                if g_kl is not None:
                    g_h_kl[s : s + chunk_size] = g_kl @ wf
            if need_w:
                g_w_lm.addmm_(g_lm.T, hs)
                if g_kl is not None:
                    g_w_kl.addmm_(g_kl.T, hs)
        # d total = d lm_sum / denom + lam * (n / denom) * f'(K) * d kl_sum / n,  K = kl_sum / n
        c_kl = lam * _kl_transform_grad(kl_sum.item() / n, transform, eps) / denom if lam > 0 else 0.0
        g_h = g_h_lm.div_(denom) if need_h else None
        if g_h is not None and g_h_kl is not None:
            g_h.add_(g_h_kl, alpha=c_kl)
        g_w = g_w_lm.div_(denom) if need_w else None
        if g_w is not None and g_w_kl is not None:
            g_w.add_(g_w_kl, alpha=c_kl)
            del g_w_kl
        # Kept on ctx, not save_for_backward, so backward can hand over the only reference and
        # autograd adopts the tensor as `.grad` instead of copying a (vocab, hidden) block.
        ctx.g_h = g_h.to(h.dtype) if g_h is not None else None
        ctx.g_w = g_w.to(weight.dtype) if g_w is not None else None
        del g_h, g_w
        f_kl = kl_transform(kl_sum / n, transform, eps)
        total = lm_sum / denom + (lam * (n / denom) * f_kl if lam > 0 else 0.0)
        ctx.mark_non_differentiable(lm_sum, kl_sum)
        return total, lm_sum, kl_sum

    @staticmethod
    def backward(ctx, grad_total, _grad_lm_sum, _grad_kl_sum):  # type: ignore[override]
        g_h, g_w = ctx.g_h, ctx.g_w
        ctx.g_h = ctx.g_w = None
        # In place: these buffers exist only for this backward, and a (vocab, hidden) copy is
        # as large as the weight itself.
        return (
            g_h.mul_(grad_total.to(g_h.dtype)) if g_h is not None else None,
            g_w.mul_(grad_total.to(g_w.dtype)) if g_w is not None else None,
            None, None, None, None, None, None, None, None, None,
        )  # fmt: skip


def selftrain_loss_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_hidden: torch.Tensor,
    ref_weight: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.5,
    direction: Direction = "policy_ref",
    transform: Transform = "log",
    chunk_size: int = 128,
    eps: float = DEFAULT_EPS,
    num_tokens: int | float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, lm, kl) like `selftrain_loss`, from hidden (batch, seq, hidden) and the lm_head
    weights (vocab, hidden), without full logits. Only `total` carries gradient (to `hidden`
    and `weight`); `lm` and `kl` are detached values for logging. Peak extra memory: a few
    (chunk_size, vocab) fp32 blocks plus, when `weight` needs a gradient, two (vocab, hidden)
    accumulators.

    >>> _ = torch.manual_seed(0); h, w = torch.randn(1, 4, 3), torch.randn(5, 3)
    >>> labels = torch.tensor([[-100, 1, 2, 3]])
    >>> a = selftrain_loss_from_hidden(h, w, h + 0.1, w, labels, chunk_size=2)
    >>> b = selftrain_loss(h @ w.T, (h + 0.1) @ w.T, labels)
    >>> all(torch.allclose(x, y_, atol=1e-5) for x, y_ in zip(a, b))
    True
    """
    _check(direction, transform, lam)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be >= 1 for the fused path, got {chunk_size}")
    positions, y = shifted_targets(labels)
    b, t = positions[:, 0], positions[:, 1]
    h = hidden[:, :-1][b, t]  # (n, hidden): only the tokens that predict a completion token
    rh = ref_hidden[:, :-1][b, t].detach()
    n = int(y.numel())
    denom = float(n if num_tokens is None else num_tokens)
    if n == 0:
        zero = (h.sum() + weight.sum()) * 0.0  # keeps the graph (DDP wants every parameter used)
        return zero, zero.detach(), zero.detach()
    total, lm_sum, kl_sum = _FusedLoss.apply(
        h, weight, rh, ref_weight.detach(), y, float(lam), direction, transform, eps, denom, chunk_size
    )
    return total, lm_sum / denom, kl_sum / denom
