"""Corpus scores with sacreBLEU: BLEU (cased and lowercased) and chrF, each with its signature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF

from nmt.errors import InputError


@dataclass(frozen=True)
class Score:
    metric: str  # "bleu", "bleu_lc" or "chrf"
    score: float
    signature: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def score_corpus(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Score]:
    """Detokenized hypotheses against one reference per line."""
    if len(hypotheses) != len(references):
        raise InputError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: counts must match"
        )
    hyps, refs = list(hypotheses), [list(references)]
    scores = {}
    for name, metric in (("bleu", BLEU()), ("bleu_lc", BLEU(lowercase=True)), ("chrf", CHRF())):
        result = metric.corpus_score(hyps, refs)
        scores[name] = Score(name, round(result.score, 2), str(metric.get_signature()))
    return scores
