"""The training loop: forward, loss, backward, clip, step; validate, checkpoint, stop.

Everything a run depends on is passed in or stored in its checkpoints (no global state), so a
resumed run rebuilds the same batches, learning rate and random streams and continues the same
trajectory, and the loop can later run once per device under torch.distributed.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nmt import checkpoint as ckpt
from nmt.batching import Batch, BucketedBatches, make_batch
from nmt.data import ParallelText
from nmt.dropout import use_dropout_masks
from nmt.errors import TrainingError
from nmt.evaluate import score_corpus
from nmt.loss import chunked_output_loss, sequence_loss
from nmt.model import Seq2Seq, count_parameters
from nmt.recipe import Recipe, TrainConfig
from nmt.runtime import autocast_dtype, peak_rss_mb, rng_state, set_rng_state
from nmt.tokenizer import Tokenizer
from nmt.translate import SearchSettings, Translator

log = logging.getLogger("nmt")


@dataclass
class Progress:
    """Where a run stands; stored in every checkpoint so that --resume continues from here."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # next batch to take from the epoch's order
    best_bleu: float = -1.0
    best_step: int = 0
    validations_without_gain: int = 0  # for early stopping
    validations_since_decay: int = 0  # for the plateau learning-rate decay
    lr_scale: float = 1.0
    bad_steps_in_a_row: int = 0
    skipped_steps: int = 0
    train_seconds: float = 0.0
    valid_seconds: float = 0.0
    finished: bool = False

    @property
    def elapsed_minutes(self) -> float:
        """Time in the training loop so far: what train.max_minutes limits."""
        return (self.train_seconds + self.valid_seconds) / 60


def learning_rate(config: TrainConfig, progress: Progress, total_steps: int) -> float:
    """Linear warm-up to the base rate, then the schedule's decay.

    plateau: the decays applied so far on validation plateaus. cosine: half a cosine from the base
    rate at the end of warm-up to min_learning_rate at step `total_steps`. wsd: the base rate
    until the last lr_decay_fraction of `total_steps`, then linearly down to min_learning_rate:
    a fixed budget spends most steps at the high rate and still ends at a small one.
    """
    step = progress.step + 1
    warm = min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_schedule == "cosine":
        span = max(1, total_steps - config.warmup_steps)
        done = min(1.0, max(0.0, (step - config.warmup_steps) / span))
        low, high = config.min_learning_rate, config.learning_rate
        return (low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * done))) * warm
    if config.lr_schedule == "wsd":
        span = config.lr_decay_fraction * total_steps
        left = total_steps - step  # steps after this one
        if span <= 0 or left >= span:
            return config.learning_rate * warm
        low, high = config.min_learning_rate, config.learning_rate
        return (low + (high - low) * max(0.0, left) / span) * warm
    return max(config.min_learning_rate, config.learning_rate * progress.lr_scale) * warm


@dataclass
class TrainingData:
    """Tokenized training pairs (and their text, for subword sampling) and raw validation text."""

    source_ids: list[list[int]]
    target_ids: list[list[int]]
    valid: ParallelText
    skipped_long: int = 0
    source_text: list[str] = field(default_factory=list)
    target_text: list[str] = field(default_factory=list)


def within_length(src: list[int], tgt: list[int], max_length: int) -> bool:
    """Whether a pair fits train.max_length: source with its EOS, target with BOS/EOS."""
    return len(src) <= max_length and len(tgt) + 1 <= max_length


def prepare_data(
    train: ParallelText, valid: ParallelText, tokenizer: Tokenizer, max_length: int
) -> TrainingData:
    """Encode the training split once; drop empty pairs and pairs longer than max_length tokens."""
    src_all = tokenizer.encode_source(train.source)
    tgt_all = tokenizer.encode_target(train.target)
    kept = [
        i
        for i, (s, t) in enumerate(zip(src_all, tgt_all, strict=True))
        if len(s) > 1 and t and within_length(s, t, max_length)
    ]
    if not kept:
        raise TrainingError(
            f"no training pair is non-empty and within train.max_length {max_length}"
        )
    return TrainingData(
        [src_all[i] for i in kept],
        [tgt_all[i] for i in kept],
        valid,
        len(src_all) - len(kept),
        [train.source[i] for i in kept],
        [train.target[i] for i in kept],
    )


@contextmanager
def handling_stop_signals(handler: Callable[[int, object], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` inside the block; the previous handlers come back."""
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class StopRequest:
    """Set by SIGINT/SIGTERM: the loop finishes its step, writes a checkpoint and returns."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: object) -> None:
            if self.signal_name is not None:  # asked twice: stop at once
                raise KeyboardInterrupt
            self.signal_name = signal.Signals(signum).name
            log.warning("%s: stopping after this step (again to stop at once)", self.signal_name)

        with handling_stop_signals(handler):
            yield


@dataclass
class _LossWindow:
    """Loss and target tokens since the last log line (skipped steps count for neither)."""

    loss: float = 0.0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, tokens: int) -> None:
        if math.isfinite(loss):
            self.loss += loss
            self.tokens += tokens


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def batch_loss(
    model: Seq2Seq,
    batch: Batch,
    label_smoothing: float,
    chunk_elements: int,
    dtype: torch.dtype | None,
    backward_tokens: int | None = None,
) -> torch.Tensor:
    """Summed teacher-forced loss of a batch; with backward_tokens, loss / backward_tokens is also
    back-propagated (chunk by chunk when chunk_elements > 0, see chunked_output_loss)."""
    assert batch.tgt_out is not None
    device = batch.src.device.type
    with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        hidden = model.attentional(batch) if chunk_elements else model(batch)
    if chunk_elements:
        scale = None if backward_tokens is None else 1.0 / backward_tokens
        return chunked_output_loss(
            hidden,
            batch.tgt_out,
            model.decoder.output,
            label_smoothing,
            chunk_elements,
            backward_scale=scale,
            autocast_dtype=dtype,
        )
    loss = sequence_loss(hidden, batch.tgt_out, label_smoothing)
    if backward_tokens is not None:
        (loss / backward_tokens).backward()
    return loss


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        tokenizer: Tokenizer,
        model: Seq2Seq,
        data: TrainingData,
        run_dir: Path,
        device: torch.device,
        progress_bar: bool = True,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.config = recipe.train
        self.tokenizer = tokenizer
        self.model = model.to(device)
        self.data = data
        self.run_dir = run_dir
        self.device = device
        self.progress = Progress()
        self.progress_bar = progress_bar
        self.on_step = on_step  # test hook: called after every step
        use_dropout_masks(self.model, self.config.dropout_masks)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
            fused=self.config.fused_adam or None,  # None: torch's default loop
        )
        # the current epoch's token ids: data's, or a sampled segmentation (epoch_ids)
        self.source_ids, self.target_ids = data.source_ids, data.target_ids
        self.dtype = autocast_dtype(self.config.precision)
        self.planned_steps = self.total_steps()  # the cosine and wsd schedules' length
        self.stop_request = StopRequest()
        # the moving average of the weights (train.ema_decay), a copy that only follows them
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay))
            if self.config.ema_decay > 0
            else None
        )

    def learning_rate(self) -> float:
        """The rate of the next step under the recipe's schedule."""
        return learning_rate(self.config, self.progress, self.planned_steps)

    def epoch_ids(self, epoch: int) -> tuple[list[list[int]], list[list[int]]]:
        """The token ids of `epoch`: the fixed segmentation, or with tokenizer.sampling_alpha a
        new sampled one, seeded by (seed, epoch) so that a resumed run draws it again. A sampled
        pair longer than train.max_length keeps its fixed segmentation."""
        t, d = self.recipe.tokenizer, self.data
        if t.sampling_alpha == 0:
            return d.source_ids, d.target_ids
        src, tgt = self.tokenizer.sample_pairs(
            d.source_text,
            d.target_text,
            t.sampling_alpha,
            t.sampling_nbest,
            seed=self.recipe.seed * 1_000_003 + epoch,
        )
        for i, (s, g) in enumerate(zip(src, tgt, strict=True)):
            if not within_length(s, g, self.config.max_length):
                src[i], tgt[i] = d.source_ids[i], d.target_ids[i]
        return src, tgt

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Index lists of the batches of `epoch` over (source_ids, target_ids), in order."""
        return BucketedBatches(
            [len(s) for s in self.source_ids],
            [len(t) for t in self.target_ids],
            self.config.batch_tokens,
            self.config.max_sentences,
            self.recipe.seed,
        ).epoch(epoch)

    # ----- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state(),
        }
        if self.ema is not None:
            state["ema"] = {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
        if self.ema is not None:  # a run resumes with its stored recipe, so the state has one
            self.ema.load_state_dict(state["ema"])

    def save_checkpoint(self, metrics: dict[str, float] | None = None) -> Path:
        """A full checkpoint for this step; older ones beyond keep_checkpoints go only after."""
        path = ckpt.step_path(self.run_dir, self.progress.step)
        payload = ckpt.build_payload(
            self.recipe,
            self.tokenizer,
            self.model,
            self.progress.step,
            metrics,
            training=self.state_dict(),
        )
        ckpt.atomic_save(payload, path)
        if self.ema is not None:
            ema = ckpt.build_payload(
                self.recipe,
                self.tokenizer,
                self.ema.module,
                self.progress.step,
                {"ema_decay": self.config.ema_decay},
            )
            ckpt.atomic_save(ema, self.run_dir / ckpt.EMA)
        for old in ckpt.step_checkpoints(self.run_dir)[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, metrics: dict[str, float]) -> None:
        payload = ckpt.build_payload(
            self.recipe, self.tokenizer, self.model, self.progress.step, metrics
        )
        ckpt.atomic_save(payload, self.run_dir / ckpt.BEST)

    # ----- one step ------------------------------------------------------------------------

    def train_step(self, batch_indices: list[int]) -> tuple[float, int]:
        """Returns (summed loss, target tokens); a skipped update returns (nan, tokens)."""
        src, tgt = self.source_ids, self.target_ids
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        n_tokens = sum(len(tgt[i]) + 1 for i in batch_indices)
        try:
            batch = make_batch([src[i] for i in batch_indices], [tgt[i] for i in batch_indices]).to(
                self.device
            )
            loss = batch_loss(
                self.model,
                batch,
                self.config.label_smoothing,
                self.config.loss_chunk_elements,
                self.dtype,
                backward_tokens=n_tokens,
            )
            grad_norm = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(),
                self.config.clip_norm if self.config.clip_norm > 0 else math.inf,
            )
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.progress.skipped_steps += 1
            log.warning(
                "step %d: out of memory on a batch of %d sentences; batch skipped",
                self.progress.step + 1,
                len(batch_indices),
            )
            return math.nan, n_tokens
        loss_value = float(loss.detach())
        if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            self.progress.bad_steps_in_a_row += 1
            self.progress.skipped_steps += 1
            log.warning(
                "step %d: non-finite loss or gradient; update skipped (%d in a row)",
                self.progress.step + 1,
                self.progress.bad_steps_in_a_row,
            )
            if self.progress.bad_steps_in_a_row >= self.config.max_bad_steps:
                raise TrainingError(
                    f"{self.progress.bad_steps_in_a_row} non-finite losses in a row at step "
                    f"{self.progress.step + 1}; stopping (lower train.learning_rate?)"
                )
            return math.nan, n_tokens
        self.progress.bad_steps_in_a_row = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss_value, n_tokens

    # ----- validation ----------------------------------------------------------------------

    @torch.inference_mode()
    def validation_loss(self) -> tuple[float, float]:
        """Per-token cross-entropy (no smoothing) and perplexity on the validation split."""
        self.model.eval()
        valid = self.data.valid
        src = self.tokenizer.encode_source(valid.source)
        tgt = self.tokenizer.encode_target(valid.target)
        order = sorted(range(len(src)), key=lambda i: len(src[i]))
        total, tokens = 0.0, 0
        size = self.recipe.decode.batch_size
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            batch = make_batch([src[i] for i in idx], [tgt[i] for i in idx]).to(self.device)
            total += float(
                batch_loss(self.model, batch, 0.0, self.config.loss_chunk_elements, self.dtype)
            )
            tokens += batch.n_target_tokens
        ce = total / max(tokens, 1)
        return ce, math.exp(min(ce, 50.0))

    def validate(self) -> dict[str, float]:
        started = time.perf_counter()
        ce, ppl = self.validation_loss()
        translator = Translator(
            self.model,
            self.tokenizer,
            self.device,
            SearchSettings.from_decode(self.recipe.decode, beam_size=self.config.valid_beam_size),
            self.dtype,
        )
        hyps = [h[0].text for h in translator.translate(self.data.valid.source)]
        scores = score_corpus(hyps, self.data.valid.target)
        self.model.train()
        return {
            "valid_loss": round(ce, 4),
            "valid_ppl": round(ppl, 3),
            "valid_bleu": scores["bleu"].score,
            "valid_chrf": scores["chrf"].score,
            "valid_seconds": round(time.perf_counter() - started, 1),
        }

    def after_validation(self, metrics: dict[str, float]) -> bool:
        """Track the best BLEU, decay the learning rate on plateaus; True = stop early."""
        p, c = self.progress, self.config
        if metrics["valid_bleu"] > p.best_bleu:
            p.best_bleu, p.best_step = metrics["valid_bleu"], p.step
            p.validations_without_gain = p.validations_since_decay = 0
            self.save_best(metrics)
        else:
            p.validations_without_gain += 1
            p.validations_since_decay += 1
            if c.lr_schedule == "plateau" and p.validations_since_decay >= c.lr_patience:
                p.lr_scale *= c.lr_decay_factor
                p.validations_since_decay = 0
                log.info(
                    "validation BLEU did not improve for %d validations: lr -> %.2e",
                    c.lr_patience,
                    self.learning_rate(),
                )
        return p.validations_without_gain >= c.patience

    # ----- the loop ------------------------------------------------------------------------

    def _write_metrics(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def total_steps(self) -> int:
        per_epoch = len(self.epoch_batches(0))  # sampled epochs differ by a few batches
        by_epochs = per_epoch * self.config.max_epochs
        return min(by_epochs, self.config.max_steps) if self.config.max_steps else by_epochs

    def fit(self) -> Progress:
        """Train until a stop condition; on SIGINT/SIGTERM return early with a checkpoint."""
        p = self.progress
        if p.finished:
            log.info("this run already finished at step %d", p.step)
            return p
        log.info(
            "model: %s parameters; %d training pairs (%d skipped as empty or too long); device %s",
            f"{count_parameters(self.model):,}",
            len(self.data.source_ids),
            self.data.skipped_long,
            self.device,
        )
        self._last_validated = p.step if p.step > 0 else -1
        bar = Bar(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not self.progress_bar,
            transient=True,
        )
        with self.stop_request.installed(), bar:
            task = bar.add_task("train", total=self.planned_steps, completed=p.step, info="")
            reason = self._train_until_stop(bar, task)
        if reason is None:
            path = self.save_checkpoint()
            log.warning(
                "%s received: stopped after step %d, checkpoint %s; continue with --resume",
                self.stop_request.signal_name,
                p.step,
                path,
            )
            return p
        p.finished = True
        if self._last_validated != p.step:
            self._validate_and_save()
        else:
            self.save_checkpoint()  # records that the run has finished
        log.info(
            "training finished at step %d: %s; best validation BLEU %.2f at step %d",
            p.step,
            reason,
            p.best_bleu,
            p.best_step,
        )
        return p

    def _train_until_stop(self, bar: Bar, task: TaskID) -> str | None:
        """The loop over epochs and batches; returns why it stopped, None for a signal."""
        c, p = self.config, self.progress
        window = _LossWindow()
        while p.epoch < c.max_epochs:
            self.source_ids, self.target_ids = self.epoch_ids(p.epoch)
            order = self.epoch_batches(p.epoch)
            while p.batch_in_epoch < len(order):
                step_start = time.perf_counter()
                loss, n_tokens = self.train_step(order[p.batch_in_epoch])
                p.batch_in_epoch += 1
                p.step += 1
                p.train_seconds += time.perf_counter() - step_start
                window.add(loss, n_tokens)
                if self.on_step is not None:
                    self.on_step(self)
                if p.step % c.log_every == 0 and window.tokens:
                    bar.update(task, info=self._log_window(window))
                    window = _LossWindow()
                bar.update(task, completed=p.step)
                if p.step % c.validate_every == 0:
                    self._last_validated = p.step
                    if self._validate_and_save():
                        return f"no better validation BLEU in {c.patience} validations"
                    window.start = time.perf_counter()  # tokens/s excludes validation time
                if c.max_steps is not None and p.step >= c.max_steps:
                    return f"reached train.max_steps {c.max_steps}"
                if c.max_minutes is not None and p.elapsed_minutes >= c.max_minutes:
                    return f"reached train.max_minutes {c.max_minutes:g}"
                if self.stop_request:
                    return None
            p.epoch += 1
            p.batch_in_epoch = 0
        return f"reached train.max_epochs {c.max_epochs}"

    def _log_window(self, window: _LossWindow) -> str:
        p = self.progress
        record = {
            "step": p.step,
            "epoch": p.epoch,
            "train_loss": round(window.loss / window.tokens, 4),
            "lr": self.learning_rate(),
            "tokens_per_s": round(window.tokens / (time.perf_counter() - window.start), 1),
        }
        peak = peak_rss_mb()
        if peak is not None:
            record["peak_rss_mb"] = round(peak)
        self._write_metrics(record)
        log.info(
            "step %d  loss %.4f  lr %.2e  %.0f tok/s  peak RSS %s MB",
            p.step,
            record["train_loss"],
            record["lr"],
            record["tokens_per_s"],
            record.get("peak_rss_mb", "?"),
        )
        return (
            f"loss {record['train_loss']:.3f} lr {record['lr']:.1e} "
            f"{record['tokens_per_s']:.0f} tok/s"
        )

    def _validate_and_save(self) -> bool:
        p = self.progress
        started = time.perf_counter()
        metrics = self.validate()
        stop = self.after_validation(metrics)
        p.valid_seconds += time.perf_counter() - started
        record = {
            "step": p.step,
            "epoch": p.epoch,
            **metrics,
            "best_bleu": p.best_bleu,
            "lr": self.learning_rate(),
            "train_minutes": round(p.train_seconds / 60, 2),
        }
        self._write_metrics(record)
        log.info(
            "validation at step %d: loss %.4f  ppl %.2f  BLEU %.2f  chrF %.2f  (best %.2f at %d)",
            p.step,
            metrics["valid_loss"],
            metrics["valid_ppl"],
            metrics["valid_bleu"],
            metrics["valid_chrf"],
            p.best_bleu,
            p.best_step,
        )
        self.save_checkpoint(metrics)
        return stop
