"""Speed and memory of nmt on this machine: one table.

    python benchmarks/run.py --model runs/de_en --data ../shared/data/multi30k

Phases run in fresh child processes so each reports its own peak RSS:
- ceiling: fp32 and bf16 matmul GFLOP/s (2048 x 2048, median of several runs);
- train: target tokens/s of full training steps (forward, loss, backward, clip, Adam) of the
  reference model (emb 256, biLSTM 2x256, LSTM decoder 512 with input feeding, Luong general
  attention, untied output over a joint vocabulary of 8000, dropout 0.3, 64 sentences a batch)
  on real, length-bucketed Multi30k batches; analytic FLOPs -> GFLOP/s and the ratio to the ceiling;
  the input-feeding decoder with its hand-written backward (nmt.input_feeding) and through
  autograd (its reference); one process per precision (TRAIN_GROUPS), its variants' steps
  interleaved batch by batch;
- decode: sentences/s of greedy and beam 5 on the test split (search only, model load excluded)
  in fp32, bf16 autocast, int8 dynamic quantization (with nmt's written-out LSTM step and with
  torch's quantized LSTM op) and with a lexical shortlist, with the BLEU of each; one process
  per beam, its variants warmed up on one batch and then run in turn, the order rotating;
- whole `nmt train` (recipes/reference_de_en.yaml) and `nmt translate` (fp32, int8, int8 with a
  shortlist) processes: their peak RSS.
Every figure is the median of --repeats runs. Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from nmt.batching import Batch
    from nmt.model import Seq2Seq
    from nmt.recipe import DecodeConfig
    from nmt.translate import SearchSettings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
T = TypeVar("T")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rotated(items: Sequence[T], k: int) -> list[T]:
    """items starting at position k % len(items), wrapping around: the k-th round's order when
    variants take turns, so none always runs first (or right after the same neighbour)."""
    k %= len(items)
    return [*items[k:], *items[:k]]


def phase_ceiling(args: argparse.Namespace) -> dict:
    import torch

    n = 2048
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        seconds = median_time(lambda a=a, b=b: a @ b, 10)
        out[f"matmul_{name}_gflops"] = 2 * n**3 / seconds / 1e9
    return out


def highest_ceiling(*measurements: dict) -> dict:
    """Per precision, the highest of several ceiling measurements: a ceiling measured while the
    clock was low would flatter every ratio against it."""
    return {
        key: max(m[key] for m in measurements if key in m)
        for key in ("matmul_fp32_gflops", "matmul_bf16_gflops")
    }


def reference_flops_per_step(
    batch, emb: int, enc: int, dec: int, att: int, vocab: int, input_feeding: bool = True
) -> float:
    """Forward matmul FLOPs x 3 (forward + backward) of one step of the reference model."""
    src_tokens = int(batch.src_lengths.sum())
    tgt_tokens = batch.tgt_in.numel()  # padded steps run too
    s = batch.src.size(1)
    per_src = 2 * (2 * 4 * enc * (emb + enc)) + 2 * (2 * enc) * dec  # biLSTM + key projection
    per_tgt = (
        2 * 4 * dec * (emb + (att if input_feeding else 0) + dec)  # decoder LSTM
        + 2 * s * dec
        + 2 * s * 2 * enc  # scores and context
        + 2 * (2 * enc + dec) * att  # attentional vector
        + 2 * att * vocab
    )  # output layer
    bridge = batch.size * 2 * 2 * (2 * enc) * dec
    return 3.0 * (src_tokens * per_src + tgt_tokens * per_tgt + bridge)


# train.loss_chunk_elements of the chunked-loss variants: 8 MB of fp32 logits per chunk
LOSS_CHUNK = 2**21
# (label, ModelConfig changes (+ the NOT_MODEL_FIELDS), precision); the first is the reference
# model. The *_autograd_loop variants run the input-feeding decoder's written-out loop through
# autograd, the reference of nmt.input_feeding's backward; the *_torch_dropout_adam variants draw
# dropout masks with torch's bernoulli_ and step torch's default (per-tensor) Adam, as the
# recipes' recorded runs did (train.dropout_masks: bernoulli, train.fused_adam: false), the
# reference of the defaults (nmt.dropout's masks, fused Adam).
TORCH_DROPOUT_ADAM = {"dropout_masks": "bernoulli", "fused_adam": False}
# Each group runs in a child process of its own, its variants' steps interleaved. oneDNN and
# ideep keep only 32 and 16 compiled kernels (nmt.runtime.limit_primitive_cache), as in `nmt
# train`, and a training runs one model in one precision: nine models of both precisions in one
# process evicted each other's kernels, which no training does, and understated the bf16 steps
# (README, Benchmarks). The system_malloc group runs under glibc's default malloc (the allocator
# setting is process-wide).
TRAIN_GROUPS = {
    "fp32": (
        ("train_fp32", {}, "fp32"),
        ("train_fp32_autograd_loop", {"manual_backward": False}, "fp32"),
        ("train_fp32_torch_dropout_adam", TORCH_DROPOUT_ADAM, "fp32"),
        ("train_fp32_nn_lstm_per_step", {"unrolled_lstm": False}, "fp32"),
        ("train_fp32_no_input_feeding", {"input_feeding": False}, "fp32"),
        ("train_fp32_chunked_loss", {"loss_chunk_elements": LOSS_CHUNK}, "fp32"),
    ),
    "bf16": (
        ("train_bf16", {}, "bf16"),
        ("train_bf16_autograd_loop", {"manual_backward": False}, "bf16"),
        ("train_bf16_torch_dropout_adam", TORCH_DROPOUT_ADAM, "bf16"),
    ),
    "system_malloc": (
        ("train_fp32_system_malloc", {}, "fp32"),
        ("train_fp32_chunked_loss_system_malloc", {"loss_chunk_elements": LOSS_CHUNK}, "fp32"),
    ),
}
NOT_MODEL_FIELDS = (
    "unrolled_lstm",
    "manual_backward",
    "loss_chunk_elements",
    "dropout_masks",
    "fused_adam",
)


def malloc_env(system_malloc: bool) -> dict[str, str]:
    """The environment of a child process: NMT_SYSTEM_MALLOC=1 keeps glibc's defaults."""
    return {**os.environ, "NMT_SYSTEM_MALLOC": "1" if system_malloc else "0"}


def reference_batches(data: Path) -> list[Batch]:
    """The training phases' batches, length-bucketed like training (nmt.batching): a joint 8k
    SentencePiece model of 20,000 Multi30k pairs, then 64 pairs of similar length taken from 12
    points spread over the length distribution."""
    from nmt.batching import make_batch
    from nmt.data import load_splits
    from nmt.recipe import DataConfig, TokenizerConfig
    from nmt.tokenizer import Tokenizer

    text = load_splits(DataConfig(max_train_examples=20000), ["train"], data)["train"]
    tokenizer = Tokenizer.train(text.source, text.target, TokenizerConfig(vocab_size=8000), 0)
    src, tgt = tokenizer.encode_source(text.source), tokenizer.encode_target(text.target)
    order = sorted(range(len(src)), key=lambda i: (len(src[i]), len(tgt[i])))
    starts = [k * (len(order) - 64) // 11 for k in range(12)]
    return [
        make_batch([src[i] for i in order[j : j + 64]], [tgt[i] for i in order[j : j + 64]])
        for j in starts
    ]


def reference_model(**fields: object) -> Seq2Seq:
    """The performance issue's reference model (ModelConfig's defaults, untied, over an 8k
    vocabulary) with `fields` changed, seeded with 0, in training mode."""
    import torch

    from nmt.model import build_model
    from nmt.recipe import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(tie_output=False, tie_embeddings=False, **fields)  # type: ignore[arg-type]
    return build_model(config, 8000, 8000).train()


def phase_train(args: argparse.Namespace) -> dict:
    import torch

    from nmt.dropout import use_dropout_masks
    from nmt.runtime import peak_rss_mb
    from nmt.train import batch_loss

    batches = reference_batches(args.data)
    ceiling_before = phase_ceiling(args)  # in this process too, beside the steps it is a ceiling of
    variants = TRAIN_GROUPS[args.variant or "fp32"]
    steps = {}
    input_feeding = {}  # per label, for the FLOP count
    for label, changes, precision in variants:
        model = reference_model(**{k: v for k, v in changes.items() if k not in NOT_MODEL_FIELDS})
        model.decoder.unrolled_lstm = changes.get("unrolled_lstm", True)
        model.decoder.manual_backward = changes.get("manual_backward", True)
        use_dropout_masks(model, changes.get("dropout_masks", "bits"))  # as nmt.train does
        optimizer = torch.optim.Adam(
            model.parameters(), lr=1e-3, fused=changes.get("fused_adam", True) or None
        )
        chunk_elements = changes.get("loss_chunk_elements", 0)

        def step(
            batch, model=model, optimizer=optimizer, precision=precision, chunk=chunk_elements
        ) -> None:
            dtype = torch.bfloat16 if precision == "bf16" else None
            batch_loss(model, batch, 0.1, chunk, dtype, backward_tokens=batch.n_target_tokens)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for b in batches[:2]:
            step(b)  # warm-up
        steps[label] = step
        input_feeding[label] = model.decoder.input_feeding
    # Interleaved: each batch is a step of every variant in turn (the order rotating), --repeats
    # times over, so a ratio between variants compares steps taken seconds apart.
    rates: dict[str, list[float]] = {label: [] for label in steps}
    flops: dict[str, list[float]] = {label: [] for label in steps}
    labels = list(steps)
    for k in range(args.repeats * len(batches[2:])):
        b = batches[2 + k % len(batches[2:])]
        for label in rotated(labels, k):
            seconds = median_time(lambda b=b, label=label: steps[label](b), 1)
            rates[label].append(b.n_target_tokens / seconds)
            flops[label].append(
                reference_flops_per_step(b, 256, 256, 512, 512, 8000, input_feeding[label])
                / seconds
                / 1e9
            )
    out: dict[str, float] = highest_ceiling(ceiling_before, phase_ceiling(args))
    for label in steps:
        out[f"{label}_tok_s"] = statistics.median(rates[label])
        out[f"{label}_gflops"] = statistics.median(flops[label])
    out["peak_rss_mb"] = peak_rss_mb()
    return out


# fp32 is the reference; "shortlist" is fp32 scoring only `nmt shortlist`'s candidates.
# int8 is `nmt translate --precision int8` (nmt.quantize: its decoder steps run LSTMStep);
# int8_lstm_op, its reference, keeps torch's quantized LSTM op for the steps.
# int8_shortlist: `nmt translate --precision int8 --shortlist`, the fastest combination
DECODE_VARIANTS = ("fp32", "bf16", "int8", "int8_lstm_op", "shortlist", "int8_shortlist")


def batch_size(args: argparse.Namespace, beam: int) -> int:
    """--batch-size, or --beam-batch-size for beam search: the sentences a batch may hold."""
    return args.batch_size if beam == 1 else args.beam_batch_size or args.batch_size


def search_settings(
    args: argparse.Namespace, beam: int, decode: DecodeConfig | None = None
) -> SearchSettings:
    """The decoding settings of a beam: batch_size() sentences, at most --max-hypotheses, and the
    rest (length penalty, length limits) from the model's recipe, as `nmt translate` takes them."""
    from nmt.recipe import DecodeConfig
    from nmt.translate import SearchSettings

    return SearchSettings.from_decode(
        decode or DecodeConfig(),
        beam_size=beam,
        batch_size=batch_size(args, beam),
        max_hypotheses=args.max_hypotheses,
    )


def phase_decode(args: argparse.Namespace) -> dict:
    """Every decoding variant at one beam (--beam), in one process: each warmed up on one batch,
    then --repeats passes over test2016 in turn, the order rotating, so a ratio between variants
    compares runs seconds apart on this shared machine rather than processes minutes apart."""
    import torch

    from nmt import checkpoint
    from nmt.data import load_splits
    from nmt.evaluate import score_corpus
    from nmt.quantize import quantize_int8
    from nmt.runtime import peak_rss_mb, resolve_device, share_threads
    from nmt.shortlist import Shortlist
    from nmt.translate import Translator

    recipe, tokenizer, model = checkpoint.load_model(args.model)
    test = load_splits(recipe.data, ["test"], args.data)["test"]
    share_threads(args.workers)  # as `nmt translate --workers` does
    beam = args.beam
    translators = {}
    for variant in DECODE_VARIANTS:
        m = model
        if variant.startswith("int8"):
            m = quantize_int8(model, lstm_step=variant != "int8_lstm_op")
        translators[variant] = Translator(
            m,
            tokenizer,
            resolve_device("cpu"),
            search_settings(args, beam, recipe.decode),
            torch.bfloat16 if variant == "bf16" else None,
            Shortlist.load(args.shortlist, tokenizer) if variant.endswith("shortlist") else None,
            args.workers,
        )
        translators[variant].translate(test.source[: args.batch_size])  # warm-up
    seconds: dict[str, list[float]] = {v: [] for v in DECODE_VARIANTS}
    hyps: dict[str, list[str]] = {}
    for r in range(args.repeats):
        for variant in rotated(DECODE_VARIANTS, r):
            start = time.perf_counter()
            found = translators[variant].translate(test.source)
            seconds[variant].append(time.perf_counter() - start)
            hyps[variant] = [h[0].text for h in found]
    key = "greedy" if beam == 1 else f"beam{beam}"
    out: dict[str, float | None] = {}
    for variant in DECODE_VARIANTS:
        out[f"{key}_{variant}_sent_s"] = len(test.source) / statistics.median(seconds[variant])
        out[f"{key}_{variant}_bleu"] = score_corpus(hyps[variant], test.target)["bleu"].score
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_of_command(args: list[str], system_malloc: bool = False) -> float:
    """Peak RSS (MB) of one `cli.py` command run to completion in its own process."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=malloc_env(system_malloc),
        )
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(args[:2])} failed:\n{err.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024


# `nmt translate` configurations whose whole-process peak RSS the table shows
TRANSLATE_RSS = ("fp32", "int8", "int8_shortlist")


def process_rss(args: argparse.Namespace) -> dict:
    """What users see: peak RSS of a whole `nmt train` (reference model, tokenizer training, 30
    steps, a validation and a checkpoint) and of `nmt translate` of test2016 from a file."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.decode_only:
            out.update(train_rss(args, tmp))
        if args.model:
            from nmt.data import load_splits
            from nmt.recipe import DataConfig

            source = Path(tmp) / "test.src"
            test = load_splits(DataConfig(), ["test"], args.data)["test"]
            source.write_text("".join(line + "\n" for line in test.source), encoding="utf-8")
            for variant in TRANSLATE_RSS:
                options = ["--precision", variant.removesuffix("_shortlist")]
                if variant.endswith("shortlist"):
                    options += ["--shortlist", str(args.shortlist)]
                for beam in (1, 5):
                    out[f"rss_translate_{variant}_beam{beam}"] = peak_rss_of_command(
                        [
                            *("translate", str(args.model), "-i", str(source), "-o", f"{tmp}/h"),
                            *("--beam-size", str(beam), *options),
                            *("--batch-size", str(batch_size(args, beam))),
                            *("--max-hypotheses", str(args.max_hypotheses)),
                            *("--threads", str(args.threads), "--workers", str(args.workers)),
                        ]
                    )
    return out


def train_rss(args: argparse.Namespace, tmp: str) -> dict[str, float]:
    """Peak RSS of whole `nmt train` processes of the reference model's recipe (bf16, 64
    sentences a batch): default, system malloc, whole logits."""
    out = {}
    train = [
        "train",
        str(ROOT / "recipes" / "reference_de_en.yaml"),
        "--data",
        str(args.data),
        "--out",
        f"{tmp}/run",
        "--overwrite",
        "--threads",
        str(args.threads),
        "--no-progress",
        *("--set", "train.max_steps=30", "--set", "train.validate_every=1000"),
    ]
    out["rss_train"] = peak_rss_of_command(train)
    out["rss_train_system_malloc"] = peak_rss_of_command(train, system_malloc=True)
    whole = [*train, "--set", "train.loss_chunk_elements=0"]  # the reference loss path
    out["rss_train_whole_logits"] = peak_rss_of_command(whole)
    out["rss_train_whole_logits_system_malloc"] = peak_rss_of_command(whole, system_malloc=True)
    return out


def child(
    phase: str,
    args: argparse.Namespace,
    extra: list[str] | None = None,
    system_malloc: bool = False,
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--batch-size",
        str(args.batch_size),
    ]
    if args.beam_batch_size:
        cmd += ["--beam-batch-size", str(args.beam_batch_size)]
    cmd += ["--max-hypotheses", str(args.max_hypotheses)]
    cmd += ["--workers", str(args.workers)]
    if args.data:
        cmd += ["--data", str(args.data)]
    if args.model:
        cmd += ["--model", str(args.model)]
    if args.shortlist:
        cmd += ["--shortlist", str(args.shortlist)]
    cmd += extra or []
    env = malloc_env(system_malloc)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_rows(args: argparse.Namespace, ceiling: dict, rss: dict) -> list[tuple[str, str, str]]:
    """The training phases (tok/s, GFLOP/s against the ceiling) and whole-process train RSS."""
    train: dict[str, float] = {}
    group_rss = {}
    for group in TRAIN_GROUPS:
        result = child("train", args, ["--variant", group], system_malloc=group == "system_malloc")
        ceiling = highest_ceiling(ceiling, result)
        group_rss[group] = result.pop("peak_rss_mb")
        train.update({k: v for k, v in result.items() if not k.startswith("matmul_")})
    rows = [
        (
            f"matmul {name} 2048^2, highest",
            f"{ceiling[f'matmul_{name}_gflops']:.0f} GFLOP/s",
            "the highest of the ceiling phase and the train phases' own measurements before and "
            "after their steps: the ratios below are against it",
        )
        for name in ("fp32", "bf16")
    ]
    base = train["train_fp32_tok_s"]
    for group, (label, _, ceil) in ((g, v) for g, vs in TRAIN_GROUPS.items() for v in vs):
        fp32 = "fp32" if group == "fp32" else "fp32 (another process)"
        ratio = train[f"{label}_gflops"] / ceiling[f"matmul_{ceil}_gflops"]
        rate = train[f"{label}_tok_s"]
        versus = ""
        for suffix, name in (
            ("autograd_loop", "autograd loop"),
            ("torch_dropout_adam", "torch's dropout and Adam"),
        ):
            if f"{label}_{suffix}_tok_s" in train:
                versus += f", x{rate / train[f'{label}_{suffix}_tok_s']:.2f} vs {name}"
        rows.append(
            (
                f"{label} (tok/s)",
                f"{rate:.0f}",
                f"x{rate / base:.2f} vs {fp32}{versus}; {train[f'{label}_gflops']:.0f} "
                f"GFLOP/s = {ratio:.2f} of {ceil} ceiling",
            )
        )
    rows.append(
        (
            "peak RSS nmt train",
            f"{rss['rss_train']:.0f} MB",
            "recipes/reference_de_en.yaml (bf16, 30 steps and a validation), whole process, "
            "chunked loss (the default); the benchmark's train phases, per group: "
            + ", ".join(
                f"{g} ({len(TRAIN_GROUPS[g])} models) {mb:.0f} MB" for g, mb in group_rss.items()
            ),
        )
    )
    rows.append(
        (
            "peak RSS nmt train, system malloc",
            f"{rss['rss_train_system_malloc']:.0f} MB",
            "the same with NMT_SYSTEM_MALLOC=1 (glibc's defaults: big blocks mmapped and freed)",
        )
    )
    rows.append(
        (
            "peak RSS nmt train, whole logits",
            f"{rss['rss_train_whole_logits']:.0f} MB",
            "the same with train.loss_chunk_elements=0 (no chunks); with NMT_SYSTEM_MALLOC=1: "
            f"{rss['rss_train_whole_logits_system_malloc']:.0f} MB",
        )
    )
    return rows


def main() -> None:
    from nmt.recipe import DecodeConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, help="trained model (run directory or .pt) for decoding"
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="decoding batch (sentences)")
    parser.add_argument(
        "--beam-batch-size", type=int, help="decoding batch of beam search (default: --batch-size)"
    )
    parser.add_argument(
        "--max-hypotheses",
        type=int,
        default=DecodeConfig.max_hypotheses,
        help="hypotheses (sentences x beam) a decoding batch holds at most (default: nmt's)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="batches decoded at once (`nmt translate --workers`)"
    )
    parser.add_argument(
        "--decode-only", action="store_true", help="skip the training phases (about 8 minutes)"
    )
    parser.add_argument("--phase", choices=["ceiling", "train", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--shortlist", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--beam", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.phase:
        import torch

        from nmt.runtime import limit_primitive_cache, tune_allocator

        torch.set_num_threads(args.threads)
        limit_primitive_cache()  # as `nmt train` and `nmt translate` do
        tune_allocator()  # as `nmt train` does; a no-op when NMT_SYSTEM_MALLOC=1
        result = {"ceiling": phase_ceiling, "train": phase_train, "decode": phase_decode}[
            args.phase
        ](args)
        print(json.dumps(result))
        return

    ceiling = child("ceiling", args)
    rows = [
        ("matmul fp32 2048^2", f"{ceiling['matmul_fp32_gflops']:.0f} GFLOP/s", ""),
        ("matmul bf16 2048^2", f"{ceiling['matmul_bf16_gflops']:.0f} GFLOP/s", ""),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            args.shortlist = Path(tmp) / "shortlist.pt"
            peak_rss_of_command(  # builds the shortlist the "shortlist" variants decode with
                ["shortlist", str(args.model), "--data", str(args.data), "-o", str(args.shortlist)]
            )
        rss = process_rss(args)
        decode = {}
        for beam in (1, 5) if args.model else ():
            decode.update(child("decode", args, ["--beam", str(beam)]))
            decode[f"rss_decode_{beam}"] = decode.pop("peak_rss_mb")
        if not args.decode_only:
            rows += train_rows(args, ceiling, rss)
    for variant in TRANSLATE_RSS if args.model else ():
        for beam in (1, 5):
            sentences = search_settings(args, beam).sentences_per_batch
            rows.append(
                (
                    f"peak RSS nmt translate {variant}, beam {beam}",
                    f"{rss[f'rss_translate_{variant}_beam{beam}']:.0f} MB",
                    f"test2016 from a file, {sentences} sentences a batch",
                )
            )
    if args.model:
        for beam in (1, 5):
            rows.append(
                (
                    f"peak RSS decode phase, beam {beam}",
                    f"{decode[f'rss_decode_{beam}']:.0f} MB",
                    f"all {len(DECODE_VARIANTS)} variants below loaded in one process",
                )
            )
        for beam in (1, 5):
            key = "greedy" if beam == 1 else "beam5"
            ref = decode[f"{key}_fp32_sent_s"]
            for variant in DECODE_VARIANTS:
                rate = decode[f"{key}_{variant}_sent_s"]
                step = ""
                if variant == "int8":
                    step = f", x{rate / decode[f'{key}_int8_lstm_op_sent_s']:.2f} vs int8_lstm_op"
                rows.append(
                    (
                        f"{key} {variant} (sent/s)",
                        f"{rate:.0f}",
                        f"x{rate / ref:.2f} vs fp32{step}; "
                        f"BLEU {decode[f'{key}_{variant}_bleu']:.2f}",
                    )
                )
    width = max(len(r[0]) for r in rows)
    print(
        f"threads {args.threads}, decoding workers {args.workers}, medians of {args.repeats} runs"
    )
    print(f"{'figure':{width}s} | {'value':>16s} | notes")
    print(f"{'-' * width}-|-{'-' * 16}-|------")
    for name, value, notes in rows:
        print(f"{name:{width}s} | {value:>16s} | {notes}")


if __name__ == "__main__":
    main()
