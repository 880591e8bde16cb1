"""Prefix-trie packing: token sequences that share a prefix share its computation.

A causal LM's hidden state at a token depends only on that token, the tokens before it and their
positions. Reward-model inputs come in families that start alike: the steps of one solution (each
input is the previous one plus a step), the rated completions of one step, a single step and the
merged pair that begins with it (HRM), a tree node and its children. Run one per row, more than
90% of their tokens are computed again and again.

`pack(seqs, row_tokens)` lays the distinct prefixes of a set of sequences (the nodes of their
token trie) into rows of at most `row_tokens` tokens: each row holds a run of sequences in
lexicographic order, so the trie nodes they share appear once, and the position id of a token is
its depth in the trie. Each sequence's result is read at its own last token (which may sit inside
another sequence's path: a single step inside its merged pair). A family larger than a row is
split between rows; the later row repeats only the shared part it needs.
(Why lexicographic order: of all sequences before `s` in sorted order, the one sharing the
longest prefix with `s` is its immediate predecessor, so one comparison finds where `s` leaves
the trie.)

Attention. A token may see exactly its ancestors and itself. A dense (L, L) mask would do, but
its cost grows with the square of the row (a 4,000-token row of SmolLM2 then spends most of its
time on masked-out scores), so rows would have to stay short and repeat their shared parts. The
attention function registered here as `hiprm_trie` computes instead, for each group of sibling
segments (the new tokens of sequences that leave the trie at the same node), attention over
their common ancestors plus their own tokens: the work per token is its depth, as in a row of its
own. Calls without a plan (ordinary padded batches) go to transformers' `sdpa` unchanged, with
`sdpa`'s masks, so a model switched to `hiprm_trie` (`use_trie_attention`) behaves as before
everywhere else. The implementation only needs the model's attention to go through
transformers' `AttentionInterface` (Llama, Qwen2, Mistral, ... on CPU and GPU alike); callers
check it once on real inputs (`hiprm.rm.train.trie_batches_ok`, `Scorer`) and use plain rows
if it is not exact.

`classifier_logits(model, batch)` runs a 2-label sequence classifier over such a batch and
returns one row of logits per sequence. Training (`TrieCollator`, `hiprm.rm.train`) and scoring
(`hiprm.rm.scorer.Scorer`) both use these functions; there is no second packing.
`PrefixBlockSampler` is the training order of both batchings (prefix blocks, or length groups
for plain rows): a function of (seed, epoch) only, so a resumed run trains on the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Packed:
    """Rows of trie nodes; `ends[k]` = (row, index) of sequence k's last token, in input order."""

    ids: list[list[int]] = field(default_factory=list)
    parents: list[list[int]] = field(default_factory=list)  # index of the parent in its row; -1 = root
    depth: list[list[int]] = field(default_factory=list)  # position id = depth in the trie
    ends: list[tuple[int, int]] = field(default_factory=list)
    # Per row: (first index, length, attach node) of each run of new tokens; attach = the row
    # index of the node it hangs from (-1 = the root).
    segments: list[list[tuple[int, int, int]]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.ids)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """
    >>> common_prefix_len([1, 2, 3, 4], [1, 2, 5])
    2
    """
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def token_order(seqs: Sequence[Sequence[int]]) -> list[int]:
    """Indices of `seqs` in lexicographic token order: sequences that share a prefix sit together
    and a prefix comes before its extensions (what `pack` and `PrefixBlockSampler` walk).

    >>> token_order([[2, 1], [1, 2, 3], [1, 2]])
    [2, 1, 0]
    """
    return sorted(range(len(seqs)), key=lambda i: list(seqs[i]))


def tolerance(dtype: Any) -> float:
    """How far trie results may be from plain ones (float rounding of a different reduction
    order): 1e-3 in float32, 3e-2 in half precision. One bound for training and scoring."""
    import torch

    return 1e-3 if dtype == torch.float32 else 3e-2


def pack(seqs: Sequence[Sequence[int]], row_tokens: int) -> Packed:
    """Pack the trie of `seqs` into rows of <= row_tokens tokens (a longer sequence gets a row
    of its own length: a row always holds whole sequences).

    >>> p = pack([[1, 2, 3], [1, 2], [1, 2, 4], [5]], row_tokens=8)
    >>> p.ids, p.parents, p.depth
    ([[1, 2, 3, 4, 5]], [[-1, 0, 1, 1, -1]], [[0, 1, 2, 2, 0]])
    >>> p.ends
    [(0, 2), (0, 1), (0, 3), (0, 4)]
    >>> pack([[1, 2, 3], [1, 2, 4]], row_tokens=3).ids  # split: the second row repeats [1, 2]
    [[1, 2, 3], [1, 2, 4]]
    """
    if row_tokens < 1:
        raise ValueError(f"row_tokens must be >= 1, got {row_tokens}")
    out = Packed()
    ends: list[tuple[int, int] | None] = [None] * len(seqs)
    ids: list[int] = []
    parents: list[int] = []
    depth: list[int] = []
    segments: list[tuple[int, int, int]] = []
    path: list[int] = []  # row index of each token of the previous sequence in this row
    prev: Sequence[int] = ()

    def flush() -> None:
        out.ids.append(ids.copy())
        out.parents.append(parents.copy())
        out.depth.append(depth.copy())
        out.segments.append(segments.copy())
        ids.clear(), parents.clear(), depth.clear(), segments.clear()

    for k in token_order(seqs):
        s = seqs[k]
        if len(s) == 0:
            raise ValueError(f"sequence {k} is empty")
        keep = common_prefix_len(prev, s)
        if ids and len(ids) + len(s) - keep > row_tokens:
            flush()
            keep, path = 0, []
        del path[keep:]
        if keep < len(s):
            segments.append((len(ids), len(s) - keep, path[keep - 1] if keep else -1))
        for d in range(keep, len(s)):
            parents.append(path[d - 1] if d else -1)
            depth.append(d)
            ids.append(int(s[d]))
            path.append(len(ids) - 1)
        ends[k] = (len(out.ids), path[len(s) - 1])
        prev = s
    if ids:
        flush()
    out.ends = [e for e in ends if e is not None]
    return out


@dataclass
class _Group:
    """Sibling segments of one row: queries `q` attend keys `k` (their common ancestors, then
    their own tokens) under `mask` (True = may attend)."""

    q: Any  # (nq,) long
    k: Any  # (nk,) long
    mask: Any  # (nq, nk) bool


@dataclass
class TriePlan:
    """What `hiprm_trie` attention needs for one batch: the groups, and the permutation that puts
    the groups' outputs (concatenated per row) back in row order.

    Per row, the groups' query and key indices are also kept concatenated (`q_index`, `k_index`,
    with the groups' sizes): attention gathers a row's queries, keys and values with one index
    each and splits them into views. One gather per group would cost, in the backward pass, one
    zero-filled gradient of the whole row per group (a tenth of a training step on SmolLM2)."""

    groups: list[list[_Group]]  # per row
    inverse: list[Any]  # per row: (L,) long
    q_index: list[Any] = field(init=False)  # per row: the groups' `q`, concatenated
    k_index: list[Any] = field(init=False)
    q_sizes: list[list[int]] = field(init=False)
    k_sizes: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        import torch

        self.q_index = [torch.cat([g.q for g in row]) for row in self.groups]
        self.k_index = [torch.cat([g.k for g in row]) for row in self.groups]
        self.q_sizes = [[len(g.q) for g in row] for row in self.groups]
        self.k_sizes = [[len(g.k) for g in row] for row in self.groups]

    def to(self, device: Any) -> TriePlan:
        move = [[_Group(g.q.to(device), g.k.to(device), g.mask.to(device)) for g in row] for row in self.groups]
        return TriePlan(move, [i.to(device) for i in self.inverse])


def _row_groups(packed: Packed, r: int, width: int) -> tuple[list[_Group], Any]:
    import torch

    parents = packed.parents[r]
    by_attach: dict[int, list[tuple[int, int]]] = {}
    for start, n, attach in packed.segments[r]:
        by_attach.setdefault(attach, []).append((start, n))
    n_real = len(packed.ids[r])
    if n_real < width:  # padding: a run of its own that sees only itself (never read)
        by_attach.setdefault(-2, []).append((n_real, width - n_real))
    groups, order = [], []
    for attach, members in by_attach.items():
        anc: list[int] = []
        node = attach  # -1 (the root) and -2 (padding) have no ancestors
        while node >= 0:
            anc.append(node)
            node = parents[node]
        anc.reverse()
        own = [i for start, n in members for i in range(start, start + n)]
        nq = len(own)
        mask = torch.zeros((nq, len(anc) + nq), dtype=torch.bool)
        mask[:, : len(anc)] = True
        o = 0
        for _, n in members:
            mask[o : o + n, len(anc) + o : len(anc) + o + n] = torch.ones((n, n), dtype=torch.bool).tril()
            o += n
        groups.append(_Group(torch.tensor(own), torch.tensor(anc + own), mask))
        order += own
    inverse = torch.empty(width, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(width)
    return groups, inverse


def tensors(packed: Packed, pad_id: int, rows: Sequence[int] | None = None) -> dict[str, Any]:
    """Model inputs for some rows of `packed` (all by default), right-padded to the longest:

    input_ids, position_ids (R, L) long; `trie_plan` (TriePlan) for `hiprm_trie` attention;
    attention_mask: a (R, 1, 1, 1) placeholder, so transformers builds no (L, L) mask;
    ends (n,) long: flat index (row * L + i) of the last token of each sequence whose row is
    among `rows`, in input order; `sequences`: which sequences those are.
    """
    import torch

    rows = list(range(len(packed.ids))) if rows is None else list(rows)
    width = max(len(packed.ids[r]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    groups, inverse = [], []
    slot = {r: j for j, r in enumerate(rows)}
    for j, r in enumerate(rows):
        n = len(packed.ids[r])
        ids[j, :n] = torch.tensor(packed.ids[r])
        pos[j, :n] = torch.tensor(packed.depth[r])
        g, inv = _row_groups(packed, r, width)
        groups.append(g)
        inverse.append(inv)
    picked = [(k, slot[r] * width + i) for k, (r, i) in enumerate(packed.ends) if r in slot]
    return {
        "input_ids": ids,
        "position_ids": pos,
        "attention_mask": torch.ones((len(rows), 1, 1, 1), dtype=torch.bool),
        "trie_plan": TriePlan(groups, inverse),
        "ends": torch.tensor([f for _, f in picked], dtype=torch.long),
        "sequences": [k for k, _ in picked],
    }


def _trie_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
    scaling: float | None = None, trie_plan: TriePlan | None = None, **kwargs: Any,
) -> tuple[Any, None]:
    """`hiprm_trie`: attention by sibling groups when a TriePlan is given, else plain `sdpa`.

    query (R, H, L, d), key / value (R, H_kv, L, d) -> (R, L, H, d), as transformers expects.
    """
    import torch
    from torch.nn.functional import scaled_dot_product_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if trie_plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for r, groups in enumerate(trie_plan.groups):
        qs = query[r : r + 1, :, trie_plan.q_index[r]].split(trie_plan.q_sizes[r], dim=2)
        k_index, k_sizes = trie_plan.k_index[r], trie_plan.k_sizes[r]
        ks = key[r : r + 1, :, k_index].split(k_sizes, dim=2)
        vs = value[r : r + 1, :, k_index].split(k_sizes, dim=2)
        outs = [
            scaled_dot_product_attention(q, k, v, attn_mask=g.mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa)
            for g, q, k, v in zip(groups, qs, ks, vs, strict=True)
        ]  # fmt: skip
        rows.append(torch.cat(outs, dim=2)[:, :, trie_plan.inverse[r]])
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("hiprm_trie", _trie_attention)
    AttentionMaskInterface.register("hiprm_trie", sdpa_mask)


def use_trie_attention(model: Any) -> str:
    """Switch `model` (all its configs) to `hiprm_trie` attention; returns the previous name.
    Ordinary batches still run as `sdpa`; `restore_attention` undoes it (before saving)."""
    _register()
    m = unwrap(model)
    before = m.config._attn_implementation
    m.config._attn_implementation = "hiprm_trie"
    return before


def restore_attention(model: Any, name: str) -> None:
    unwrap(model).config._attn_implementation = name


def unwrap(model: Any) -> Any:
    """The transformers classifier inside DDP / DeepSpeed (`.module`) and PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def supported(model: Any) -> str | None:
    """None when trie batches can run on this model, else the reason they cannot."""
    m = unwrap(model)
    if not hasattr(m, "score") or not hasattr(m, getattr(m, "base_model_prefix", "")):
        return f"{type(m).__name__} is not a decoder with a `score` head"
    return None


def classifier_logits(model: Any, batch: dict[str, Any]) -> Any:
    """Logits (n, num_labels) at each sequence's last token of a trie batch: `head_rows` of a
    classifier switched to `hiprm_trie` attention."""
    m = unwrap(model)
    if m.config._attn_implementation != "hiprm_trie":
        raise RuntimeError("classifier_logits needs use_trie_attention(model) first")
    return head_rows(model, batch)


def classifier_head(model: Any) -> Any:
    """The classification head of a transformers classifier: `score` (Llama, Qwen2, Mistral, ...;
    Qwen2ForProcessRewardModel's two-layer head), else `classifier` (GPT-2, BERT style)."""
    m = unwrap(model)
    head = getattr(m, "score", None) or getattr(m, "classifier", None)
    if head is None:
        raise ValueError(f"{type(m).__name__} has no `score` or `classifier` head")
    return head


def head_rows(model: Any, batch: dict[str, Any], lm_ids: Sequence[int] | None = None) -> Any:
    """The head's output at each sequence's last token, through `model`'s own forward, for a
    trie batch (`tensors`) or a padded one with `ends` (`hiprm.rm.data_collate.PadCollator`).

    The call goes through `model(...)` itself (not its submodules) so DDP / DeepSpeed hooks and
    gradient sync run as usual. A classifier (`score` or `classifier` head: sequence or token
    classification, Qwen2ForProcessRewardModel) is read per token with a forward hook, and a
    sequence classifier's own pooled logits are ignored: (n, num_labels). A causal LM
    (`lm_ids` = [bad, good] token ids, the tag format) computes its LM head only at the ends'
    columns (`logits_to_keep`): (n, len(lm_ids)).
    """
    import torch

    m = unwrap(model)
    kwargs = {k: batch[k].to(m.device) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if "trie_plan" in batch:
        kwargs["trie_plan"] = batch["trie_plan"].to(m.device)
    ends = batch["ends"].to(m.device)
    if lm_ids is None:
        head = classifier_head(m)
        seen: list[Any] = []
        hook = head.register_forward_hook(lambda _mod, _inp, out: seen.append(out))
        try:
            model(**kwargs, use_cache=False)
        finally:
            hook.remove()
        logits = seen[-1]  # (R, L, num_labels)
        return logits.reshape(-1, logits.shape[-1])[ends]
    width = kwargs["input_ids"].shape[1]
    cols = sorted(set((ends % width).tolist()))
    keep = torch.tensor(cols, device=m.device)
    logits = model(**kwargs, use_cache=False, logits_to_keep=keep).logits  # (R, K, vocab)
    at = {c: k for k, c in enumerate(cols)}
    k_index = torch.tensor([at[c] for c in (ends % width).tolist()], device=m.device)
    return logits[ends // width, k_index][:, list(lm_ids)]


class TrieCollator:
    """A training batch of features -> one trie batch (`tensors`) + labels (batch order kept).

    Output: `tensors`' fields (input_ids, position_ids, attention_mask, trie_plan, ends) and
    labels (B,) float. With `PrefixBlockSampler` a batch holds examples that share prefixes.
    """

    def __init__(self, pad_id: int, row_tokens: int):
        self.pad_id = pad_id
        self.row_tokens = row_tokens

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        packed = pack([f["input_ids"].tolist() for f in batch], self.row_tokens)
        out = tensors(packed, self.pad_id)
        del out["sequences"]  # every row is in: sequences == range(len(batch))
        out["labels"] = torch.tensor([float(f["labels"]) for f in batch], dtype=torch.float32)
        return out


class PrefixBlockSampler:
    """Training order as a function of (seed, epoch) only, for both batchings of `rm train`.

    Trainer calls `set_epoch` and, on resume, skips the batches of the epoch it already trained
    on; since the order depends on nothing else (not on the global RNG, whose state a resumed
    process does not share with the run it continues), those are the very batches trained before
    the interruption, and the rest follows as in an uninterrupted run.

    - `by="prefix"` (trie batching): examples sorted by token ids (so those sharing a prefix sit
      together), cut into blocks of `block`; the blocks are shuffled.
    - `by="length"` (row batching with `optim.group_by_length`): transformers' own length grouping
      (`get_length_grouped_indices`: a random permutation cut into mega-batches of up to 50 blocks,
      each sorted by length, the longest first), drawn from the same (seed, epoch) generator.
    """

    def __init__(self, seqs: Sequence[Sequence[int]], block: int, seed: int, by: str = "prefix"):
        if by not in ("prefix", "length"):
            raise ValueError(f"by must be 'prefix' or 'length', got {by!r}")
        self.by = by
        self.order = token_order(seqs) if by == "prefix" else []  # the token order (prefix blocks)
        self.lengths = [len(s) for s in seqs]
        self.block = max(block, 1)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.by == "length":
            from transformers.trainer_pt_utils import get_length_grouped_indices

            yield from get_length_grouped_indices(self.lengths, self.block, generator=g)
            return
        full = len(self.order) // self.block
        for b in torch.randperm(full, generator=g).tolist():
            yield from self.order[b * self.block : (b + 1) * self.block]
        # The short block goes last: in the middle it would shift every later batch off its block.
        yield from self.order[full * self.block :]
