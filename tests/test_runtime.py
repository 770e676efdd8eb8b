"""Process-wide settings: the allocator tuning that training applies."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# Training steps whose logits (32 x 40 x 8000 floats, 41 MB) are over glibc's 32 MB mmap limit;
# counts the page faults of the last 6 steps, once the heap has settled.
PROBE = """
import json, resource, torch
from nmt.batching import make_batch
from nmt.loss import sequence_loss
from nmt.model import build_model
from nmt.recipe import ModelConfig
from nmt.runtime import tune_allocator
applied = tune_allocator()
torch.manual_seed(0)
config = ModelConfig(embedding_size=16, encoder_hidden_size=8, decoder_hidden_size=16)
model = build_model(config, 8000, 8000)
optimizer = torch.optim.Adam(model.parameters())
ids = torch.randint(4, 8000, (32, 40)).tolist()
batch = make_batch(ids, ids)
for step in range(12):
    if step == 6:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sequence_loss(model(batch), batch.tgt_out, 0.1).backward()
    optimizer.step()
    optimizer.zero_grad()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(system_malloc: str) -> dict:
    env = {**os.environ, "NMT_SYSTEM_MALLOC": system_malloc}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_tuned_allocator_reuses_freed_large_blocks():
    tuned, system = _probe("0"), _probe("1")
    assert tuned["applied"] is True and system["applied"] is False
    # glibc's default unmaps each freed logits block and faults its 10,000 pages in again on the
    # next step; the tuned heap keeps and reuses them.
    assert system["faults"] > 6 * 10_000
    assert tuned["faults"] < system["faults"] / 4
