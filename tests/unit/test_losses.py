"""psi and the aggregates: analytic gradients and the G = 2 identity (DESIGN invariant 4)."""

import pytest
import torch
import torch.nn.functional as F

from codistill.engine.losses import distill_loss


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_kl_gradient_is_analytic(temperature: float) -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 10, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(8, 10, dtype=torch.float64)
    q_teacher = F.softmax(teacher / temperature, -1)
    distill_loss(z, [teacher], temperature, "kl", "mean_probs").backward()
    q_student = F.softmax(z.detach() / temperature, -1)
    # d/dz [T^2 KL(q_t || softmax(z/T))] = T^2 * (q_s - q_t) / T, batch-averaged
    expected = temperature**2 * (q_student - q_teacher) / temperature / len(z)
    torch.testing.assert_close(z.grad, expected, rtol=1e-10, atol=1e-12)


def test_kl_is_zero_when_student_agrees() -> None:
    z = torch.randn(4, 5)
    assert distill_loss(z, [z.clone()], 2.0, "kl", "mean_probs").abs().item() < 1e-6


def test_aggregates_agree_for_one_peer_and_differ_for_two() -> None:
    torch.manual_seed(1)
    z, t1, t2 = torch.randn(3, 16, 10).unbind(0)
    for psi in ("kl", "logit_mse"):
        one_a = distill_loss(z, [t1], 3.0, psi, "mean_probs")
        one_b = distill_loss(z, [t1], 3.0, psi, "mean_kl")
        torch.testing.assert_close(one_a, one_b)
        two_a = distill_loss(z, [t1, t2], 3.0, psi, "mean_probs")
        two_b = distill_loss(z, [t1, t2], 3.0, psi, "mean_kl")
        assert not torch.allclose(two_a, two_b)
