"""Triton kernels of the statistics engine, for GPUs (and CPUs under ``TRITON_INTERPRET=1``).

Nothing here is imported unless :mod:`lmloss.stats.backend` picks the Triton backend, so
``LMLOSS_BACKEND=torch`` never imports ``triton``.

* :mod:`.config` — tile sizes and launch settings;
* :mod:`.tiles` — the ``@triton.jit`` helpers every kernel is built from (a logit tile,
  the chain rule through the logit transform, the head-gradient accumulation);
* :mod:`.single_kernels` / :mod:`.single` — one model: per-token statistics and losses;
* :mod:`.pair_kernels` / :mod:`.pair` — two models: per-token divergence terms.
"""
