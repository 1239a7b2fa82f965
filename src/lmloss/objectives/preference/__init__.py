"""Offline preference objectives: the DPO family, each a pure function of per-token tensors.

Every objective takes one *input kind* as its first argument (see :mod:`.inputs`):

* :class:`~.inputs.Pairs` — chosen and rejected completions of the same prompts (DPO, IPO, ...).
* :class:`~.inputs.Unpaired` — completions labelled desirable or not (KTO).
* :class:`~.inputs.Negatives` — dispreferred completions only (NPO, D2O).
* :class:`~.inputs.Lists` — several scored completions per prompt (LiPO).

The front door :mod:`lmloss.preference` builds the kind from keyword tensors (or, fused,
from the engine's statistics) and calls the objective through the registry. Options that
work on any pairwise objective (WPO weighting, LD-DPO, LCPO, HyPO) live in :mod:`.options`.
"""
