"""A small ring buffer of recent frames for online adaptation: the frame (uint8), its consensus
pseudo-label (uint8, full resolution) and the teacher's logits at feature resolution (fp16), so an
update can replay a past frame without another teacher forward."""

from __future__ import annotations

import torch


class ReplayBuffer:
    """Fixed capacity, oldest out first; tensors only, so it saves to safetensors as it is."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.images: list[torch.Tensor] = []  # (3,H,W) uint8
        self.labels: list[torch.Tensor] = []  # (H,W) uint8
        self.logits: list[torch.Tensor] = []  # (C,h,w) fp16
        self.frame_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def add(self, image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor, frame_id: int) -> None:
        if self.capacity <= 0:
            return
        self.images.append(image.to(torch.uint8).cpu())
        self.labels.append(label.to(torch.uint8).cpu())
        self.logits.append(logits.to(torch.float16).cpu())
        self.frame_ids.append(frame_id)
        if len(self.images) > self.capacity:
            for lst in (self.images, self.labels, self.logits, self.frame_ids):
                lst.pop(0)

    def clear(self) -> None:
        for lst in (self.images, self.labels, self.logits, self.frame_ids):
            lst.clear()

    def sample(self, k: int, generator: torch.Generator, exclude_last: bool = True) -> list[int]:
        """k distinct indices drawn uniformly (the newest entry excluded: it is the current frame)."""
        n = len(self) - (1 if exclude_last else 0)
        if n <= 0 or k <= 0:
            return []
        return torch.randperm(n, generator=generator)[:k].tolist()

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i in range(len(self)):
            out[f"replay.{i}.image"] = self.images[i].contiguous()
            out[f"replay.{i}.label"] = self.labels[i].contiguous()
            out[f"replay.{i}.logits"] = self.logits[i].contiguous()
        return out

    def load(self, tensors: dict[str, torch.Tensor], frame_ids: list[int]) -> None:
        self.clear()
        for i, fid in enumerate(frame_ids):
            self.add(tensors[f"replay.{i}.image"], tensors[f"replay.{i}.label"], tensors[f"replay.{i}.logits"], fid)
