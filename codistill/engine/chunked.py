"""Algorithm 1's loss over token chunks: label CE plus alpha * psi(peers), never holding [tokens, V] in float32.

The unchunked loss (codistill.engine.algorithm.loss_from_logits) materialises, for N tokens and vocabulary V, the
student's float32 logits and log-softmax, each peer's softmax, their mean and the KL's products: about
(5 + 3(G - 1)) N V floats. Here the N tokens are cut into chunks of `chunk_tokens`; per chunk the student's and
every peer's logits are formed in float32 (from logits, or from hidden states through the output layer: the fused
head), the peers' probabilities are averaged, the loss and its gradient with respect to the chunk's logits are
computed in closed form, and the chunk is freed. Peak memory is O(chunk x V) whatever N and G.

The gradient is computed in the forward (as Liger Kernel's fused linear losses do), not recomputed in backward:
the closed forms are short, and the loss is needed at every step anyway. With per-token weights w (1/N, or
1/#labelled on labelled tokens and 0 on `ignore_index`), logits z, labels y, p = softmax(z), q = softmax(z / T),
the peers' probabilities p_j = softmax(t_j / T) and their mean p̄:

    CE                         = sum_n w_n (-log p_n[y_n])             d/dz = w (p - onehot(y))
    kl, mean_probs             = T^2 sum_n w_n KL(p̄_n || q_n)         d/dz = w T (q - p̄)
    kl, mean_kl                = T^2 mean_j sum_n w_n KL(p_j,n || q_n)  d/dz = w T (q - p̄)   (the same)
    logit_mse, mean_probs      = sum_n w_n 0.5 ||z_n - mean_j t_j,n||^2  d/dz = w (z - mean_j t_j)
    logit_mse, mean_kl         = mean_j sum_n w_n 0.5 ||z_n - t_j,n||^2  d/dz = w (z - mean_j t_j)   (the same)

With a fused head z = h W^T + b, so dh = dz W, dW = dz^T h, db = sum dz, accumulated chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

AUTO_MIN_VOCAB = 8192  # loss.chunk_tokens=null chunks when the output has at least this many classes
AUTO_CHUNK = 1024  # ... into chunks of this many tokens


@dataclass(frozen=True)
class Head:
    """A plain linear output layer, z = hidden @ weight^T + bias, run inside the chunk loop."""

    weight: torch.Tensor  # [..., V, H]
    bias: Optional[torch.Tensor] = None  # [..., V]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of a chunk of hidden states [..., n, H], projected in the hidden states' dtype."""
        w = self.weight.detach().to(hidden.dtype)
        z = hidden @ w.transpose(-1, -2)
        if self.bias is not None:
            z = z + self.bias.detach().to(hidden.dtype).unsqueeze(-2)
        return z.float()


# A prediction: logits [..., N, V], or (hidden states [..., N, H], the head that projects them).
Prediction = Union[torch.Tensor, tuple[torch.Tensor, Head]]


@dataclass(frozen=True)
class LossSpec:
    """The loss's knobs: the `distill` section's alpha/T/psi/aggregate and the `loss` section's ignore_index."""

    alpha: float
    temperature: float
    psi: str
    aggregate: str
    ignore_index: Optional[int] = None


def chunk_size(chunk_tokens: Optional[int], vocab: int) -> int:
    """Tokens per chunk: `loss.chunk_tokens`, or AUTO_CHUNK for a vocabulary of AUTO_MIN_VOCAB or more (null);
    0 = no chunking."""
    if chunk_tokens is None:
        return AUTO_CHUNK if vocab >= AUTO_MIN_VOCAB else 0
    return chunk_tokens


def vocab_of(pred: Prediction) -> int:
    return pred[1].weight.shape[-2] if isinstance(pred, tuple) else pred.shape[-1]


def flat_tokens(pred: Prediction, lead: int) -> Prediction:
    """[..., B, L, C] -> [..., B*L, C], keeping `lead` leading (group) dimensions."""
    if isinstance(pred, tuple):
        hidden, head = pred
        return hidden.reshape(*hidden.shape[:lead], -1, hidden.shape[-1]), head
    return pred.reshape(*pred.shape[:lead], -1, pred.shape[-1])


def chunk_logits(pred: Prediction, sl: slice) -> torch.Tensor:
    """float32 logits of the tokens `sl` of a flat prediction."""
    if isinstance(pred, tuple):
        hidden, head = pred
        return head(hidden[..., sl, :])
    return pred[..., sl, :].float()


class _WithGradient(torch.autograd.Function):
    """Returns `value`; its backward hands each input the gradient computed in the forward, times the incoming one."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: tuple, *inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, out: torch.Tensor):  # type: ignore[override]
        def scaled(g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if g is None:
                return None
            return g * out.reshape(*out.shape, *([1] * (g.dim() - out.dim()))).to(g.dtype)

        return (None, None, *(scaled(g) for g in ctx.grads))


def chunked_loss(student: Prediction, teachers: list[Prediction], y: torch.Tensor, spec: LossSpec, chunk: int,
                 groups: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, distill) of Algorithm 1, as loss_from_logits defines them, chunk by chunk.

    `student`: its logits, or its hidden states and output layer (fused: the head's weight and bias get their
    gradients through `total`). `teachers`: the peers' predictions (graph-free), each logits or hidden states with
    their head. `chunk`: tokens per chunk (0 = all at once). With `groups` > 0 every tensor has that leading
    dimension (the vectorised mode) and each part is a vector of the groups' losses.
    """
    lead = 1 if groups else 0
    student = flat_tokens(student, lead)
    teachers = [flat_tokens(t, lead) for t in teachers]
    y = y.reshape(*y.shape[:lead], -1)
    n = y.shape[-1]
    chunk = chunk or n
    if spec.ignore_index is not None:
        valid = y != spec.ignore_index
        weights = valid / valid.sum(-1, keepdim=True).clamp_min(1)
        y = y.masked_fill(~valid, 0)
    else:
        weights = torch.full(y.shape, 1.0 / max(n, 1), device=y.device)
    fused = isinstance(student, tuple)
    hidden, head = student if fused else (student, None)
    grad_x = torch.zeros_like(hidden) if hidden.requires_grad else None
    grad_w = torch.zeros(head.weight.shape, device=head.weight.device) if fused and head.weight.requires_grad else None
    grad_b = (torch.zeros(head.bias.shape, device=head.bias.device)
              if fused and head.bias is not None and head.bias.requires_grad else None)
    ce = torch.zeros(y.shape[:lead], device=y.device)
    distill = torch.zeros_like(ce)
    T = spec.temperature
    with torch.no_grad():
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            z = chunk_logits(student, sl)
            w, yc = weights[..., sl], y[..., sl]
            log_p = F.log_softmax(z, dim=-1)
            ce += -(log_p.gather(-1, yc.unsqueeze(-1)).squeeze(-1) * w).sum(-1)
            dz = log_p.exp_()  # p, in place of log_p: w (p - onehot(y)) is the CE's gradient
            dz.scatter_add_(-1, yc.unsqueeze(-1), torch.full_like(z[..., :1], -1.0))
            del log_p
            if teachers:
                d, g = _distill_chunk(z, [chunk_logits(t, sl) for t in teachers], T, spec)
                distill += (d * w).sum(-1)
                dz.add_(g, alpha=spec.alpha)
                del g
            dz.mul_(w.unsqueeze(-1))
            if not fused:
                if grad_x is not None:
                    grad_x[..., sl, :] = dz
                continue
            h = hidden[..., sl, :].float()
            if grad_x is not None:
                grad_x[..., sl, :] = dz @ head.weight.detach().float()
            if grad_w is not None:
                grad_w += dz.transpose(-1, -2) @ h
            if grad_b is not None:
                grad_b += dz.sum(-2)
    total = ce + spec.alpha * distill if teachers else ce
    inputs = [hidden] + ([head.weight] + ([head.bias] if head.bias is not None else []) if fused else [])
    grads = [grad_x] + ([grad_w] + ([grad_b] if head.bias is not None else []) if fused else [])
    grads = [g if g is None else g.to(i.dtype) for g, i in zip(grads, inputs)]
    if any(i.requires_grad for i in inputs):
        total = _WithGradient.apply(total, tuple(grads), *inputs)
    return total, ce, distill


def _distill_chunk(z: torch.Tensor, teachers: list[torch.Tensor], T: float,
                   spec: LossSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token psi [..., n] and its gradient with respect to the student's logits z [..., n, V] (unweighted)."""
    k = len(teachers)
    if spec.psi == "kl":
        log_q = F.log_softmax(z / T if T != 1 else z, dim=-1)
        mean_p = torch.zeros_like(z)
        entropy_term = torch.zeros_like(z[..., 0])  # sum_v p log p, summed over the peers
        for t in teachers:
            p = F.softmax(t / T if T != 1 else t, dim=-1)
            if spec.aggregate == "mean_kl":
                entropy_term += torch.xlogy(p, p).sum(-1)
            mean_p += p
            del p
        mean_p /= k
        if spec.aggregate == "mean_probs":
            entropy_term = torch.xlogy(mean_p, mean_p).sum(-1)
        else:
            entropy_term /= k
        per_token = (entropy_term - (mean_p * log_q).sum(-1)) * T**2
        grad = log_q.exp_().sub_(mean_p).mul_(T)
        return per_token, grad
    if spec.psi == "logit_mse":
        mean_t = torch.zeros_like(z)
        for t in teachers:
            mean_t += t
        mean_t /= k
        if spec.aggregate == "mean_probs":
            per_token = 0.5 * (z - mean_t).pow(2).sum(-1)
        else:
            per_token = sum(0.5 * (z - t).pow(2).sum(-1) for t in teachers) / k
        return per_token, mean_t.neg_().add_(z)
    raise ValueError(f"unknown psi {spec.psi!r}")
