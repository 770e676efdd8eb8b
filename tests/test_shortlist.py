"""Lexical shortlist: what it keeps and that a full one changes nothing (CLI: test_cli.py)."""

from __future__ import annotations

import pytest
import torch

from nmt.batching import make_batch
from nmt.errors import CheckpointError
from nmt.model import OutputSubset
from nmt.recipe import TokenizerConfig
from nmt.search import beam_search, greedy
from nmt.shortlist import Shortlist, build
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from nmt.translate import SearchSettings, Translator

from .conftest import synthetic_pairs, tiny_model


def _shortlist(tokenizer: Tokenizer, **kwargs) -> Shortlist:
    src, tgt = synthetic_pairs(400)
    return build(tokenizer.encode_source(src), tokenizer.encode_target(tgt), tokenizer, **kwargs)


def test_translations_found_by_cooccurrence(toy_tokenizer) -> None:
    """In the toy data a word's translation is itself upper-cased: Dice must rank it first."""
    shortlist = _shortlist(toy_tokenizer, frequent=0, per_source=3)
    for word in ("der", "hund", "katze", "im", "park", "rot"):  # one piece each
        (source_piece,) = [i for i in toy_tokenizer.encode_source([word])[0] if i != EOS_ID]
        best = int(shortlist.translations[source_piece, 0])
        assert toy_tokenizer.decode_target([[best]])[0] == word.upper()


def test_candidates(toy_tokenizer) -> None:
    shortlist = _shortlist(toy_tokenizer, frequent=5, per_source=2)
    batch = make_batch(toy_tokenizer.encode_source(["der hund", "ein kind im park"]))
    ids = shortlist.candidates(batch.src)
    assert ids.tolist() == sorted(set(ids.tolist()))
    assert EOS_ID in ids and UNK_ID in ids and PAD_ID not in ids and BOS_ID not in ids
    assert set(shortlist.frequent.tolist()) <= set(ids.tolist())
    assert ids.numel() < toy_tokenizer.target_vocab_size


def test_full_shortlist_changes_nothing(toy_tokenizer) -> None:
    """Keeping every token, search must give the same hypotheses and scores as without."""
    model = tiny_model(toy_tokenizer, seed=4)
    vocab = toy_tokenizer.target_vocab_size
    built = _shortlist(toy_tokenizer)
    shortlist = Shortlist(torch.arange(vocab), built.translations, vocab, built.fingerprint)
    src, _ = synthetic_pairs(9, seed=5)
    for beam in (1, 3):
        settings = SearchSettings(beam_size=beam, batch_size=4)
        plain = Translator(model, toy_tokenizer, torch.device("cpu"), settings)
        short = Translator(model, toy_tokenizer, torch.device("cpu"), settings, None, shortlist)
        for a, b in zip(plain.translate(src), short.translate(src), strict=True):
            assert a[0].text == b[0].text
            assert a[0].score == pytest.approx(b[0].score, abs=1e-4)


def test_int8_model_scores_a_shortlist_in_int8(toy_tokenizer, monkeypatch) -> None:
    """An int8 model scores the shortlist's rows with an int8 layer quantized as the full output
    layer was: with every token kept it translates exactly as the int8 model without one."""
    from nmt.quantize import quantize_int8

    model = quantize_int8(tiny_model(toy_tokenizer, seed=4))
    vocab = toy_tokenizer.target_vocab_size
    built = _shortlist(toy_tokenizer)
    shortlist = Shortlist(torch.arange(vocab), built.translations, vocab, built.fingerprint)
    layers: list[str] = []
    logits = OutputSubset.logits

    def spy(subset: OutputSubset, attentional: torch.Tensor) -> torch.Tensor:
        layers.append(type(subset.int8).__module__)
        return logits(subset, attentional)

    src, _ = synthetic_pairs(9, seed=5)
    for beam in (1, 3):
        settings = SearchSettings(beam_size=beam, batch_size=4)
        plain = Translator(model, toy_tokenizer, torch.device("cpu"), settings).translate(src)
        with monkeypatch.context() as patch:
            patch.setattr(OutputSubset, "logits", spy)
            short = Translator(model, toy_tokenizer, torch.device("cpu"), settings, None, shortlist)
            shortened = short.translate(src)
        assert layers and all("quantized" in module for module in layers)
        for a, b in zip(plain, shortened, strict=True):
            assert a[0].text == b[0].text
            assert a[0].score == pytest.approx(b[0].score, abs=1e-4)


def test_small_shortlist_only_emits_candidates(toy_tokenizer) -> None:
    model = tiny_model(toy_tokenizer, seed=4)
    shortlist = _shortlist(toy_tokenizer, frequent=2, per_source=1)
    src, _ = synthetic_pairs(6, seed=6)
    batch = make_batch(toy_tokenizer.encode_source(src))
    ids = shortlist.candidates(batch.src)
    subset = OutputSubset(ids, model.decoder.output.weight[ids].detach())
    allowed = set(ids.tolist())
    for hyp in greedy(model, batch, subset=subset):
        assert set(hyp.tokens) <= allowed
    for (hyp,) in beam_search(model, batch, beam_size=3, subset=subset):
        assert set(hyp.tokens) <= allowed and hyp.score > float("-inf")


def test_shortlist_of_another_vocabulary_refused(toy_tokenizer, tmp_path) -> None:
    src, tgt = synthetic_pairs(300, seed=9)
    other = Tokenizer.train(src, tgt, TokenizerConfig(vocab_size=55), seed=0)
    path = tmp_path / "shortlist.pt"
    torch.save(_shortlist(toy_tokenizer).to_dict(), path)
    assert Shortlist.load(path, toy_tokenizer).target_vocab_size == toy_tokenizer.target_vocab_size
    with pytest.raises(CheckpointError, match="another vocabulary"):
        Shortlist.load(path, other)
