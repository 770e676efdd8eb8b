"""nmt against OpenNMT-py on the same machine, in one run: the performance issue's reference model.

    python benchmarks/opennmt_py.py --onmt-bin /tmp/onmt/bin --data ../shared/data/multi30k

Both toolkits train the reference model (emb 256, biLSTM 2x256, LSTM decoder 512 with input
feeding, Luong general attention, dropout 0.3, Adam 1e-3, 64 sentences a batch, joint
SentencePiece unigram vocabulary of 8,000: the same .model file for both) for --steps steps on
Multi30k de-en, one after the other, then decode test2016 with beam 5 (GNMT alpha 0.6, 64
sentences a batch). Printed: target tokens/s while training (each toolkit's own log, median of
its log windows after the first), sentences/s of beam search (model load excluded; OpenNMT-py's
"Total translation time", which also covers its on-the-fly tokenization), BLEU and mean output
length, and the ratio nmt / OpenNMT-py.

OpenNMT-py goes in a venv of its own, beside torch 2.13 (it declares torch<2.3; installed
without its dependencies, then the ones it imports):
    python3 -m venv /tmp/onmt && /tmp/onmt/bin/pip install "torch==2.13.0" configargparse pyyaml \\
        sentencepiece sacrebleu six rapidfuzz pyahocorasick "pyonmttok<2,>=1.37" spacy \\
        tensorboard waitress flask fasttext-wheel \\
      && /tmp/onmt/bin/pip install --no-deps "opennmt-py==3.5.1"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = 1234
ONMT_TOK_S = re.compile(r"Step (\d+)/\s*\d+;.* (\d+)/\s*(\d+) tok/s;")
ONMT_TIME = re.compile(r"Total translation time \(s\): ([\d.]+)")

NMT_RECIPE = """\
name: reference_model
seed: {seed}
data: {{dataset: bentrevett/multi30k, source_lang: de, target_lang: en}}
tokenizer: {{type: unigram, vocab_size: 8000, joint: true}}
model:
  embedding_size: 256
  encoder_hidden_size: 256
  decoder_hidden_size: 512
  attention: luong
  luong_score: general
  input_feeding: true
  dropout: 0.3
  embedding_dropout: 0.3
  tie_embeddings: false
  tie_output: false
train:
  batch_tokens: 100000
  max_sentences: 64
  learning_rate: 0.001
  max_steps: {steps}
  validate_every: 1000000
  log_every: 50
"""

ONMT_CONFIG = """\
save_data: {work}/onmt
src_vocab: {work}/onmt/vocab.txt
share_vocab: true
src_vocab_size: 8000
tgt_vocab_size: 8000
overwrite: true
data:
  corpus_1:
    path_src: {work}/train.de
    path_tgt: {work}/train.en
    transforms: [sentencepiece]
  valid:
    path_src: {work}/valid.de
    path_tgt: {work}/valid.en
    transforms: [sentencepiece]
src_subword_model: {work}/spm.model
tgt_subword_model: {work}/spm.model
save_model: {work}/onmt/model
save_checkpoint_steps: {steps}
seed: {seed}
train_steps: {steps}
valid_steps: 1000000
report_every: 50
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
layers: 1
enc_hid_size: 512
dec_hid_size: 512
word_vec_size: 256
global_attention: general
input_feed: 1
dropout: [0.3]
batch_type: sents
batch_size: 64
valid_batch_size: 64
optim: adam
learning_rate: 0.001
max_grad_norm: 1.0
label_smoothing: 0.1
param_init: 0.1
"""


def prepare(work: Path, data: str) -> list[str]:
    """Plain-text splits and the joint SentencePiece model both toolkits use."""
    from nmt.data import load_splits
    from nmt.recipe import DataConfig, TokenizerConfig
    from nmt.tokenizer import Tokenizer

    splits = load_splits(DataConfig(), ["train", "validation", "test"], data)
    for name, split in (("train", "train"), ("valid", "validation"), ("test", "test")):
        (work / f"{name}.de").write_text("\n".join(splits[split].source) + "\n", encoding="utf-8")
        (work / f"{name}.en").write_text("\n".join(splits[split].target) + "\n", encoding="utf-8")
    train = splits["train"]
    Tokenizer.train(train.source, train.target, TokenizerConfig(vocab_size=8000), SEED).save(work)
    return splits["test"].target


def run(command: list[str], log: Path) -> str:
    """Run a command with its output in `log`; stop with its tail if it fails."""
    # OpenNMT-py 3.5.1 predates torch.load's weights_only default (torch 2.6) and stores an
    # argparse.Namespace in its checkpoints.
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    with log.open("w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    text = log.read_text(errors="replace")
    if code:
        sys.exit(f"error: {' '.join(command[:2])} exited with {code}:\n{text[-2000:]}")
    return text


def train_onmt(args: argparse.Namespace, work: Path) -> tuple[float, Path]:
    config = work / "onmt.yaml"
    config.write_text(ONMT_CONFIG.format(work=work, steps=args.steps, seed=SEED))
    (work / "onmt").mkdir(exist_ok=True)
    bin_dir = Path(args.onmt_bin)
    run(
        [str(bin_dir / "onmt_build_vocab"), "-config", str(config), "-n_sample", "-1"],
        work / "onmt_vocab.log",
    )
    log = run([str(bin_dir / "onmt_train"), "-config", str(config)], work / "onmt_train.log")
    rates = [int(m.group(3)) for m in ONMT_TOK_S.finditer(log)][1:]  # the first window warms up
    return statistics.median(rates), work / "onmt" / f"model_step_{args.steps}.pt"


def train_nmt(args: argparse.Namespace, work: Path) -> tuple[float, Path]:
    recipe = work / "nmt.yaml"
    recipe.write_text(NMT_RECIPE.format(seed=SEED, steps=args.steps))
    run_dir = work / "nmt_run"
    run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "train",
            str(recipe),
            "--data",
            args.data,
            "--out",
            str(run_dir),
            "--overwrite",
            "--no-progress",
            "--threads",
            str(args.threads),
        ],
        work / "nmt_train.log",
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    return statistics.median(rates), run_dir / f"step-{args.steps:08d}.pt"


def decode_onmt(args: argparse.Namespace, work: Path, model: Path) -> tuple[float, list[str]]:
    out = work / "onmt_test.en"
    log = run(
        [
            str(Path(args.onmt_bin) / "onmt_translate"),
            "-model",
            str(model),
            "-src",
            str(work / "test.de"),
            "-output",
            str(out),
            "-beam_size",
            "5",
            "-batch_size",
            "64",
            "-length_penalty",
            "wu",
            "-alpha",
            "0.6",
            "-report_time",
            "-transforms",
            "sentencepiece",
            "-src_subword_model",
            str(work / "spm.model"),
            "-tgt_subword_model",
            str(work / "spm.model"),
        ],
        work / "onmt_translate.log",
    )
    seconds = float(ONMT_TIME.findall(log)[-1])
    hyps = out.read_text(encoding="utf-8").splitlines()
    return len(hyps) / seconds, hyps


def decode_nmt(args: argparse.Namespace, work: Path, model: Path) -> tuple[float, list[str]]:
    import torch

    from nmt import checkpoint
    from nmt.runtime import resolve_device
    from nmt.translate import SearchSettings, Translator

    torch.set_num_threads(args.threads)
    _, tokenizer, net = checkpoint.load_model(model)
    translator = Translator(
        net,
        tokenizer,
        resolve_device("cpu"),
        SearchSettings(beam_size=5, length_penalty=0.6, batch_size=64),
    )
    sources = (work / "test.de").read_text(encoding="utf-8").splitlines()
    started = time.perf_counter()
    hyps = [h[0].text for h in translator.translate(sources)]
    return len(sources) / (time.perf_counter() - started), hyps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onmt-bin", required=True, help="bin/ of a venv with OpenNMT-py")
    parser.add_argument("--data", required=True, help="local copy of bentrevett/multi30k")
    parser.add_argument("--work", default="/tmp/nmt_vs_onmt")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--nmt-first", action="store_true", help="run nmt first (machine drift shows as order)"
    )
    args = parser.parse_args()
    from nmt.evaluate import score_corpus

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    references = prepare(work, args.data)
    rows = {}
    toolkits = [("OpenNMT-py", train_onmt, decode_onmt), ("nmt", train_nmt, decode_nmt)]
    for name, train, decode in toolkits[::-1] if args.nmt_first else toolkits:
        tok_s, model = train(args, work)
        sent_s, hyps = decode(args, work, model)
        length = statistics.mean(len(h.split()) for h in hyps)
        rows[name] = (tok_s, sent_s, score_corpus(hyps, references)["bleu"].score, length)
        print(f"{name}: trained and decoded", file=sys.stderr)
    print(f"reference model, {args.steps} steps, {args.threads} threads, beam 5 on test2016")
    print(f"{'toolkit':12} {'train tok/s':>12} {'beam-5 sent/s':>14} {'BLEU':>6} {'words/hyp':>10}")
    for name, (tok_s, sent_s, bleu, length) in rows.items():
        print(f"{name:12} {tok_s:12.0f} {sent_s:14.1f} {bleu:6.2f} {length:10.2f}")
    a, b = rows["nmt"], rows["OpenNMT-py"]
    print(f"{'ratio':12} {a[0] / b[0]:11.2f}x {a[1] / b[1]:13.2f}x")


if __name__ == "__main__":
    main()
