"""The chunked and fused losses equal the unchunked one (codistill.engine.algorithm.loss_from_logits): loss and
gradients, float32, every aggregate / psi / temperature, with ignore_index and an uneven last chunk, G = 2 and 4."""

from __future__ import annotations

import itertools

import pytest
import torch

from codistill.engine.algorithm import LossSpec, loss_from_logits
from codistill.engine.chunked import Head, chunked_loss

B, L, H, V = 3, 7, 8, 11  # 21 tokens: chunks of 5 leave an uneven last chunk of 1
CASES = list(itertools.product([2, 4], ["mean_probs", "mean_kl"], ["kl", "logit_mse"], [1.0, 2.5], [None, -100]))


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> None:
    """Equal within `rel` of the larger magnitude (elementwise noise is judged against the tensor's scale)."""
    assert (a - b).abs().max().item() <= rel * max(b.abs().max().item(), 1e-12), (a - b).abs().max()


def setup(groups: int, ignore):
    g = torch.Generator().manual_seed(groups)
    hidden = torch.randn(B, L, H, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(V, H, generator=g).requires_grad_()
    bias = torch.randn(V, generator=g).requires_grad_()
    peers = [(torch.randn(B, L, H, generator=g), torch.randn(V, H, generator=g), torch.randn(V, generator=g))
             for _ in range(groups - 1)]
    y = torch.randint(0, V, (B, L), generator=g)
    if ignore is not None:
        y[0, :3] = ignore
        y[2, -1] = ignore
    return hidden, weight, bias, peers, y


def reference(hidden, weight, bias, peers, y, spec):
    logits = hidden @ weight.T + bias
    teachers = [h @ w.T + b for h, w, b in peers]
    parts = loss_from_logits(logits, teachers, y, spec.alpha, spec.temperature, spec.psi, spec.aggregate,
                             ignore_index=spec.ignore_index)
    grads = torch.autograd.grad(parts.total, [hidden, weight, bias])
    return parts, grads


@pytest.mark.parametrize("groups,aggregate,psi,temperature,ignore", CASES)
def test_chunked_and_fused_equal_unchunked(groups, aggregate, psi, temperature, ignore):
    hidden, weight, bias, peers, y = setup(groups, ignore)
    spec = LossSpec(0.7, temperature, psi, aggregate, ignore)
    ref, ref_grads = reference(hidden, weight, bias, peers, y, spec)
    # chunked over logits: the head runs outside, autograd carries the logits' gradient to it
    logits = hidden @ weight.T + bias
    teachers = [(h @ w.T + b) for h, w, b in peers]
    total, ce, distill = chunked_loss(logits, teachers, y, spec, chunk=5)
    grads = torch.autograd.grad(total, [hidden, weight, bias])
    # fused: hidden states in, the head projected chunk by chunk for the student and every peer
    ftotal, fce, fdistill = chunked_loss((hidden, Head(weight, bias)), [(h, Head(w, b)) for h, w, b in peers], y,
                                         spec, chunk=5)
    fgrads = torch.autograd.grad(ftotal, [hidden, weight, bias])
    for t, c, d, gs in ((total, ce, distill, grads), (ftotal, fce, fdistill, fgrads)):
        close(t, ref.total)
        close(c, ref.ce)
        close(d, ref.distill)
        for a, b in zip(gs, ref_grads):
            close(a, b)


def test_vectorised_groups_dimension():
    """A leading group dimension (the vectorised mode): each group's parts equal its own unchunked loss."""
    G = 3
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(G, B, L, V, generator=g).requires_grad_()
    teachers = [torch.randn(G, B, L, V, generator=g) for _ in range(2)]
    y = torch.randint(0, V, (G, B, L), generator=g)
    y[:, 0, 0] = -1
    spec = LossSpec(0.5, 2.0, "kl", "mean_probs", -1)
    ref = loss_from_logits(logits, teachers, y, 0.5, 2.0, "kl", "mean_probs", groups=G, ignore_index=-1)
    (ref_grad,) = torch.autograd.grad(ref.total.sum(), [logits])
    total, ce, distill = chunked_loss(logits, teachers, y, spec, chunk=4, groups=G)
    (grad,) = torch.autograd.grad(total.sum(), [logits])
    close(total, ref.total)
    close(distill, ref.distill)
    close(grad, ref_grad)


def test_label_loss_only_and_backward_scale():
    """No peers: the label CE alone; a scaled backward (grad accumulation, fp16's loss scale) scales the gradient."""
    hidden, weight, bias, _, y = setup(2, None)
    spec = LossSpec(1.0, 1.0, "kl", "mean_probs")
    ref = loss_from_logits(hidden @ weight.T + bias, [], y, 1.0, 1.0, "kl", "mean_probs")
    (ref_grad,) = torch.autograd.grad(ref.total * 0.25, [weight])
    total, ce, distill = chunked_loss((hidden, Head(weight, bias)), [], y, spec, chunk=4)
    (grad,) = torch.autograd.grad(total * 0.25, [weight])
    close(total, ref.total)
    assert distill.item() == 0
    close(grad, ref_grad)


def test_vectorised_fused_groups_equal_the_unchunked_loop(tmp_path) -> None:
    """topology.vectorize with the MLP's last layer fused (stacked [G, V, H] head) == the plain per-group loop."""
    from tests.helpers import make_trainer

    base = ["topology.groups=3", "trainer.max_steps=6", "distill.burn_in_steps=1", "distill.exchange_every=2",
            "distill.temperature=2", "distill.aggregate=mean_kl"]
    states = {}
    for name, extra in [("loop", ["loss.chunk_tokens=0"]),
                        ("vec", ["topology.vectorize=true", "loss.chunk_tokens=10", "loss.output_layer=net.3"])]:
        trainer = make_trainer([*base, *extra], tmp_path / name)
        trainer.fit()
        trainer.close()
        assert (trainer.vectorized is not None) == (name == "vec")
        states[name] = [w.model.state_dict() for w in trainer.workers.values()]
    for a, b in zip(states["loop"], states["vec"]):
        assert all((a[k] - b[k]).abs().max().item() < 1e-6 for k in a)
