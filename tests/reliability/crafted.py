"""Checkpoint payloads for the tests of issue 23's "no code runs from a data file": objects whose unpickling would
write a file into a marker folder, and the training state SAT and DeepSpeed really save (which must still load).

Every payload here does its harm only when unpickled by ``pickle``'s full unpickler (``weights_only=False``); the
tests assert the marker folder stays empty.
"""
from __future__ import annotations

import collections
import functools
import os
import pathlib
import random
from pathlib import Path

import numpy as np
import torch


class OsSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker / 'os-system'}",)


class BuiltinEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker / 'eval')!r}, 'w')",)


class BuiltinOpen:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker / "open"), "w")


class ExecThroughPartial:
    """exec hidden behind functools.partial: the pickle names functools.partial and builtins.exec."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return functools.partial(exec, f"open({str(self.marker / 'exec')!r}, 'w')"), ()


class NumpySave:
    """A numpy global that is not SAT's RNG state: numpy.save writes a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return np.save, (str(self.marker / "numpy.npy"), np.zeros(1))


class PathTouch:
    """A method (pathlib.Path.touch, which pickle reaches as getattr(pathlib.Path, "touch")) on a pickled Path."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker / "touch"),)


class Sneaky:
    """A plain custom class: unpickling builds it and calls its __setstate__, which writes the marker."""

    def __init__(self, marker: Path):
        self.marker = str(marker / "setstate")

    def __setstate__(self, state):
        open(state["marker"], "w").close()
        self.__dict__.update(state)


PAYLOADS = {"os-system": OsSystem, "eval": BuiltinEval, "open": BuiltinOpen, "exec-partial": ExecThroughPartial,
            "numpy-save": NumpySave, "path-touch": PathTouch, "custom-class": Sneaky}


def crafted_state(payload: str, marker: Path, weights: dict | None = None) -> dict:
    """SAT's ``{"module": ...}`` layout with the payload beside the weights, where a training state would be."""
    return {"module": weights or {"w": torch.zeros(2)}, "iteration": 1, "client_lr_scheduler": PAYLOADS[payload](marker)}


def sat_training_state(weights: dict, iteration: int = 2) -> dict:
    """What SAT 0.4.12's save_ds_checkpoint hands DeepSpeed (iteration, scheduler, Python, numpy and torch RNG
    states) merged into what DeepSpeed 0.19's _save_checkpoint saves beside the module, as a CPU training run
    writes it (read from a real run's mp_rank_00_model_states.pt: every key and type)."""
    shapes = collections.OrderedDict((name, t.shape) for name, t in weights.items())  # torch.Size values
    return {
        "module": weights, "buffer_names": [], "optimizer": None, "param_shapes": [shapes],
        "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None, "lr_scheduler": None,
        "data_sampler": None, "random_ltd": None, "skipped_steps": 0, "global_steps": iteration,
        "global_samples": 4 * iteration, "dp_world_size": 1, "mp_world_size": 1,
        "checkpoint_parallel_dimensions": {"pp_degree": 1, "tp_degree": 1},
        "ds_config": {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
                      "fp16": {"enabled": False, "loss_scale": 0}, "bf16": {"enabled": False},
                      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95]}}},
        "ds_version": "0.19.8",
        # SAT's client state: sat/training/model_io.py save_ds_checkpoint
        "iteration": iteration,
        "client_lr_scheduler": {"start_lr": 1e-4, "warmup_iter": 0.04, "num_iters": 3, "decay_style": "cosine",
                                "end_iter": iteration, "decay_ratio": 10.0},
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.get_rng_state(),  # porter_device.get_rng_state() on the CPU
    }


def files_in(marker: Path) -> list[str]:
    return sorted(p.name for p in marker.iterdir()) if marker.exists() else []
