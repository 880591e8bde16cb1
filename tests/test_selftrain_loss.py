"""The self-training loss: hand-computed values, the one label shift, masking, lam=0 = SFT,
chunked == unchunked, the fused hidden-state path == the logits path, gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hiprm.selftrain.loss import selftrain_loss, selftrain_loss_from_hidden

DIRECTIONS = ["policy_ref", "ref_policy"]
TRANSFORMS = ["log", "log1p", "identity"]


def _tiny():
    """One sequence of 3 positions, vocab 3; only position 2 is a completion token (target 2),
    predicted by the logits at position 1."""
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, math.log(2)], [1.0, 2.0, 3.0]]], requires_grad=True)
    ref = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [3.0, 2.0, 1.0]]])
    labels = torch.tensor([[-100, -100, 2]])
    return logits, ref, labels


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_hand_computed_values(direction, transform):
    logits, ref, labels = _tiny()
    p = [0.25, 0.25, 0.5]  # softmax([0, 0, log 2])
    q = [0.5, 0.25, 0.25]  # softmax([log 2, 0, 0])
    lm_want = -math.log(0.5)
    if direction == "policy_ref":
        kl_want = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))  # 0.25 log .5 + 0.5 log 2
    else:
        kl_want = sum(b * math.log(b / a) for a, b in zip(p, q, strict=True))
    assert kl_want == pytest.approx(0.25 * math.log(2), rel=1e-12)  # both directions happen to agree here
    f = {"log": math.log(kl_want + 1e-6), "log1p": math.log1p(kl_want), "identity": kl_want}[transform]
    total, lm, kl = selftrain_loss(logits, ref, labels, lam=0.5, direction=direction, transform=transform)
    assert lm.item() == pytest.approx(lm_want, rel=1e-6)
    assert kl.item() == pytest.approx(kl_want, rel=1e-5)
    assert total.item() == pytest.approx(lm_want + 0.5 * f, rel=1e-5)


def test_directions_differ_when_they_should():
    logits = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]])
    ref = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1]])
    p = torch.softmax(torch.tensor([0.0, 0.0]), -1)  # the logits at position 0 predict token 1
    pr = selftrain_loss(logits, ref, labels, direction="policy_ref")[2].item()
    rp = selftrain_loss(torch.tensor([[[0.0, 3.0], [0.0, 0.0]]]), ref, labels, direction="ref_policy")[
        2
    ].item()
    assert pr == pytest.approx(0.0, abs=1e-7) and float(p[0]) == 0.5
    q = torch.softmax(torch.tensor([0.0, 3.0]), -1)
    want_rp = float((0.5 * torch.log(0.5 / q)).sum())  # KL(Q||P) with Q uniform, P = softmax([0, 3])
    assert rp == pytest.approx(want_rp, rel=1e-5)
    pr2 = selftrain_loss(torch.tensor([[[0.0, 3.0], [0.0, 0.0]]]), ref, labels, direction="policy_ref")[
        2
    ].item()
    assert pr2 == pytest.approx(float((q * torch.log(q / 0.5)).sum()), rel=1e-5) and pr2 != pytest.approx(rp)


def _random(batch=2, seq=7, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq, vocab, generator=g)
    ref = torch.randn(batch, seq, vocab, generator=g)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[:, :3] = -100  # prompt
    labels[1, -2:] = -100  # padding
    return logits, ref, labels


def test_lam_zero_is_plain_sft_gradient():
    logits, ref, labels = _random()
    a = logits.clone().requires_grad_()
    total, lm, _ = selftrain_loss(a, ref, labels, lam=0.0, chunk_size=3)
    total.backward()
    b = logits.clone().requires_grad_()
    sft = F.cross_entropy(b[:, :-1].reshape(-1, b.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    sft.backward()
    assert total.item() == pytest.approx(sft.item(), rel=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8)
    # also through the fused path: hidden -> lm_head
    h = torch.randn(2, 7, 5)
    w = torch.randn(11, 5)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    selftrain_loss_from_hidden(h1, w1, torch.randn(2, 7, 5), w, labels, lam=0.0, chunk_size=2)[0].backward()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    z = h2 @ w2.T
    F.cross_entropy(z[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100).backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_kl_is_zero_when_policy_is_reference(direction):
    logits, _, labels = _random()
    total, lm, kl = selftrain_loss(logits, logits.clone(), labels, lam=1.0, direction=direction)
    assert kl.item() == 0.0
    assert math.isfinite(total.item()) and total.item() == pytest.approx(lm.item() + math.log(1e-6), rel=1e-6)
    h, w = torch.randn(2, 7, 5), torch.randn(11, 5)
    _, _, kl2 = selftrain_loss_from_hidden(h, w, h.clone(), w.clone(), labels, lam=1.0, direction=direction)
    assert abs(kl2.item()) < 1e-7


def test_labels_are_shifted_exactly_once():
    """Logits at t that put all mass on labels[t+1] give ~zero LM loss; the reference code's double
    shift (position t predicting labels[t+2]) would see a large loss."""
    vocab, labels = 6, torch.tensor([[-100, 1, 2, 3, 4, 5]])
    once = torch.full((1, 6, vocab), -20.0)
    twice = torch.full((1, 6, vocab), -20.0)
    for t in range(5):
        once[0, t, labels[0, t + 1]] = 20.0
        if t + 2 < 6:
            twice[0, t, labels[0, t + 2]] = 20.0
    assert selftrain_loss(once, once, labels, lam=0.0)[1].item() < 1e-6
    assert selftrain_loss(twice, twice, labels, lam=0.0)[1].item() > 10.0


def test_prompt_and_padding_carry_no_loss():
    logits, ref, labels = _random()
    a = logits.clone().requires_grad_()
    base = selftrain_loss(a, ref, labels, lam=1.0, chunk_size=2)
    base[0].backward()
    # positions whose next label is -100 (and the last one) predict nothing: zero gradient
    masked = torch.ones(2, 7, dtype=torch.bool)
    masked[:, :-1] = labels[:, 1:] == -100
    assert a.grad[masked].abs().max().item() == 0.0
    assert a.grad[~masked].abs().max().item() > 0.0
    # changing them (in either model) changes nothing
    noisy, noisy_ref = logits.clone(), ref.clone()
    noisy[masked] += 100.0 * torch.randn_like(noisy[masked])
    noisy_ref[masked] -= 50.0
    again = selftrain_loss(noisy, noisy_ref, labels, lam=1.0)
    for x, y in zip(base, again, strict=True):
        assert x.item() == pytest.approx(y.item(), rel=1e-6)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_chunked_equals_unchunked_and_fused_equals_logits(direction, transform):
    torch.manual_seed(3)
    h, rh = torch.randn(2, 9, 6), torch.randn(2, 9, 6)
    w, rw = torch.randn(13, 6), torch.randn(13, 6)
    _, _, labels = _random(seq=9, vocab=13)
    kw = dict(lam=0.7, direction=direction, transform=transform)
    results = []
    for mode, chunk in [
        ("logits", 0),
        ("logits", 2),
        ("logits", 5),
        ("fused", 1),
        ("fused", 3),
        ("fused", 100),
    ]:
        h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
        if mode == "logits":
            out = selftrain_loss(h1 @ w1.T, rh @ rw.T, labels, chunk_size=chunk, **kw)
        else:
            out = selftrain_loss_from_hidden(h1, w1, rh, rw, labels, chunk_size=chunk, **kw)
        out[0].backward()
        results.append((mode, chunk, [o.detach() for o in out], h1.grad, w1.grad))
    _, _, v0, gh0, gw0 = results[0]
    for mode, chunk, v, gh, gw in results[1:]:
        for a, b in zip(v0, v, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{mode} chunk {chunk}")
        torch.testing.assert_close(gh0, gh, rtol=1e-4, atol=1e-6, msg=f"{mode} chunk {chunk} grad hidden")
        torch.testing.assert_close(gw0, gw, rtol=1e-4, atol=1e-6, msg=f"{mode} chunk {chunk} grad weight")


@pytest.mark.parametrize("fused", [False, True])
def test_accumulation_sums_to_the_full_batch(fused):
    """Two micro-batches with num_tokens = the step's token count: lm and kl add up exactly to the
    full batch's means (and so do the LM gradients); with f = identity so does total; with a
    nonlinear f the total is the token-weighted mean of f over the micro-batches."""
    torch.manual_seed(5)
    h, rh, w, rw = torch.randn(4, 8, 6), torch.randn(4, 8, 6), torch.randn(10, 6), torch.randn(10, 6)
    labels = torch.randint(0, 10, (4, 8))
    labels[:, :2] = -100
    labels[0, 5:] = -100
    labels[3, 3:] = -100  # micro-batches with different token counts
    n_all = int((labels[:, 1:] != -100).sum())

    def loss(hh, ww, lab, transform, num_tokens=None, rhh=rh):
        if fused:
            return selftrain_loss_from_hidden(
                hh, ww, rhh, rw, lab, 0.5, transform=transform, num_tokens=num_tokens
            )
        return selftrain_loss(hh @ ww.T, rhh @ rw.T, lab, 0.5, transform=transform, num_tokens=num_tokens)

    for transform in ("identity", "log"):
        w_full = w.clone().requires_grad_()
        full = loss(h, w_full, labels, transform)
        full[0].backward()
        w_acc = w.clone().requires_grad_()
        parts = [loss(h[s], w_acc, labels[s], transform, n_all, rh[s]) for s in (slice(0, 2), slice(2, 4))]
        for p in parts:
            p[0].backward()
        acc = [sum(p[i] for p in parts) for i in range(3)]
        torch.testing.assert_close(acc[1], full[1])  # lm
        torch.testing.assert_close(acc[2], full[2])  # kl
        if transform == "identity":
            torch.testing.assert_close(acc[0], full[0])
            torch.testing.assert_close(w_acc.grad, w_full.grad, rtol=1e-5, atol=1e-6)
        else:
            ns = [int((labels[s, 1:] != -100).sum()) for s in (slice(0, 2), slice(2, 4))]
            kls = [float(p[2].detach()) * n_all / n for p, n in zip(parts, ns, strict=True)]
            want = float(full[1].detach()) + 0.5 * sum(
                n / n_all * math.log(k + 1e-6) for n, k in zip(ns, kls, strict=True)
            )
            assert float(acc[0].detach()) == pytest.approx(want, rel=1e-5)


def test_bad_arguments_are_named():
    logits, ref, labels = _random()
    with pytest.raises(ValueError, match="direction"):
        selftrain_loss(logits, ref, labels, direction="both")
    with pytest.raises(ValueError, match="transform"):
        selftrain_loss(logits, ref, labels, transform="sqrt")
    with pytest.raises(ValueError, match="lam"):
        selftrain_loss(logits, ref, labels, lam=-1)


def test_bf16_fused_runs_and_is_close():
    torch.manual_seed(0)
    h, rh, w = torch.randn(1, 16, 8), torch.randn(1, 16, 8), torch.randn(20, 8)
    labels = torch.randint(0, 20, (1, 16))
    want = selftrain_loss_from_hidden(h, w, rh, w, labels)
    hb = h.bfloat16().requires_grad_()
    got = selftrain_loss_from_hidden(hb, w.bfloat16(), rh.bfloat16(), w.bfloat16(), labels)
    got[0].backward()
    assert hb.grad.dtype == torch.bfloat16
    assert got[1].item() == pytest.approx(want[1].item(), rel=2e-2)
