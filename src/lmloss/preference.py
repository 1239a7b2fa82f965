"""Front door of the offline preference family.

Public: ``preference_loss``, ``fused_preference_loss``, ``lcpo``.

``preference_loss(name, ...)`` takes per-token log-probs; ``fused_preference_loss(name, ...)``
takes hidden states and the LM-head weight, asks the engine for exactly the per-token
statistics the objective (and its options) need, and then runs the *same* code path, so
every objective and option works fused. The objective is found in the registry; its first
parameter's type (an input kind from :mod:`lmloss.objectives.preference.inputs`) says which
keyword tensors it takes:

========== ===================================================================================
kind       keywords
========== ===================================================================================
Pairs      ``chosen_logps``, ``rejected_logps``, ``chosen_mask``, ``rejected_mask`` [B, T];
           ``ref_chosen_logps``, ``ref_rejected_logps`` [B, T] or [B] (summed) or None
Unpaired   ``logps``, ``mask``, ``ref_logps`` [B, T], ``desirable`` [B]; KL samples
           ``kl_logps``, ``kl_mask``, ``ref_kl_logps`` [B', T'] (KTO)
Negatives  ``logps``, ``mask``, ``ref_logps`` [B, T]; reference samples ``sample_logps``,
           ``sample_mask``, ``ref_sample_logps`` [B, K, T] (D2O)
Lists      ``logps``, ``mask``, ``ref_logps`` [B, K, T], ``scores`` [B, K] (LiPO)
========== ===================================================================================

Objective-specific inputs are keywords too (``strength=`` for OSP, per-token ``chosen_kl=``
for TDPO, ...); ``lmloss.describe(name)`` shows the formula and hyper-parameters.

Options for every pairwise objective: ``wpo=True`` (needs ``chosen_sum_sq_probs`` /
``rejected_sum_sq_probs``, or computed fused; ``wpo_clamp=True`` caps the pair weight at 1
as the authors' code does), ``ld_alpha=`` (LD-DPO), ``hypo_weight=`` with
on-policy samples ``online_logps``, ``online_mask``, ``ref_online_logps`` [B, T] or [B, K, T]
(HyPO), and the :func:`lcpo` wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmloss import _checks, registry
from lmloss.head import Head, policy_and_reference_heads
from lmloss.objectives import blocks
from lmloss.objectives.binding import bind
from lmloss.objectives.preference import options as opt
from lmloss.objectives.preference import pair_blocks
from lmloss.objectives.preference.inputs import TOKEN_STATISTICS, Completions, Pairs, kind_of
from lmloss.output import LossOutput
from lmloss.stats import STATISTICS, example_blocks, token_stats
from lmloss.stats.divergence_api import token_pair_terms
from lmloss.stats.model_input import ModelInput, PairSettings

Tensor = torch.Tensor
FAMILY = "preference"


_OPTION_KEYWORDS = ("wpo", "wpo_clamp", "ld_alpha", "hypo_weight", "lcpo_noise")


@dataclass(frozen=True)
class _Options:
    wpo: bool = False
    wpo_clamp: bool = False
    ld_alpha: float | None = None
    hypo_weight: float | None = None
    lcpo_noise: float | None = None

    def __post_init__(self) -> None:
        if self.wpo_clamp and not self.wpo:
            raise ValueError("wpo_clamp=True caps WPO's pair weights: it needs wpo=True")

    def asked(self) -> list[str]:
        names = [("wpo", self.wpo), ("ld_alpha", self.ld_alpha is not None)]
        names += [
            ("hypo_weight", self.hypo_weight is not None),
            ("lcpo", self.lcpo_noise is not None),
        ]
        return [name for name, on in names if on]


# --------------------------------------------------------------------------- plain path


def preference_loss(
    name: str,
    *,
    chosen_logps: Tensor | None = None,
    rejected_logps: Tensor | None = None,
    chosen_mask: Tensor | None = None,
    rejected_mask: Tensor | None = None,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    wpo: bool = False,
    wpo_clamp: bool = False,
    ld_alpha: float | None = None,
    hypo_weight: float | None = None,
    lcpo_noise: float | None = None,
    **kwargs,
) -> LossOutput:
    """The preference objective ``name`` on per-token log-probs.

    Args:
        name: registry name (``lmloss.list_objectives(family="preference")``).
        chosen_logps, rejected_logps: ``[B, T]`` policy log-probs of each target token
            (values at masked positions are ignored).
        chosen_mask, rejected_mask: ``[B, T]`` bool or 0/1 completion masks; every
            completion needs at least one token.
        ref_chosen_logps, ref_rejected_logps: reference log-probs, ``[B, T]`` per token or
            ``[B]`` already summed, or None for reference-free objectives.
        wpo: weight each pair by WPO's weight (needs per-token ``*_sum_sq_probs``).
        wpo_clamp: cap that weight at 1, as the authors' code (``wzhouad/WPO``) does.
        ld_alpha: LD-DPO weight in [0, 1] of tokens past the shorter completion.
        hypo_weight: λ of HyPO's on-policy KL term (needs ``online_*`` samples).
        lcpo_noise: LCPO's label-noise rate (see :func:`lcpo`); None: no re-weighting.
        **kwargs: hyper-parameters (``beta=``, ``eps=``, ``divergence=`` ...) and the inputs
            of other input kinds or of the objective (module docstring).

    Returns:
        :class:`LossOutput`: ``loss`` (mean over examples), ``per_example`` ``[B]`` and
        detached ``metrics`` (implicit rewards, margins, reward accuracy, log-probs).

    Example:
        >>> import torch, lmloss
        >>> logps = torch.log(torch.full((2, 3), 0.5))
        >>> mask = torch.ones(2, 3, dtype=torch.bool)
        >>> out = lmloss.preference_loss("dpo", chosen_logps=logps, rejected_logps=logps,
        ...     chosen_mask=mask, rejected_mask=mask, ref_chosen_logps=logps,
        ...     ref_rejected_logps=logps, beta=0.1)
        >>> round(out.loss.item(), 4)  # log 2 when policy == reference
        0.6931
    """
    pair_inputs = {
        "chosen_logps": chosen_logps,
        "rejected_logps": rejected_logps,
        "chosen_mask": chosen_mask,
        "rejected_mask": rejected_mask,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
    }
    inputs = {k: v for k, v in pair_inputs.items() if v is not None} | kwargs
    options = _Options(wpo, wpo_clamp, ld_alpha, hypo_weight, lcpo_noise)
    return _evaluate(registry.get(name, family=FAMILY), inputs, options)


def lcpo(name: str, *, noise: float = 0.1, **kwargs) -> LossOutput:
    """LCPO: the pairwise objective ``name`` with EM label-noise re-weighting.

    Each pair's loss becomes q·ℓ(y_w, y_l) + (1 − q)·ℓ(y_l, y_w), q the posterior that its
    label is right under the noise rate ``noise`` (see
    :func:`lmloss.objectives.preference.options.lcpo_em`); ``noise=0`` is the base loss.
    Takes the arguments of :func:`preference_loss`, or of :func:`fused_preference_loss`
    when ``hidden=`` is given. ``metrics["lcpo/label_confidence"]`` estimates 1 − noise for
    the next EM step.
    """
    door = fused_preference_loss if "hidden" in kwargs else preference_loss
    return door(name, lcpo_noise=noise, **kwargs)


# --------------------------------------------------------------------------- shared core


def _check_options(entry: registry.Entry, kind: type, options: _Options) -> None:
    asked = options.asked()
    if asked and kind is not Pairs:
        raise ValueError(
            f"{', '.join(asked)} applies to pairwise objectives; {entry.name!r} takes "
            f"{kind.__name__} inputs"
        )
    per_pair = [name for name in asked if name in ("wpo", "lcpo")]
    if per_pair and entry.spec.batch_coupled:
        raise ValueError(
            f"{', '.join(per_pair)} needs per-pair losses, but {entry.name!r} sorts the batch "
            "(its per-example terms belong to ranks, not to pairs)"
        )


def _evaluate(
    entry: registry.Entry, inputs: dict, options: _Options, computed: dict | None = None
) -> LossOutput:
    """Build the objective's inputs, run it with its options. ``inputs`` is consumed;
    ``computed`` holds the fused path's per-group values (prefix -> field -> tensor)."""
    computed = computed or {}
    kind = kind_of(entry.spec)
    _check_options(entry, kind, options)
    primary = f"{kind.PRIMARY[0]}logps"
    if inputs.get(primary) is None and kind.PRIMARY[0] not in computed:
        raise ValueError(f"{entry.name!r} takes {kind.SIGNATURE}; missing {primary}")
    batch = kind.from_keywords(inputs, computed)
    online = None
    if options.hypo_weight is not None:
        online = Completions.from_keywords(
            inputs, "online_", ndim=(2, 3), computed=computed.get("online_")
        )
    needed, hyper = bind(entry.spec, inputs, suggest=_OPTION_KEYWORDS)

    if options.ld_alpha is not None:
        batch = opt.length_desensitized(batch, options.ld_alpha)

    def run(batch):
        return entry(batch, **needed, **hyper)

    out = run(batch) if options.lcpo_noise is None else opt.lcpo_em(run, batch, options.lcpo_noise)
    if options.wpo:
        out = opt.reweighted(out, opt.wpo_weights(batch, clamp=options.wpo_clamp))
    if online is not None:
        out = opt.with_online_kl(out, online, options.hypo_weight)
    return out


# --------------------------------------------------------------------------- fused path


@dataclass(frozen=True)
class _Group:
    """One group of completion rows as the model sees them: hidden [..., T, H], targets [..., T]."""

    hidden: Tensor
    targets: Tensor
    ref_hidden: Tensor | None


def fused_preference_loss(
    name: str,
    *,
    hidden: Tensor,
    targets: Tensor,
    head: Head | None = None,
    ref_hidden: Tensor | None = None,
    ref_head: Head | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    memory_budget: int | None = None,
    wpo: bool = False,
    wpo_clamp: bool = False,
    ld_alpha: float | None = None,
    hypo_weight: float | None = None,
    lcpo_noise: float | None = None,
    **kwargs,
) -> LossOutput:
    """The preference objective ``name`` from hidden states and the LM head, without logits.

    Rows are completions; ``targets`` holds each position's next token, ``ignore_index``
    outside the completion (prompt, padding): the completion mask is ``targets !=
    ignore_index``. Layout of ``hidden`` [..., T, H] / ``targets`` [..., T] by input kind:

    * Pairs: ``[2B, T, H]``, the B chosen rows first, then the B rejected rows (as TRL
      concatenates them).
    * Unpaired / Negatives: ``[B, T, H]``; Lists: ``[B, K, T, H]``.
    * other groups by prefix: ``kl_hidden``/``kl_targets`` (KTO), ``sample_hidden``/
      ``sample_targets`` ``[B, K, T, H]`` (D2O), ``online_hidden``/``online_targets`` (HyPO).

    Reference log-probs: pass ``ref_hidden`` (and ``ref_kl_hidden``, ``ref_sample_hidden``,
    ``ref_online_hidden`` for the other groups) with ``ref_head`` — they go through the
    engine under ``torch.no_grad`` — or precomputed ``ref_chosen_logps`` ... as in
    :func:`preference_loss`. All other keywords (hyper-parameters, per-pair inputs) are
    those of :func:`preference_loss`; the engine statistics the objective declares (and
    ``sum_sq_probs`` for ``wpo``) are computed, then the same objective function runs.

    Args:
        hidden, targets: policy hidden states and targets.
        head: the policy's :class:`lmloss.Head` (weight ``[V, H]``, bias, soft cap, logit
            scale), or by keyword: ``weight``, ``bias``, ``softcap``, ``logit_scale`` (as in
            :func:`lmloss.token_stats`); not both.
        ref_hidden, ref_head: the reference model's hidden states and head (or by keyword:
            ``ref_weight``, ``ref_bias``); its soft cap and logit scale are the policy's.
        ignore_index, temperature, memory_budget: as in :func:`lmloss.token_stats` (applied
            to policy and reference alike).

    Returns:
        :class:`LossOutput`, differentiable w.r.t. ``hidden`` and the head's weight and bias.
        For a per-pair objective whose pairs fit the memory budget, the gradients are
        computed during this call in blocks of whole pairs (3 vocabulary matmuls instead of
        4; see ``docs/engine.md``) and only ``loss`` carries them: ``per_example`` is
        detached.
    """
    head, ref_head = policy_and_reference_heads(FAMILY, (head, ref_head), kwargs)
    weight, bias = head.weight, head.bias
    ref_weight, ref_bias = (None, None) if ref_head is None else (ref_head.weight, ref_head.bias)
    entry = registry.get(name, family=FAMILY)
    options = _Options(wpo, wpo_clamp, ld_alpha, hypo_weight, lcpo_noise)
    engine = {
        "ignore_index": ignore_index,
        "temperature": temperature,
        **head.transform_kwargs(),
        "memory_budget": memory_budget,
    }
    kind = kind_of(entry.spec)
    kwargs.update(hidden=hidden, targets=targets, ref_hidden=ref_hidden)
    groups = _groups(kind, kwargs, with_online=options.hypo_weight is not None)

    engine_stats = {"logp", *(s for s in entry.spec.stats if s in STATISTICS)}
    if options.wpo:
        engine_stats.add(TOKEN_STATISTICS["sum_sq_probs"])
    want = sorted(engine_stats)
    computed = {prefix: {"mask": group.targets != ignore_index} for prefix, group in groups.items()}

    with_ref = {p: g for p, g in groups.items() if g.ref_hidden is not None}
    if with_ref:
        _require_ref_head(ref_weight, with_ref, kwargs)
        with torch.no_grad():
            ref = _stats_of_groups(
                with_ref, lambda g: g.ref_hidden, ref_weight, ref_bias, ["logp"], engine
            )
        for prefix, stats in zip(with_ref, ref):
            computed[prefix]["ref_logps"] = stats["logp"]

    divergences = False
    for suffix, stat in TOKEN_STATISTICS.items():
        if stat in entry.spec.stats and stat not in STATISTICS:
            heads = (head, ref_head)
            for prefix, group in groups.items():
                if kwargs.get(f"{prefix}{suffix}") is None:  # else the caller precomputed it
                    name = f"{prefix}{suffix}"
                    computed[prefix][suffix] = _two_model_statistic(
                        stat, name, group, heads, engine
                    )
                    divergences = True

    if not divergences:  # a per-token divergence is differentiable outside the blocks
        out = _pair_aligned_loss(
            entry, options, groups, kwargs, computed, (weight, bias), want, engine
        )
        if out is not None:
            return out
    policy = _stats_of_groups(groups, lambda g: g.hidden, weight, bias, want, engine)
    for prefix, stats in zip(groups, policy):
        computed[prefix].update(_fields_of(stats))
    return _evaluate(entry, kwargs, options, computed)


def _fields_of(stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """A group's engine statistics by the field names of its completions."""
    fields = {k: stats[stat] for k, stat in TOKEN_STATISTICS.items() if stat in stats}
    return {"logps": stats["logp"], **fields}


def _pair_aligned_loss(
    entry: registry.Entry,
    options: _Options,
    groups: dict[str, _Group],
    kwargs: dict,
    computed: dict,
    head: tuple[Tensor, Tensor | None],
    want: list[str],
    engine: dict,
) -> LossOutput | None:
    """The loss on the one-pass schedule with blocks of whole pairs, or None where that is
    not exact (see :mod:`lmloss.objectives.preference.pair_blocks`), not needed (no
    gradient), switched off (``LMLOSS_PAIR_ONE_PASS=0``) or does not fit the memory
    budget: the recompute schedule then runs.

    Each block runs the objective (with its options) on its pairs for the gradients; the
    returned loss, per-example losses and metrics come from one run on the whole batch of
    the blocks' detached statistics, so they never depend on the blocks.
    """
    weight, bias = head
    hyper = {k: v for k, v in kwargs.items() if not isinstance(v, Tensor)}
    trained = [weight, bias, *(g.hidden for g in groups.values())]
    if not (example_blocks.wanted(trained) and pair_blocks.separable(entry.spec, hyper)):
        return None
    masks = [fields["mask"] for fields in computed.values()]
    pairs = masks[0].shape[0]
    per_pair = pair_blocks.per_pair_inputs(entry.spec, kwargs, pairs)
    if per_pair is None or any(
        m.shape[0] != pairs or bool((m.reshape(-1, m.shape[-1]).sum(-1) == 0).any()) for m in masks
    ):  # an empty completion or a misshapen group: the recompute path's checks name it
        return None

    sizes = [m.numel() for m in masks]

    def by_group(flat: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        split = {name: value.split(sizes) for name, value in flat.items()}
        return {
            prefix: {name: split[name][i].reshape(m.shape) for name in flat}
            for i, (prefix, m) in enumerate(zip(groups, masks))
        }

    def loss_of_pairs(flat: dict[str, Tensor], e0: int, e1: int) -> Tensor:
        block = {
            prefix: {k: v[e0:e1] for k, v in (computed[prefix] | _fields_of(stats)).items()}
            for prefix, stats in by_group(flat).items()
        }
        kw = pair_blocks.sub_batch(kwargs, per_pair, e0, e1)
        loss = _evaluate(entry, kw, options, block).loss
        return loss * blocks.block_share(e0, e1, pairs)

    def flat_rows(pick) -> Tensor:
        rows = [
            pick(g).reshape(-1, *pick(g).shape[len(m.shape) :])
            for g, m in zip(groups.values(), masks)
        ]
        return rows[0] if len(rows) == 1 else torch.cat(rows)

    done = example_blocks.example_one_pass(
        flat_rows(lambda g: g.hidden),
        weight,
        flat_rows(lambda g: g.targets),
        bias,
        example_blocks.ExampleRows.of(masks),
        loss_of_pairs,
        want=want,
        **engine,
    )
    if done is None:
        return None
    total, flat = done
    for prefix, stats in by_group(flat).items():
        computed[prefix].update(_fields_of(stats))
    with torch.no_grad():
        whole = _evaluate(entry, kwargs, options, computed)
    return whole.with_gradients_of(total)


def _groups(kind: type, kw: dict, *, with_online: bool) -> dict[str, _Group]:
    """The kind's row groups, by keyword prefix, from ``hidden``/``targets`` and ``{p}hidden``."""
    hidden, targets, ref_hidden = kw.pop("hidden"), kw.pop("targets"), kw.pop("ref_hidden", None)
    hidden = _checks.require_floating("hidden", hidden)
    targets = _checks.require_tensor("targets", targets)
    _checks.require_shape("targets", targets, hidden.shape[:-1], "hidden.shape[:-1]")
    if ref_hidden is not None:
        _checks.require_shape("ref_hidden", ref_hidden, hidden.shape, "hidden")
    parts = len(kind.PRIMARY)
    if hidden.dim() < 2 or hidden.shape[0] % parts:
        raise ValueError(
            f"hidden must stack the {' then '.join(p.rstrip('_') for p in kind.PRIMARY)} rows "
            f"along dim 0 (a multiple of {parts} rows), got shape {tuple(hidden.shape)}"
        )

    def chunks(t: Tensor | None) -> list[Tensor | None]:
        return [None] * parts if t is None else list(t.chunk(parts, dim=0))

    groups = {
        prefix: _Group(h, t, r)
        for prefix, h, t, r in zip(
            kind.PRIMARY, chunks(hidden), chunks(targets), chunks(ref_hidden)
        )
    }
    for prefix in (*kind.EXTRA, *(("online_",) if with_online else ())):
        if kw.get(f"{prefix}hidden") is None:
            continue
        extra_hidden = _checks.require_floating(f"{prefix}hidden", kw.pop(f"{prefix}hidden"))
        extra_targets = kw.pop(f"{prefix}targets", None)
        if extra_targets is None:
            raise ValueError(f"{prefix}hidden needs {prefix}targets")
        _checks.require_shape(
            f"{prefix}targets", extra_targets, extra_hidden.shape[:-1], f"{prefix}hidden.shape[:-1]"
        )
        extra_ref = kw.pop(f"ref_{prefix}hidden", None)
        if extra_ref is not None:
            _checks.require_shape(
                f"ref_{prefix}hidden", extra_ref, extra_hidden.shape, f"{prefix}hidden"
            )
        groups[prefix] = _Group(extra_hidden, extra_targets, extra_ref)
    return groups


def _stats_of_groups(groups: dict[str, _Group], pick, weight, bias, want, engine) -> list:
    """One engine call over the rows of all groups; per-group TokenStats-like dicts back."""
    rows = [pick(g).reshape(-1, pick(g).shape[-1]) for g in groups.values()]
    targets = [g.targets.reshape(-1) for g in groups.values()]
    stats = token_stats(
        rows[0] if len(rows) == 1 else torch.cat(rows),
        weight,
        targets[0] if len(targets) == 1 else torch.cat(targets),
        bias,
        want=want,
        **engine,
    ).asdict()
    sizes = [t.numel() for t in targets]
    split = {name: value.split(sizes) for name, value in stats.items()}
    return [
        {name: split[name][i].reshape(g.targets.shape) for name in stats}
        for i, g in enumerate(groups.values())
    ]


def _require_ref_head(ref_weight, with_ref: dict, kw: dict) -> None:
    if ref_weight is None:
        raise ValueError("ref_hidden needs ref_weight (the reference model's LM-head weight)")
    for prefix in with_ref:
        if kw.get(f"ref_{prefix}logps") is not None:
            raise ValueError(f"give either ref_{prefix}hidden or ref_{prefix}logps, not both")


def _two_model_statistic(
    stat: str, name: str, group: _Group, heads: tuple[Head, Head | None], engine: dict
) -> Tensor:
    """Per-token divergence ``stat`` between reference (teacher) and policy (student): the
    group's input ``name`` (e.g. ``chosen_kl``). ``heads``: the policy's and the reference's."""
    head, ref_head = heads
    if group.ref_hidden is None or ref_head is None:
        raise ValueError(
            "the per-token KL needs the reference model: pass ref_hidden= and ref_head= "
            f"(or ref_weight=; or {name}= precomputed)"
        )
    return token_pair_terms(
        ModelInput(group.hidden, head),
        ModelInput(group.ref_hidden, ref_head),
        (stat,),
        mask=group.targets != engine["ignore_index"],
        settings=PairSettings(engine["temperature"], engine["memory_budget"]),
    )[stat]
