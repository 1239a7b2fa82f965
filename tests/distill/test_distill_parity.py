"""Numerical parity with TRL and Liger-Kernel on the same random inputs (CPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import lmloss

N, H, HT, V = 10, 6, 4, 17

pytestmark = pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'")


def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    student = (
        torch.randn(N, H, generator=g, requires_grad=True),
        torch.randn(V, H, generator=g, requires_grad=True),
    )
    teacher = (torch.randn(N, HT, generator=g), torch.randn(V, HT, generator=g))
    return student, teacher, g


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
def test_trl_generalized_jsd(beta):
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    (hs, ws), (ht, wt), g = inputs(0)
    labels = torch.randint(0, V, (2, N // 2), generator=g)
    labels[0, :2] = -100  # TRL masks with labels; we pass the same mask
    mask = labels != -100
    s_logits, t_logits = (hs @ ws.T).view(2, N // 2, V), (ht @ wt.T).view(2, N // 2, V)
    ref = GKDTrainer.generalized_jsd_loss(
        s_logits, t_logits, labels=labels, beta=beta, temperature=0.7
    )
    ours = lmloss.divergence_loss("jsd", s_logits, t_logits, mask=mask, beta=beta, temperature=0.7)
    fused = lmloss.fused_divergence_loss(
        "jsd",
        hs.view(2, N // 2, H),
        ws,
        teacher_hidden=ht.view(2, N // 2, HT),
        teacher_weight=wt,
        mask=mask,
        beta=beta,
        temperature=0.7,
    )
    torch.testing.assert_close(ours.loss, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused.loss, ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads(fused.loss, (hs, ws)), grads(ref, (hs, ws))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_trl_chunked_divergence_kernel(beta):
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    (hs, ws), (ht, wt), _ = inputs(1)
    ref, _ = ChunkedDivergenceFunction.apply(hs, ws, None, ht, wt, None, beta, 1.3)
    ours = lmloss.token_divergence(
        "jsd", hs, ws, teacher_hidden=ht, teacher_weight=wt, beta=beta, temperature=1.3
    )
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    upstream = torch.rand(N)
    for a, b in zip(
        grads((ours * upstream).sum(), (hs, ws)), grads((ref * upstream).sum(), (hs, ws))
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("beta,hard_weight", [(0.5, 0.0), (0.3, 0.4), (0.0, 0.5), (1.0, 0.2)])
def test_liger_fused_linear_jsd_with_hard_loss(beta, hard_weight):
    from liger_kernel.chunked_loss.jsd_loss import LigerFusedLinearJSDFunction

    (hs, ws), (ht, wt), g = inputs(2)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[3] = -100
    ref = LigerFusedLinearJSDFunction.apply(
        hs,
        ws,
        ht,
        wt,
        labels,
        None,
        None,
        hard_weight,
        1 - hard_weight,
        beta,
        -100,
        0.8,
        False,
        4,
        False,
    )
    ours = lmloss.fused_divergence_loss(
        "jsd",
        hs,
        ws,
        teacher_hidden=ht,
        teacher_weight=wt,
        labels=labels,
        mask=labels != -100,
        beta=beta,
        hard_weight=hard_weight,
        temperature=0.8,
    )
    torch.testing.assert_close(ours.loss, ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads(ours.loss, (hs, ws)), grads(ref, (hs, ws))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# Liger's JSD / KL / TVD are Triton kernels; on CPU they run under Triton's interpreter, in a
# child process because TRITON_INTERPRET must be set before Triton is imported. The
# interpreter passes Python float arguments on unwrapped (Liger casts them with ``.to``), so
# the child wraps them as float32 scalars first, as compiled Triton does.
_LIGER_CHILD = textwrap.dedent(
    """
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np, torch, triton.language as tl
    import triton.runtime.interpreter as interp
    _cvt = interp._implicit_cvt
    def _wrap_floats(arg):
        if isinstance(arg, float):
            handle = interp.TensorHandle(np.array([arg], dtype=np.float32), tl.float32)
            return tl.tensor(handle, tl.float32)
        return _cvt(arg)
    interp._implicit_cvt = _wrap_floats
    from liger_kernel.transformers import functional as F
    student, teacher = torch.load(sys.argv[1])
    out = {}
    for beta in (0.0, 0.3, 0.5, 1.0):
        x = student.clone().requires_grad_()
        loss = F.liger_jsd(x, teacher, beta=beta)
        loss.backward()
        out[f"jsd_{beta}"] = (loss.detach(), x.grad)
    out["kl"] = F.liger_kl_div(student, teacher, reduction="batchmean", log_target=True)
    out["tvd"] = F.liger_tvd(student.exp(), teacher.exp(), reduction="batchmean")
    torch.save(out, sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def liger_kernels(tmp_path_factory):
    folder = tmp_path_factory.mktemp("liger")
    g = torch.Generator().manual_seed(3)
    student = torch.log_softmax(2 * torch.randn(N, V, generator=g), -1)
    teacher = torch.log_softmax(2 * torch.randn(N, V, generator=g), -1)
    torch.save((student, teacher), folder / "in.pt")
    result = subprocess.run(
        [sys.executable, "-c", _LIGER_CHILD, str(folder / "in.pt"), str(folder / "out.pt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return student, teacher, torch.load(folder / "out.pt")


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_liger_jsd_kernel(liger_kernels, beta):
    student, teacher, out = liger_kernels
    ref_loss, ref_grad = out[f"jsd_{beta}"]
    x = student.clone().requires_grad_()
    ours = lmloss.divergence_loss("jsd", x, teacher, beta=beta).loss
    torch.testing.assert_close(ours, ref_loss, atol=1e-6, rtol=1e-5)
    # Liger differentiates w.r.t. log-probabilities; ours goes through log_softmax, which
    # projects the gradient: g - softmax(x) · Σ g.
    (d_ours,) = grads(ours, (x,))
    projected = ref_grad - student.exp() * ref_grad.sum(-1, keepdim=True)
    torch.testing.assert_close(d_ours, projected, atol=1e-6, rtol=1e-5)


def test_liger_kl_and_tvd_kernels(liger_kernels):
    student, teacher, out = liger_kernels
    torch.testing.assert_close(
        lmloss.divergence_loss("forward_kl", student, teacher).loss, out["kl"]
    )
    torch.testing.assert_close(lmloss.divergence_loss("tvd", student, teacher).loss, out["tvd"])


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_trl_sparse_teacher(tail, beta):
    from trl.experimental.async_distillation.async_distillation_trainer import _jsd_loss_chunk

    (hs, ws), (ht, wt), _ = inputs(4)
    k = 5
    teacher_logp = torch.log_softmax(ht @ wt.T, -1)
    top_logp, top_ids = teacher_logp.topk(k, -1)
    ref = _jsd_loss_chunk(
        hs,
        ws,
        None,
        1.0,
        None,
        top_ids,
        top_logp,
        torch.ones(N, k, dtype=torch.bool),
        beta,
        0.9,
        tail == "bucket",
        None,
        1,
    )[0]
    ours = lmloss.fused_divergence_loss(
        "jsd",
        hs,
        ws,
        teacher_topk_ids=top_ids,
        teacher_topk_logprobs=top_logp,
        sparse_tail=tail,
        beta=beta,
        temperature=0.9,
    )
    torch.testing.assert_close(ours.loss * N, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(ours.loss * N, (hs, ws)), grads(ref, (hs, ws))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
