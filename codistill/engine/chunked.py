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
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F

AUTO_MIN_VOCAB = 8192  # loss.chunk_tokens=null chunks when the output has at least this many classes
AUTO_CHUNK = 1024  # ... into chunks of this many tokens
SUB_BLOCKS = 8  # the distillation term works on 1/SUB_BLOCKS of a chunk's rows at a time (see _distill_rows)


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
    def forward(ctx, value: torch.Tensor, grads: tuple,  # type: ignore[override]
                *inputs: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, out: torch.Tensor):  # type: ignore[override]
        def scaled(g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if g is None:
                return None
            return g * out.reshape(*out.shape, *([1] * (g.dim() - out.dim()))).to(g.dtype)

        return (None, None, *(scaled(g) for g in ctx.grads))


def chunked_loss(student: Prediction, teachers: list[Prediction], y: torch.Tensor, spec: Any, chunk: int,
                 groups: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, distill) of Algorithm 1, as loss_from_logits defines them, chunk by chunk.

    `spec`: the loss settings (codistill.engine.algorithm.LossSpec: alpha, temperature, psi, aggregate,
    ignore_index). `student`: its logits, or its hidden states and output layer (fused: the head's weight and bias
    get their gradients through `total`). `teachers`: the peers' predictions (graph-free), each logits or hidden
    states with their head. `chunk`: tokens per chunk (0 = all at once). With `groups` > 0 every tensor has that
    leading dimension (the vectorised mode) and each part is a vector of the groups' losses.
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
    weight = head.weight.detach().float() if fused else None
    with torch.no_grad():
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            w, yc = weights[..., sl], y[..., sl]
            z = chunk_logits(student, sl)
            log_p = F.log_softmax(z, dim=-1)
            ce += -(log_p.gather(-1, yc.unsqueeze(-1)).squeeze(-1) * w).sum(-1)
            if teachers:
                if spec.psi == "kl":
                    del z  # kl needs only log_p: free the logits before the peers'
                rows = max(1, (sl.stop - sl.start) // SUB_BLOCKS)
                for a in range(0, sl.stop - sl.start, rows):
                    sub = slice(a, min(a + rows, sl.stop - sl.start))
                    glob = slice(sl.start + sub.start, sl.start + sub.stop)
                    peers = ((chunk_logits(t, glob), owns(t)) for t in teachers)
                    z_sub = z[..., sub, :] if spec.psi == "logit_mse" else None
                    d = _distill_rows(z_sub, log_p[..., sub, :], peers, len(teachers), spec)
                    distill += (d * w[..., sub]).sum(-1)
                dz = log_p  # _distill_rows turned it into p + alpha dpsi/dz
            else:
                dz = log_p.exp_()  # p, in place of log_p
            z = log_p = None
            dz.scatter_add_(-1, yc.unsqueeze(-1), torch.full_like(dz[..., :1], -1.0))  # the CE's p - onehot(y)
            dz.mul_(w.unsqueeze(-1))
            if not fused:
                if grad_x is not None:
                    grad_x[..., sl, :] = dz
                continue
            if grad_x is not None:
                grad_x[..., sl, :] = dz @ weight
            if grad_w is not None:
                grad_w += dz.transpose(-1, -2) @ hidden[..., sl, :].float()
            if grad_b is not None:
                grad_b += dz.sum(-2)
            del dz
    total = ce + spec.alpha * distill if teachers else ce
    inputs = [hidden] + ([head.weight] + ([head.bias] if head.bias is not None else []) if fused else [])
    grads = [grad_x] + ([grad_w] + ([grad_b] if head.bias is not None else []) if fused else [])
    grads = [g if g is None else g.to(i.dtype) for g, i in zip(grads, inputs)]
    if any(i.requires_grad for i in inputs):
        total = _WithGradient.apply(total, tuple(grads), *inputs)
    return total, ce, distill


def owns(pred: Prediction) -> bool:
    """Whether chunk_logits(pred, ...) returns a new tensor (projected or converted), free to overwrite."""
    return isinstance(pred, tuple) or pred.dtype != torch.float32


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[..., v] b[..., v], as a batched matmul: no [..., n, V] temporary."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


Peers = Iterator[tuple[torch.Tensor, bool]]  # each peer's logits of the rows, and whether they may be overwritten


def _distill_rows(z: Optional[torch.Tensor], log_p: torch.Tensor, teachers: Peers, k: int, spec: Any) -> torch.Tensor:
    """Per-token psi [..., n] of some rows of a chunk against the k peers' logits of those rows (made one peer at a
    time, each with whether it may be overwritten); turns log_p (the student's log-softmax, a view into the chunk's
    buffer) in place into dz = p + alpha dpsi/dz (unweighted; the caller subtracts onehot(y)). z, the student's
    logits of the rows, is needed by logit_mse only.

    The caller hands over 1/SUB_BLOCKS of a chunk at a time, so the peers' logits, probabilities and mean, and the
    student's log-softmax at T, are a fraction of a chunk: the distillation term adds no whole-chunk buffer to
    those of the label loss.
    """
    T, alpha = spec.temperature, spec.alpha
    if spec.psi == "kl":
        log_q = log_p if T == 1 else F.log_softmax(log_p / T, dim=-1)  # = log_softmax(z / T): the shift cancels
        mean_p: Optional[torch.Tensor] = None
        entropy = torch.zeros_like(log_p[..., 0])  # sum_v p_j log p_j, summed over the peers (mean_kl)
        for t, owned in teachers:
            if T != 1:
                t = t.div_(T) if owned else t / T
            if spec.aggregate == "mean_kl":  # sum_v p log p = p . t - logsumexp(t)
                lse = torch.logsumexp(t, dim=-1, keepdim=True)
                p = (t - lse).exp_()
                entropy += _dot(p, t) - lse.squeeze(-1)
            else:
                p = F.softmax(t, dim=-1)
            del t
            mean_p = p if mean_p is None else mean_p.add_(p)
            del p  # before the next peer's logits exist
        if k > 1:
            mean_p.div_(k)
        if spec.aggregate == "mean_probs":  # sum_v p̄ log p̄; a probability that underflowed to 0 adds 0 (not nan)
            entropy = _dot(mean_p, mean_p.clamp_min(torch.finfo(mean_p.dtype).tiny).log_())
        else:
            entropy /= k
        per_token = (entropy - _dot(mean_p, log_q)) * T**2
        if T == 1:  # q = p: dz = p + alpha (p - mean_p) = lerp(mean_p, p, 1 + alpha), one pass
            torch.lerp(mean_p, log_p.exp_(), 1 + alpha, out=log_p)
        else:  # dz = p + alpha T (q - mean_p)
            log_q.exp_().sub_(mean_p).mul_(alpha * T)
            log_p.exp_().add_(log_q)
        return per_token
    if spec.psi == "logit_mse":
        mean_t: Optional[torch.Tensor] = None
        squares = torch.zeros_like(log_p[..., 0])  # sum_j 0.5 ||z - t_j||^2 (mean_kl)
        for t, owned in teachers:
            if spec.aggregate == "mean_kl":
                squares += 0.5 * (z - t).pow_(2).sum(-1)
            mean_t = (t if owned else t.clone()) if mean_t is None else mean_t.add_(t)
            del t
        diff = mean_t.div_(k).neg_().add_(z)  # z - mean_j t_j: the gradient of either aggregate
        per_token = 0.5 * _dot(diff, diff) if spec.aggregate == "mean_probs" else squares / k
        log_p.exp_().add_(diff, alpha=alpha)
        return per_token
    raise ValueError(f"unknown psi {spec.psi!r}")
