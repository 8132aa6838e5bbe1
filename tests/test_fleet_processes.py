"""The fleet as separate processes on loopback: one Flower server and two vehicle processes
(`diga fleet server|vehicle`), two rounds on tiny 64x128 streams. The fleet model the server writes
is the FedAvg of what the vehicles sent (weighted by frames adapted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from online_fixtures import train_small_model

pytestmark = pytest.mark.slow


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_server_two_vehicle_processes(tmp_path: Path, tiny_specs: dict[str, str]) -> None:
    from diga_sdk.fleet.params import aggregate, state_to_arrays
    from diga_sdk.models.checkpoint import load_checkpoint
    from diga_sdk.online.adapter import OnlineAdapter

    ckpt = train_small_model(tmp_path / "model", tiny_specs["source_train"], steps=10)
    cfg = tmp_path / "online.yaml"
    cfg.write_text("crop: [64, 128]\nsafety:\n  calib_frames: 2\n")
    out = tmp_path / "fleet"
    address = f"127.0.0.1:{_free_port()}"
    common = ["--model", str(ckpt), "--out", str(out), "--vehicles", "2", "--rounds", "2", "--frames-per-round", "4",
              "--size", "64x128", "--config", str(cfg), "--address", address]
    env = {**os.environ, "DIGA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "diga_sdk.cli"]
    procs = [subprocess.Popen(cli + ["fleet", "server", *common], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    procs += [subprocess.Popen(cli + ["fleet", "vehicle", *common, "--vehicle-id", str(v)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for v in (0, 1)]
    try:
        logs = [p.communicate(timeout=400)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n---\n".join(log[-2000:] for log in logs)

    record = json.loads((out / "fleet_rounds.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    for r in record["rounds"]:
        assert sorted(v["vehicle"] for v in r["vehicles"]) == [0, 1]
        assert all(v["frames"] == 4 for v in r["vehicles"])
    # each vehicle's state on disk holds what it sent in the last round; the fleet model is their FedAvg
    sent = []
    for v in (0, 1):
        ad = OnlineAdapter.resume(out / "vehicles" / f"vehicle-{v}" / "online_state.safetensors")
        assert ad.frame_index == 8
        updates = next(x["updates"] for x in record["rounds"][-1]["vehicles"] if x["vehicle"] == v)
        sent.append((state_to_arrays(ad.weights(), ad.centroids, torch.zeros(19)), updates))
    expected = aggregate(sent, None)
    fleet, _ = load_checkpoint(out / "fleet_model.safetensors")
    for (k, got), want in zip(fleet.state_dict().items(), expected[:-2], strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=k)
