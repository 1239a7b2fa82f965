"""Likelihood (SFT) objectives: per-token losses written on the engine's statistics.

Every objective here is a function of per-token tensors (``logp``, ``lse``, ...) returning
a per-token loss of the same shape. Because each loss is a sum of per-token terms, the
fused front door (:func:`lmloss.fused_likelihood_loss`) computes its gradient during the
forward pass. Reductions (token mean, sequence mean, a global ``num_items``) and the
batch reweighters live in :mod:`.reduction` and :mod:`.reweight`, shared by all of them.
"""
