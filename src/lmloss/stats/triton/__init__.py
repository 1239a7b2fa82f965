"""Triton kernels of the statistics engine, for GPUs (and CPUs under ``TRITON_INTERPRET=1``).

Nothing here is imported unless :mod:`lmloss.stats.backend` picks the Triton backend, so
``LMLOSS_BACKEND=torch`` never imports ``triton``.

* :mod:`.config` — tile sizes and launch settings (``LMLOSS_TRITON_TILES``), the gradient
  filter; :mod:`.tuning` — the opt-in autotuner (``LMLOSS_TRITON_AUTOTUNE``);
* :mod:`.launch` — what every launch needs: tiles, device guard, deterministic sweeps;
* :mod:`.tiles` — the ``@triton.jit`` helpers every kernel is built from (a logit tile,
  the chain rule through the logit transform, the head-gradient accumulation);
* :mod:`.single_kernels` / :mod:`.single` — one model: per-token statistics and losses;
* :mod:`.pair_kernels` / :mod:`.pair` — two models: per-token divergence terms.
* :mod:`.report` — the compile report: the launched variants compiled for a GPU without one.
"""
