"""Online policy optimization: the GRPO family, advantage estimators and KL estimators.

Every objective here is a pure function of per-token tensors ``[B, T]`` (log-probabilities
of the sampled completion tokens under the current, old and reference policies, a
completion mask, advantages, and where declared the token entropy). Modules by theme:

* :mod:`.surrogates` — clipped surrogate family (PPO, GRPO, Dr. GRPO, DAPO, BNPO, GSPO,
  LUSPO, RLOO/LOOP), CISPO, SAPO, VESPO;
* :mod:`.gtpo` — GTPO (conflict tokens, entropy filter);
* :mod:`.entropy` — entropy-control variants (Clip-Cov, KL-Cov, STEER, Lp-Reg);
* :mod:`.advantages` — advantage estimators (not losses) and the DAPO group filter;
* :mod:`.kl` — per-token KL estimators and the KL-in-reward helper;
* :mod:`.aggregate` — token → sequence → batch reductions;
* :mod:`.common` — input checks, ratios, the shared finish (KL term, entropy bonus,
  aggregation, metrics).
"""
