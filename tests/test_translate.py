import io
import logging

import pytest

from nmt.errors import InputError
from nmt.runtime import resolve_device
from nmt.textio import LINE_BREAKS, decode_lines, one_line
from nmt.translate import SearchSettings, Translator

from .conftest import synthetic_pairs, tiny_model


@pytest.fixture
def translator(toy_tokenizer) -> Translator:
    return Translator(
        tiny_model(toy_tokenizer),
        toy_tokenizer,
        resolve_device("cpu"),
        SearchSettings(beam_size=2, batch_size=3, max_length=8),
    )


def _run(translator: Translator, lines: list[str]) -> list[str]:
    out = io.StringIO()
    n = translator.translate_stream(lines, out.write, chunk_lines=4)
    assert n == len(lines)
    return out.getvalue().split("\n")[:-1]


def test_one_output_line_per_input_line_in_order(translator) -> None:
    src, _ = synthetic_pairs(11, seed=2)
    lines = [src[0], "", src[1], "   ", *src[2:], ""]
    out = _run(translator, lines)
    assert len(out) == len(lines)
    assert out[1] == "" and out[3] == "" and out[-1] == ""
    # Order: the same sentence translates the same wherever it stands.
    alone = [_run(translator, [s])[0] for s in src[:3]]
    assert [out[0], out[2], out[4]] == alone


def test_overlong_source_is_truncated_with_warning(translator, caplog) -> None:
    translator = Translator(
        translator.model,
        translator.tokenizer,
        translator.device,
        SearchSettings(beam_size=1, max_source_tokens=5, max_length=4),
    )
    with caplog.at_level(logging.WARNING, logger="nmt"):
        out = _run(translator, ["der hund", " ".join(["katze"] * 50)])
    assert len(out) == 2
    assert "line 2" in caplog.text and "truncated" in caplog.text


def test_n_best_lines(translator) -> None:
    translator = Translator(
        translator.model,
        translator.tokenizer,
        translator.device,
        SearchSettings(beam_size=3, n_best=3, max_length=6),
    )
    out = _run(translator, ["der hund", "die katze"])
    assert len(out) == 6
    assert [line.split(" ||| ")[0] for line in out] == ["0", "0", "0", "1", "1", "1"]
    scores = [float(line.split(" ||| ")[2]) for line in out[:3]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("beam", "max_hypotheses", "expected_size"), [(3, 7, 2), (3, 2, 1), (1, 7, 5), (2, 100, 5)]
)
def test_batches_hold_at_most_max_hypotheses(
    translator, beam, max_hypotheses, expected_size
) -> None:
    """A batch holds batch_size sentences unless beam x sentences would exceed max_hypotheses;
    at least one sentence always fits. The translations are those of unbounded batches."""
    src, _ = synthetic_pairs(13, seed=3)
    outputs = {}
    for bound in (max_hypotheses, 10_000):
        bounded = Translator(
            translator.model,
            translator.tokenizer,
            translator.device,
            SearchSettings(beam_size=beam, batch_size=5, max_hypotheses=bound, max_length=8),
        )
        sizes: list[int] = []
        search = bounded._search

        def spy(ids, search=search, sizes=sizes):
            sizes.append(len(ids))
            return search(ids)

        bounded._search = spy  # type: ignore[method-assign]
        outputs[bound] = [hyps[0].text for hyps in bounded.translate(src)]
        if bound == max_hypotheses:
            assert max(sizes) == expected_size and sum(sizes) == len(src)
        else:
            assert max(sizes) == 5
    assert outputs[max_hypotheses] == outputs[10_000]


def test_decode_lines_handles_line_ends_and_reports_bad_bytes() -> None:
    data = b"a\r\nb\x0cc\n\nlast"
    assert list(decode_lines(io.BytesIO(data))) == ["a", "b\x0cc", "", "last"]
    bad = io.BytesIO(b"ok\nfine\nbad \xff here\n")
    with pytest.raises(InputError, match=r"^input\.txt: line 3: not valid UTF-8"):
        list(decode_lines(bad, name="input.txt"))
    assert list(decode_lines(io.BytesIO(b"bad \xff\n"), errors="replace")) == ["bad \ufffd"]


def test_one_line_removes_every_line_break() -> None:
    text = "a" + "b".join(LINE_BREAKS) + "c"
    assert len(("x" + one_line(text) + "y").splitlines()) == 1


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"beam_size": 0}, "--beam-size"),
        ({"n_best": 3, "beam_size": 2}, "--n-best"),
        ({"batch_size": 0}, "--batch-size"),
        ({"max_hypotheses": 0}, "--max-hypotheses"),
        ({"max_length_ratio": 0}, "--max-length-ratio"),
        ({"length_penalty": -1}, "--length-penalty"),
        ({"max_source_tokens": 0}, "--max-source-tokens"),
    ],
)
def test_bad_settings(settings, fragment) -> None:
    with pytest.raises(InputError, match=fragment):
        SearchSettings(**settings)


def test_int8_translator_quantizes_and_keeps_lines(tmp_path, toy_tokenizer) -> None:
    from nmt import api
    from nmt import checkpoint as ckpt
    from nmt.recipe import from_dict

    rec = from_dict(
        {
            "model": {
                "embedding_size": 16,
                "encoder_hidden_size": 12,
                "decoder_hidden_size": 20,
                "dropout": 0.0,
                "embedding_dropout": 0.0,
            }
        }
    )
    ckpt.atomic_save(
        ckpt.build_payload(rec, toy_tokenizer, tiny_model(toy_tokenizer), 0), tmp_path / "m.pt"
    )
    translator, _ = api.load_translator(
        tmp_path / "m.pt", device="cpu", precision="int8", beam_size=2, max_length=6
    )
    kinds = {type(m).__module__ for m in translator.model.modules()}
    assert any("quantized" in k for k in kinds)
    src, _ = synthetic_pairs(9, seed=1)
    assert len(api.translate_lines(translator, [*src, ""])) == 10


def test_workers_search_the_same_batches(tmp_path, toy_tokenizer) -> None:
    """Two workers search batches side by side; the output is that of one worker, line for line
    (fp32, and int8 whose dynamic scales depend on a batch's contents), and 0 is refused."""
    import torch

    from nmt import api
    from nmt import checkpoint as ckpt
    from nmt.errors import NmtError
    from nmt.recipe import from_dict

    sizes = {"embedding_size": 16, "encoder_hidden_size": 12, "decoder_hidden_size": 20}
    rec = from_dict({"model": sizes})
    model = tiny_model(toy_tokenizer, seed=2)
    ckpt.atomic_save(ckpt.build_payload(rec, toy_tokenizer, model, 0), tmp_path / "m.pt")
    src, _ = synthetic_pairs(23, seed=4)
    lines = [*src[:11], "", *src[11:]]
    threads = torch.get_num_threads()
    try:
        for precision in ("fp32", "int8"):
            out = {}
            for workers in (1, 2):
                translator, _ = api.load_translator(
                    tmp_path / "m.pt",
                    device="cpu",
                    precision=precision,
                    threads=2,
                    workers=workers,
                    beam_size=2,
                    batch_size=3,
                    max_length=8,
                )
                assert translator.workers == workers
                out[workers] = api.translate_lines(translator, lines)
            assert out[1] == out[2] and len(out[2]) == len(lines) and out[2][11] == ""
        with pytest.raises(NmtError, match="--workers"):
            api.load_translator(tmp_path / "m.pt", device="cpu", workers=0)
    finally:
        torch.set_num_threads(threads)
