"""TinyCharLM step time with full sign tracking vs without, measured interleaved in one process.

Three identical models train side by side on the same batches: "tracked" calls
``SignTracker.observe()`` after every optimizer step (every matrix-shaped weight tracked, no
sampling); "untracked" and its copy "control" do not. Each round times one block of steps per
model, in a rotating order, so machine noise hits all alike. The overhead is the median over
rounds of the paired ratio tracked/untracked; control/untracked shows the noise floor of the
same estimate, and timing ``observe()`` alone gives its cost directly.

    python bench/tracker_overhead.py [--rounds 60] [--block 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from signlock.trainables.config import ModelConfig
from signlock.trainables.models import build_model, matrix_parameters
from signlock.trainables.tracker import SignTracker

VOCAB = 65  # Tiny Shakespeare's character vocabulary; the token values do not affect the timing


def make_step(model: torch.nn.Module, tracker: SignTracker | None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if tracker is not None:
            tracker.observe()

    return step


def time_block(step, batches) -> float:
    started = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return (time.perf_counter() - started) / len(batches)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=5, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument(
        "--log-every", type=int, default=50, help="steps per logged row (charlm's default)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = ModelConfig()  # TinyCharLM, C.4.1
    plain = build_model(cfg, vocab_size=VOCAB)
    control = copy.deepcopy(plain)
    tracked = copy.deepcopy(plain)
    tracker = SignTracker(matrix_parameters(tracked))
    steps = {
        "untracked": make_step(plain, None),
        "control": make_step(control, None),
        "tracked": make_step(tracked, tracker),
    }

    generator = torch.Generator().manual_seed(0)

    def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        tokens = torch.randint(
            0, VOCAB, (args.block, args.batch, args.seq_len + 1), generator=generator
        )
        return [(t[:, :-1], t[:, 1:]) for t in tokens]

    for step in steps.values():  # warm-up
        time_block(step, batches())
    per_step: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in tqdm(range(args.rounds), desc="rounds", leave=False):
        block = batches()
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            per_step[name].append(time_block(steps[name], block))

    observe_times = []
    for _ in range(200):
        started = time.perf_counter()
        tracker.observe()
        observe_times.append(time.perf_counter() - started)

    log_times = []  # what the trial loop asks the tracker at every logged row
    for _ in range(200):
        started = time.perf_counter()
        tracker.window_stats()
        tracker.tensor_window_stats()
        log_times.append(time.perf_counter() - started)

    untracked = statistics.median(per_step["untracked"])
    tracked_s = statistics.median(per_step["tracked"])
    ratio = paired_ratio(per_step["tracked"], per_step["untracked"])
    noise = paired_ratio(per_step["control"], per_step["untracked"])
    print(f"tracked scalars          : {tracker.n_tracked} in {len(tracker.tensor_names)} tensors")
    print(f"threads / batch / seq_len: {args.threads} / {args.batch} / {args.seq_len}")
    print(f"untracked step (median)  : {untracked * 1e3:.2f} ms")
    print(f"tracked step (median)    : {tracked_s * 1e3:.2f} ms")
    print(f"observe() alone (median) : {statistics.median(observe_times) * 1e6:.0f} µs")
    print(f"ratio tracked/untracked  : {ratio:.4f}  (median of {args.rounds} paired rounds)")
    print(f"ratio control/untracked  : {noise:.4f}  (same models, no tracking: noise floor)")
    print(f"overhead                 : {(ratio - 1) * 100:+.2f} %")
    print(f"observe share of a step  : {statistics.median(observe_times) / untracked * 100:.2f} %")
    log_s = statistics.median(log_times)
    print(f"log-row stats (median)   : {log_s * 1e6:.0f} µs (window + per-tensor, once per row)")
    share = (statistics.median(observe_times) + log_s / args.log_every) / untracked
    print(f"tracker share incl. logging every {args.log_every} steps: {share * 100:.2f} %")


if __name__ == "__main__":
    main()
