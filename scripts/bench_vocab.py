"""Benchmark (`scripts/bench.py --vocab`): the output layer + loss of one training step at large vocabularies.

    python scripts/bench.py --vocab                                    # the default grid below
    python scripts/bench.py --vocab --vocabs 32768 --tokens 2048 --groups-list 2,4 --json vocab.json

For each vocabulary V, tokens per step N (= B x L) and number of groups G, one step of the output layer and loss
(hidden width --hidden, float32, one thread) runs in a fresh subprocess per variant, side by side:

    plain CE, unchunked        logits = h W^T, F.cross_entropy, backward             (distill.mode=none today)
    plain CE, chunked          the label CE over token chunks, the head fused         (loss.chunk_tokens, output_layer)
    codistill, unchunked       student and G - 1 peers' full logits, loss_from_logits (today's step)
    codistill, chunked         full logits, the loss over token chunks                (loss.chunk_tokens)
    codistill, fused           hidden states in; every head projected chunk by chunk  (+ loss.output_layer)

--decoder times a whole training step instead (forward, loss, backward, SGD) of a small decoder: transformers'
LlamaForCausalLM with tied embeddings, --layers layers of width --hidden, sequences of --seq tokens, G - 1 teacher
copies; unchunked = the model's logits into loss_from_logits, chunked = the head fused (the engine's fused_head and
chunked loss), for the student and every teacher copy.

peak = VmHWM of the subprocess, reset once the inputs (hidden states, heads, labels; the decoder's models) exist,
minus its RSS then: what the step adds. time = median CPU time of --repeats steps after one warm-up step. The forward-count bound of a codistill step
is t(plain CE, chunked) + (G - 1) t(one peer's head projection of N tokens): the step cannot cost less than its
forwards. A variant whose estimated peak exceeds --max-gb is not run (marked "skipped").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from codistill.engine.algorithm import LossSpec, loss_from_logits  # noqa: E402
from codistill.engine.chunked import Head, chunked_loss  # noqa: E402

VARIANTS = ("plain_unchunked", "plain_chunked", "codistill_unchunked", "codistill_chunked", "codistill_fused")
LABELS = {
    "plain_unchunked": "plain CE, unchunked", "plain_chunked": "plain CE, chunked (fused head)",
    "codistill_unchunked": "codistill, unchunked (today)", "codistill_chunked": "codistill, chunked logits",
    "codistill_fused": "codistill, chunked + fused head",
}
GB = 1e9


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocabs", default="32768,131072", help="V, comma-separated")
    p.add_argument("--tokens", default="2048,8192", help="N = B x L tokens per step, comma-separated")
    p.add_argument("--groups-list", default="2,4", help="G, comma-separated")
    p.add_argument("--hidden", type=int, default=256, help="the output layer's input width")
    p.add_argument("--chunk", type=int, default=1024, help="loss.chunk_tokens")
    p.add_argument("--repeats", type=int, default=2, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--max-gb", type=float, default=8.0, help="skip variants whose estimated peak exceeds this")
    p.add_argument("--only", default="", help="comma-separated (V, N) pairs as VxN to run, e.g. 131072x8192")
    p.add_argument("--decoder", action="store_true",
                   help="a whole training step of a small decoder (LlamaForCausalLM, tied) instead of head + loss")
    p.add_argument("--layers", type=int, default=2, help="the decoder's layers")
    p.add_argument("--seq", type=int, default=256, help="the decoder's sequence length L (B = N / L)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one variant in a fresh process
    return p.parse_args(argv)


def status_kb(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def start_peak() -> int:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: /proc/self/clear_refs = 5) and return it, so that the
    step's peak is measured above what exists now, not above import's or model building's transients."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS")


def estimate_gb(variant: str, V: int, N: int, G: int, chunk: int) -> float:
    """Floats the step holds at its peak, from the tensor sizes (unchunked: (5 + 3(G - 1)) N V for codistill)."""
    rows = N if variant.endswith("unchunked") or variant == "codistill_chunked" else min(chunk, N)
    per_row = {"plain_unchunked": 3, "plain_chunked": 4, "codistill_unchunked": 5 + 3 * (G - 1),
               "codistill_chunked": 2 + G, "codistill_fused": 7}[variant]
    full = G * N * V * 4 / GB if variant == "codistill_chunked" else 0.0  # the G full logits tensors
    return per_row * rows * V * 4 / GB + full


def decoder_child(spec: dict) -> dict:
    """One training step (forward, loss, backward, SGD) of a small decoder (transformers' LlamaForCausalLM, tied
    embeddings) with G - 1 teacher copies, through the engine's fused-head and chunked-loss code."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from codistill.engine import fused_head

    V, N, G, H, chunk, variant = spec["V"], spec["N"], spec["G"], spec["H"], spec["chunk"], spec["variant"]
    config = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=2 * H, num_hidden_layers=spec["layers"],
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=spec["seq"],
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    models = [LlamaForCausalLM(config) for _ in range(G if variant.startswith("codistill") else 1)]
    student, peers = models[0], models[1:]
    for p in peers:
        p.eval().requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=1e-3)
    x = torch.randint(V, (N // spec["seq"], spec["seq"]))
    y = torch.randint(V, x.shape)
    head = "lm_head" if variant in ("plain_chunked", "codistill_fused") else None
    spec_loss = LossSpec(1.0, 1.0, "kl", "mean_probs")

    def step() -> None:
        with torch.no_grad():
            teachers = [fused_head.predict(p, p, head, x) for p in peers]
        pred = fused_head.predict(student, student, head, x)
        if head is not None:
            loss = chunked_loss(pred, teachers, y, spec_loss, chunk)[0]
        else:
            loss = loss_from_logits(pred, teachers, y, 1.0, 1.0, "kl", "mean_probs").total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def teacher_forward() -> None:
        with torch.no_grad():
            student(x)

    return measure(step, teacher_forward, spec["repeats"], variant == "plain_chunked")


def child(spec: dict) -> dict:
    """One variant's step in this fresh process: peak bytes above the inputs, median CPU seconds."""
    torch.set_num_threads(1)
    if spec.get("decoder"):
        return decoder_child(spec)
    V, N, G, H, chunk, variant = spec["V"], spec["N"], spec["G"], spec["H"], spec["chunk"], spec["variant"]
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(N, H, generator=g) * 0.5).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * H**-0.5).requires_grad_()
    peers = [(torch.randn(N, H, generator=g) * 0.5, torch.randn(V, H, generator=g) * H**-0.5) for _ in range(G - 1)]
    y = torch.randint(V, (N,), generator=g)
    spec_loss = LossSpec(1.0, 1.0, "kl", "mean_probs")

    def step() -> None:
        if variant == "plain_unchunked":
            loss = F.cross_entropy(hidden @ weight.T, y)
        elif variant == "plain_chunked":
            loss = chunked_loss((hidden, Head(weight)), [], y, spec_loss, chunk)[0]
        elif variant == "codistill_fused":
            loss = chunked_loss((hidden, Head(weight)), [(h, Head(w)) for h, w in peers], y, spec_loss, chunk)[0]
        else:
            logits = hidden @ weight.T
            with torch.no_grad():
                teachers = [h @ w.T for h, w in peers]
            if variant == "codistill_unchunked":
                loss = loss_from_logits(logits, teachers, y, 1.0, 1.0, "kl", "mean_probs").total
            else:
                loss = chunked_loss(logits, teachers, y, spec_loss, chunk)[0]
        loss.backward()
        hidden.grad = weight.grad = None

    def teacher_forward() -> None:
        with torch.no_grad():
            h, w = peers[0] if peers else (hidden.detach(), weight.detach())
            (h @ w.T).max()

    return measure(step, teacher_forward, spec["repeats"], variant == "plain_chunked")


def measure(step: Callable[[], None], teacher_forward: Callable[[], None], repeats: int, with_teacher: bool) -> dict:
    """Peak memory above what exists now and the median CPU seconds of `step` (the first, warm-up call not counted);
    with_teacher: also one teacher forward's time, for the forward-count bound."""
    base = start_peak()
    times = [cpu_seconds(step) for _ in range(repeats + 1)][1:]
    out = {"peak_gb": (status_kb("VmHWM") - base) * 1e3 / GB, "cpu_s": statistics.median(times)}
    if with_teacher:
        out["teacher_fwd_s"] = statistics.median(cpu_seconds(teacher_forward) for _ in range(2))
    return out


def cpu_seconds(fn: Callable[[], None]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def run_child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["killed"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str]) -> dict:
    a = parse_args(argv)
    if a.child is not None:
        print(json.dumps(child(json.loads(a.child))))
        return {}
    only = {tuple(int(v) for v in pair.split("x")) for pair in a.only.split(",") if pair}
    rows = []
    for V in map(int, a.vocabs.split(",")):
        for N in map(int, a.tokens.split(",")):
            if only and (V, N) not in only:
                continue
            for G in map(int, a.groups_list.split(",")):
                row = {"V": V, "N": N, "G": G, "results": {}}
                for variant in VARIANTS:
                    if variant.startswith("plain") and G != int(a.groups_list.split(",")[0]):
                        row["results"][variant] = rows[-1]["results"][variant]  # plain CE does not depend on G
                        continue
                    est = estimate_gb(variant, V, N, G, a.chunk)
                    if est > a.max_gb:
                        row["results"][variant] = {"skipped": f"est. {est:.1f} GB > --max-gb"}
                        continue
                    if a.decoder and variant == "codistill_chunked":
                        continue  # a decoder's step either fuses its head or not: chunked logits are the head rows'
                    spec = {"V": V, "N": N, "G": G, "H": a.hidden, "chunk": a.chunk, "variant": variant,
                            "repeats": a.repeats, "decoder": a.decoder, "layers": a.layers, "seq": a.seq}
                    row["results"][variant] = run_child(spec)
                    print(f"V={V} N={N} G={G} {variant}: {row['results'][variant]}", file=sys.stderr, flush=True)
                rows.append(row)
    what = (f"Training step of a decoder (LlamaForCausalLM, {a.layers} layers, tied embeddings, L = {a.seq})"
            if a.decoder else "Output layer + loss")
    res = {"command": " ".join(["scripts/bench.py --vocab", *argv]), "hidden": a.hidden, "chunk": a.chunk,
           "what": what, "rows": rows}
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    lines = [f"{res['what']}, hidden {res['hidden']}, float32, 1 thread, chunks of {res['chunk']} tokens; "
             "peak = GB above the inputs; time = CPU s per step",
             "", "| V | N | G | variant | peak GB | time s | peak / plain chunked | time / bound |",
             "|---|---|---|---|---|---|---|---|"]
    for row in res["rows"]:
        r = row["results"]
        ref = r.get("plain_chunked", {})
        bound = (ref["cpu_s"] + (row["G"] - 1) * ref["teacher_fwd_s"]) if "cpu_s" in ref else None
        for variant in VARIANTS:
            if variant not in r:
                continue
            v = r[variant]
            if "cpu_s" not in v:
                lines.append(f"| {row['V']} | {row['N']} | {row['G']} | {LABELS[variant]} | "
                             f"{v.get('skipped') or v.get('error')} | | | |")
                continue
            mem = f"{v['peak_gb'] / ref['peak_gb']:.2f}" if ref.get("peak_gb") else ""
            over = f"{v['cpu_s'] / bound:.2f}" if bound and variant.startswith("codistill") else ""
            lines.append(f"| {row['V']} | {row['N']} | {row['G']} | {LABELS[variant]} | {v['peak_gb']:.2f} | "
                         f"{v['cpu_s']:.2f} | {mem} | {over} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
