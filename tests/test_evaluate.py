import pytest
import sacrebleu

from nmt.errors import InputError
from nmt.evaluate import score_corpus

HYPS = ["The cat sat on the mat.", "A dog runs in the park", "two men are Talking ."]
REFS = ["The cat sat on the mat.", "A dog is running in the park.", "Two men are talking."]


def test_scores_match_sacrebleu_called_directly() -> None:
    scores = score_corpus(HYPS, REFS)
    assert scores["bleu"].score == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=0.01
    )
    assert scores["bleu_lc"].score == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS], lowercase=True).score, abs=0.01
    )
    assert scores["chrf"].score == pytest.approx(
        sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=0.01
    )
    assert scores["bleu_lc"].score > scores["bleu"].score
    assert "case:mixed" in scores["bleu"].signature and "tok:13a" in scores["bleu"].signature
    assert "case:lc" in scores["bleu_lc"].signature
    assert scores["chrf"].signature.startswith("nrefs:1")


def test_perfect_and_count_mismatch() -> None:
    assert score_corpus(REFS, REFS)["bleu"].score == 100.0
    with pytest.raises(InputError, match="3 hypotheses but 2 references"):
        score_corpus(HYPS, REFS[:2])
