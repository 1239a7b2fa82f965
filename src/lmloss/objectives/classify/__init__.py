"""Classification and ranking objectives on generic logits or scores ``[N, C]``.

Each function validates its own inputs and returns per-example losses (``[N]``), per-row
losses for grouped inputs (``[B]``), or a 0-d tensor for losses defined on the whole batch
(AnyLoss, a 1-D Mann–Whitney ranking). :func:`lmloss.classification_loss` reduces them.
"""
