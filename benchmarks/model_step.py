"""Forward+backward+AdamW train-step throughput: xstilts (JAX) vs Hugging Face PyTorch XLM-R.

Same config (12 layers, width 768, 12 heads, FFN 3072, vocab 32k by default), same batch and
length, sequence classification with 3 labels, fp32, dropout 0.1 active, AdamW + grad-norm clipping
at 1.0 on both sides; ours is the real ``Trainer`` step (jit, shardings, donation). Each system
runs in its own process (measured on the 2-core CI machine: the Flax step ran 15-40% slower while
torch models were stepped in the same process), the processes alternate round by round, and we
report the median of every system's timed steps. The last line reads ``model_step: ours <x>
tok/s, pytorch <y> tok/s, ratio <x/y>`` (pytorch = the faster of eager and ``torch.compile``,
when the latter works here) with our default dropout PRNG (threefry). ``--dropout_rng`` lists
the PRNGs (``XLMRConfig.dropout_rng``) our step runs with, each as its own system (e.g.
``threefry,unsafe_rbg``: both are printed; on XLA:CPU threefry is the cheaper one, its masks
coming from ``xstilts.models.dropout``'s fused hash, ~10x less CPU per mask than rbg). The
load average is printed at the start and the end (the 2-core machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from child_process import run_child  # benchmarks/ is the script's directory

SYSTEMS = ("ours", "torch_eager", "torch_compile")
DEFAULT_RNG = "threefry"  # XLMRConfig.dropout_rng's default: the headline ratio uses it
DROPOUT_RNGS = ("threefry", "rbg", "unsafe_rbg")  # xstilts.models.xlmr.DROPOUT_RNGS


def _config_kwargs(args: argparse.Namespace) -> dict:
    return dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
                max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                eos_token_id=2)


def _data(args: argparse.Namespace):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(4, args.vocab - 1, (args.batch, args.length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    labels = rng.integers(0, 3, args.batch).astype(np.int32)
    return ids, np.ones_like(ids), labels


def run_ours(args: argparse.Namespace) -> list[float]:
    """The real ``xstilts.trainer.Trainer`` step: AdamW with decay mask, clipping, dropout."""
    import jax
    from step_timing import classification_trainer, time_train_steps  # benchmarks/ dir

    from xstilts.models.xlmr import XLMRConfig

    rng = args.system.partition(":")[2] or DEFAULT_RNG
    config = XLMRConfig(**_config_kwargs(args), dtype=args.dtype, dropout_rng=rng)
    tr = classification_trainer(config)
    ids, mask, labels = _data(args)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    state = tr.init_state(jax.random.key(0), ids.shape)
    return time_train_steps(tr, state, batch, warmup=args.warmup, steps=args.steps)


def run_torch(args: argparse.Namespace, compiled: bool) -> list[float]:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 2)
    config = XLMRobertaConfig(**_config_kwargs(args), num_labels=3)
    model = XLMRobertaForSequenceClassification(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, eps=1e-8)
    fwd = torch.compile(model) if compiled else model
    ids, mask, labels = (torch.tensor(x, dtype=torch.long) for x in _data(args))
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = fwd(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def _child(args: argparse.Namespace) -> None:
    if args.system.startswith("ours"):
        times = run_ours(args)
    else:
        times = run_torch(args, compiled=args.system == "torch_compile")
    print("RESULT " + json.dumps({"system": args.system, "times": times}))


def _spawn(system: str, argv: list[str], timeout: float) -> list[float] | None:
    result = run_child(__file__, system, argv, timeout)
    return None if result is None else result["times"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", dest="system")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dtype", default="float32", help="our compute dtype")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating process rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--dropout_rng", default=DEFAULT_RNG,
                        help="comma-separated dropout PRNGs for our step (threefry, rbg, "
                             "unsafe_rbg), each its own system; threefry always runs")
    args = parser.parse_args()
    if args.system:
        _child(args)
        return

    argv = [f"--{k}={getattr(args, k)}" for k in
            ("layers", "hidden", "vocab", "batch", "length", "dtype", "steps", "warmup")]
    rngs = [r for r in args.dropout_rng.split(",") if r and r != DEFAULT_RNG]
    bad = [r for r in rngs if r not in DROPOUT_RNGS]
    if bad:
        parser.error(f"--dropout_rng {','.join(bad)}: expected names from {DROPOUT_RNGS}")
    ours = ["ours"] + [f"ours:{r}" for r in dict.fromkeys(rngs)]
    systems = ours + [s for s in SYSTEMS[1:] if not (args.no_compile and s == "torch_compile")]
    tokens = args.batch * args.length
    print(f"model_step: {args.layers} layers x {args.hidden}, vocab {args.vocab}, batch "
          f"{args.batch} x {args.length}, ours in {args.dtype}, torch fp32; {args.rounds} rounds "
          f"x {args.steps} timed steps, separate processes, alternating; load average "
          f"{_load()}")
    times: dict[str, list[float]] = {s: [] for s in systems}
    for r in range(args.rounds):
        order = systems if r % 2 == 0 else systems[::-1]
        for system in order:
            got = _spawn(system, argv, args.timeout)
            if got:
                times[system].extend(got)
                print(f"  round {r} {system}: median {statistics.median(got):.3f} s/step")
    rates = {}
    for system, ts in times.items():
        if ts:
            rates[system] = tokens / statistics.median(ts)
            print(f"{system:>14}: {rates[system]:8.1f} tok/s (min {tokens / max(ts):.1f}, "
                  f"max {tokens / min(ts):.1f}, {len(ts)} steps)")
    torch_best = max(v for k, v in rates.items() if k.startswith("torch"))
    print(f"load average at the end {_load()}")
    for system in (s for s in ours if s != "ours" and s in rates):
        print(f"model_step: {system} {rates[system]:.1f} tok/s, ratio to pytorch "
              f"{rates[system] / torch_best:.2f}")
    print(f"model_step: ours {rates['ours']:.1f} tok/s, pytorch {torch_best:.1f} tok/s, "
          f"ratio {rates['ours'] / torch_best:.2f}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
