"""Runs a toy training in a child process for the fault tests: prints `STEP n` after every step
and, in mode `pause-in-write`, stops halfway through writing a step checkpoint (prints `WRITING`)
so that the test can kill it there."""

from __future__ import annotations

import io
import sys
import time

import torch

from nmt import api
from nmt.recipe import load


def main() -> None:
    recipe_path, data_dir, out_dir, mode = sys.argv[1:5]
    torch.set_num_threads(1)
    real_save = torch.save

    def save_halfway(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        print("WRITING", flush=True)
        time.sleep(30)  # killed here
        handle.write(data[len(data) // 2 :])

    def hook(trainer) -> None:
        print(f"STEP {trainer.progress.step}", flush=True)
        time.sleep(0.02)
        if mode == "pause-in-write" and trainer.progress.step % 5 == 4:
            torch.save = save_halfway  # the coming step writes a checkpoint

    api.train(
        load(recipe_path),
        out_dir,
        data_dir=data_dir,
        resume=mode != "plain",
        progress_bar=False,
        trainer_hook=hook,
    )
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
