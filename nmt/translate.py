"""Text in, text out: tokenize, sort by length, search in batches, detokenize, restore order.

Empty (or whitespace-only) lines never reach the model and translate to empty lines. Sources longer
than `max_source_tokens` are truncated with a warning that names the line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import torch

from nmt.batching import make_batch
from nmt.ensemble import Ensemble
from nmt.model import OutputSubset, Seq2Seq
from nmt.search import Hypothesis, beam_search, greedy
from nmt.shortlist import Shortlist
from nmt.textio import one_line
from nmt.tokenizer import EOS_ID, Tokenizer

if TYPE_CHECKING:
    from nmt.recipe import DecodeConfig

log = logging.getLogger("nmt")


@dataclass(frozen=True)
class SearchSettings:
    beam_size: int = 5
    n_best: int = 1
    length_penalty: float = 0.6
    max_length_ratio: float = 2.0
    max_length: int = 256
    batch_size: int = 128
    max_hypotheses: int = 320
    max_source_tokens: int = 250

    def __post_init__(self) -> None:
        from nmt.errors import InputError  # option errors read like input errors on the CLI

        if self.beam_size < 1:
            raise InputError(f"--beam-size must be at least 1, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise InputError(
                f"--n-best must lie between 1 and --beam-size ({self.beam_size}), got {self.n_best}"
            )
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_hypotheses < 1:
            raise InputError(f"--max-hypotheses must be at least 1, got {self.max_hypotheses}")
        if self.max_length_ratio <= 0:
            raise InputError(f"--max-length-ratio must be positive, got {self.max_length_ratio}")
        if self.length_penalty < 0:
            raise InputError(f"--length-penalty must not be negative, got {self.length_penalty}")
        if self.max_source_tokens < 1 or self.max_length < 1:
            raise InputError("--max-source-tokens and --max-length must be at least 1")

    @classmethod
    def from_decode(cls, decode: DecodeConfig, **changes: object) -> SearchSettings:
        """A recipe's decode section, with the given non-None values replacing it."""
        base: dict[str, object] = {
            "beam_size": decode.beam_size,
            "length_penalty": decode.length_penalty,
            "max_length_ratio": decode.max_length_ratio,
            "max_length": decode.max_length,
            "batch_size": decode.batch_size,
            "max_hypotheses": decode.max_hypotheses,
        }
        base.update({k: v for k, v in changes.items() if v is not None})
        return cls(**base)  # type: ignore[arg-type]

    @property
    def sentences_per_batch(self) -> int:
        """A batch holds at most batch_size sentences and max_hypotheses beams in all: search's
        memory grows with the hypotheses it scores at once (beam x sentences rows of the output
        layer), so a wider beam takes fewer sentences at a time."""
        return min(self.batch_size, max(1, self.max_hypotheses // self.beam_size))


@dataclass(frozen=True)
class Translation:
    text: str
    score: float  # normalized log-probability; 0.0 for an empty source


class Translator:
    """workers > 1 searches that many batches at once, each in its own thread. On the CPU, with
    torch's intra-op threads set to threads / workers, int8 search ran faster than one batch on
    all threads: a step's products and elementwise ops are too small to keep two cores busy
    (README, Benchmarks). Every batch is the one a single worker would search, so the output is
    the same.
    """

    def __init__(
        self,
        model: Seq2Seq | Ensemble,
        tokenizer: Tokenizer,
        device: torch.device,
        settings: SearchSettings,
        autocast_dtype: torch.dtype | None = None,
        shortlist: Shortlist | None = None,
        workers: int = 1,
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.settings = settings
        self.autocast_dtype = autocast_dtype
        self.shortlist = shortlist
        self.workers = workers

    def _search(self, ids: list[list[int]]) -> list[list[Hypothesis]]:
        s = self.settings
        batch = make_batch(ids).to(self.device)
        subset = None
        if self.shortlist is not None:
            candidates = self.shortlist.candidates(batch.src).to(self.device)
            subset = OutputSubset.of(self.model, candidates)
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            if s.beam_size == 1:
                return [
                    [h]
                    for h in greedy(
                        self.model,
                        batch,
                        max_length_ratio=s.max_length_ratio,
                        max_length=s.max_length,
                        length_penalty_alpha=s.length_penalty,
                        subset=subset,
                    )
                ]
            return beam_search(
                self.model,
                batch,
                beam_size=s.beam_size,
                n_best=s.n_best,
                length_penalty_alpha=s.length_penalty,
                max_length_ratio=s.max_length_ratio,
                max_length=s.max_length,
                subset=subset,
            )

    def translate(self, lines: list[str], first_line_number: int = 1) -> list[list[Translation]]:
        """n-best translations of each line, in input order."""
        s = self.settings
        results: list[list[Translation]] = [[Translation("", 0.0)] for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        encoded = self.tokenizer.encode_source([lines[i] for i in todo])
        for i, ids in zip(todo, encoded, strict=True):
            if len(ids) > s.max_source_tokens:
                log.warning(
                    "line %d: %d source tokens, truncated to --max-source-tokens %d",
                    first_line_number + i,
                    len(ids) - 1,
                    s.max_source_tokens,
                )
        encoded = [
            ids if len(ids) <= s.max_source_tokens else [*ids[: s.max_source_tokens - 1], EOS_ID]
            for ids in encoded
        ]
        order = sorted(range(len(todo)), key=lambda j: len(encoded[j]), reverse=True)
        size = s.sentences_per_batch
        chunks = [order[start : start + size] for start in range(0, len(order), size)]

        def search(chunk: list[int]) -> list[list[Hypothesis]]:
            return self._search([encoded[j] for j in chunk])

        if self.workers > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                searched = list(pool.map(search, chunks))
        else:
            searched = [search(chunk) for chunk in chunks]
        # One call decodes every hypothesis: sentencepiece's batch call costs about 0.1 ms of
        # set-up each, 10% of greedy search's time when it was made once per sentence.
        found = [
            (todo[j], hyps)
            for chunk, f in zip(chunks, searched, strict=True)
            for j, hyps in zip(chunk, f, strict=True)
        ]
        texts = iter(self.tokenizer.decode_target([h.tokens for _, hyps in found for h in hyps]))
        for i, hyps in found:
            results[i] = [Translation(one_line(next(texts)), h.normalized_score) for h in hyps]
        return results

    def translate_stream(
        self, lines: Iterable[str], write: Callable[[str], object], chunk_lines: int = 2000
    ) -> int:
        """Translate a stream chunk by chunk (memory stays flat); returns the number of lines."""
        n = 0
        iterator: Iterator[str] = iter(lines)
        while chunk := list(islice(iterator, chunk_lines)):
            for k, hyps in enumerate(self.translate(chunk, first_line_number=n + 1)):
                if self.settings.n_best == 1:
                    write(hyps[0].text + "\n")
                else:
                    for h in hyps:
                        write(f"{n + k} ||| {h.text} ||| {h.score:.4f}\n")
            n += len(chunk)
        return n
