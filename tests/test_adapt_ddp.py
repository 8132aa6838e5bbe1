"""DDP: two gloo processes on the CPU run a self-training stage (the step with the most state: student,
EMA teacher, online centroids) and end with identical parameters on both ranks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from diga_sdk.config import AdaptConfig, DistilConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_json: str, init: str, pseudo: str, cents: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DIGA_NO_PROGRESS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from diga_sdk.adapt.distill import SelfTrainInputs, train_distil_stage

    cfg = AdaptConfig.model_validate_json(cfg_json)

    def dump(student, w):
        state = {k: v.detach().contiguous() for k, v in student.named_parameters()}
        save_file(state, str(Path(out) / f"rank{w.rank}.safetensors"))

    inputs = SelfTrainInputs(Path(pseudo), Path(cents), cfg.selection)
    try:
        train_distil_stage("selftrain", cfg, cfg.selftrain, init, Path(out) / "stage", selftrain=inputs, on_finish=dump)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_parameters(tiny_specs, tiny_checkpoint, tmp_path):
    from diga_sdk.adapt.pipeline import stage_centroids, stage_pseudo

    cfg = AdaptConfig(source=tiny_specs["source_train"], target=tiny_specs["target_train"],
                      target_val=tiny_specs["target_val"], source_val=None,
                      selftrain=DistilConfig(steps=3, batch_size=4, lambda_distil=0.25, aug_beta=0.3),
                      crop=(64, 128), scale=(0.75, 1.0), checkpoint_every=2)
    stage_pseudo(cfg, tiny_checkpoint, tmp_path / "pseudo")
    cents = stage_centroids(cfg, tiny_checkpoint, tmp_path / "cent")["centroids"]
    mp.spawn(_worker, args=(2, _free_port(), cfg.model_dump_json(), str(tiny_checkpoint), str(tmp_path / "pseudo"),
                            cents, str(tmp_path)), nprocs=2, join=True)
    p0, p1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert p0.keys() == p1.keys() and len(p0) > 10
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    init = load_file(str(tiny_checkpoint))
    assert any(not torch.equal(p0[k], init[k]) for k in p0)  # training happened
    # rank 0 wrote the stage's checkpoint, equal to its parameters
    ckpt = load_file(str(tmp_path / "stage" / "model.safetensors"))
    assert all(torch.equal(ckpt[k], p0[k]) for k in p0)
