import pytest

from nmt.errors import CheckpointError, RecipeError
from nmt.recipe import TokenizerConfig
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

from .conftest import synthetic_pairs


def test_round_trip_and_special_ids(toy_tokenizer: Tokenizer) -> None:
    src, tgt = synthetic_pairs(20, seed=5)
    ids = toy_tokenizer.encode_target(tgt)
    assert toy_tokenizer.decode_target(ids) == tgt
    assert all(i not in (PAD_ID, BOS_ID, EOS_ID) for seq in ids for i in seq)
    encoded_src = toy_tokenizer.encode_source(src)
    assert all(seq[-1] == EOS_ID for seq in encoded_src)
    assert toy_tokenizer.joint and toy_tokenizer.source_vocab_size == 60


def test_decoding_joins_the_spaces_of_a_lone_boundary_piece(toy_tokenizer: Tokenizer) -> None:
    # "▁" then "▁IM" is a sequence a model can emit; SentencePiece alone would print two spaces
    boundary = toy_tokenizer._target.piece_to_id("▁")
    assert boundary != UNK_ID
    (word,) = toy_tokenizer.encode_target(["IM PARK"])
    assert toy_tokenizer.decode_target([[boundary, *word, boundary, boundary, *word]]) == [
        "IM PARK IM PARK"
    ]


def test_unknown_characters_map_to_unk(toy_tokenizer: Tokenizer) -> None:
    (ids,) = toy_tokenizer.encode_target(["漢字"])
    assert UNK_ID in ids


def test_separate_models_and_state_dict(tmp_path) -> None:
    src, tgt = synthetic_pairs(300)
    tok = Tokenizer.train(src, tgt, TokenizerConfig(type="bpe", vocab_size=80, joint=False), 0)
    assert not tok.joint
    again = Tokenizer.from_state_dict(tok.state_dict())
    assert again.encode_source(src[:5]) == tok.encode_source(src[:5])
    assert again.encode_target(tgt[:5]) == tok.encode_target(tgt[:5])
    assert {p.name for p in tok.save(tmp_path)} == {"spm.source.model", "spm.target.model"}


def test_training_is_deterministic() -> None:
    src, tgt = synthetic_pairs(300)
    config = TokenizerConfig(vocab_size=50)
    assert (
        Tokenizer.train(src, tgt, config, 3).source_model
        == Tokenizer.train(src, tgt, config, 3).source_model
    )


def test_vocab_too_large_names_the_key() -> None:
    src, tgt = synthetic_pairs(30)
    with pytest.raises(RecipeError, match=r"'tokenizer\.vocab_size': 50000 is too large"):
        Tokenizer.train(src, tgt, TokenizerConfig(vocab_size=50000), 0)


def test_damaged_model_bytes() -> None:
    with pytest.raises(CheckpointError, match="damaged"):
        Tokenizer(b"not a sentencepiece model")


def test_vocab_too_small_names_the_key() -> None:
    src, tgt = synthetic_pairs(100)
    with pytest.raises(RecipeError, match=r"'tokenizer\.vocab_size': 10 is too small"):
        Tokenizer.train(src, tgt, TokenizerConfig(vocab_size=10), 0)


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sampled_segmentations_spell_the_same_text_and_follow_the_seed(kind: str) -> None:
    src, tgt = synthetic_pairs(300)
    tok = Tokenizer.train(src, tgt, TokenizerConfig(type=kind, vocab_size=60), 0)
    fixed = tok.encode_target(tgt)
    first = tok.sample_pairs(src, tgt, alpha=0.3, nbest=-1, seed=11)
    assert first == tok.sample_pairs(src, tgt, alpha=0.3, nbest=-1, seed=11)
    other = tok.sample_pairs(src, tgt, alpha=0.3, nbest=-1, seed=12)
    assert other[1] != first[1]
    sampled_src, sampled_tgt = first
    assert sampled_tgt != fixed  # some pairs are cut differently ...
    assert tok.decode_target(sampled_tgt) == tok.decode_target(fixed)  # ... into the same text
    assert all(seq[-1] == EOS_ID for seq in sampled_src)
    assert [s[:-1] for s in sampled_src] != [s[:-1] for s in tok.encode_source(src)]
