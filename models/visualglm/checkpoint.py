"""VisualGLM checkpoints in SAT's layout: ``latest``, ``model_config.json``, ``<iter>/mp_rank_00_model_states.pt``.

The released VisualGLM-6B folder (``1/``, ``latest``, ``model_config.json``) loads as it is; checkpoints that
SAT's training_main writes load too. Each way a folder can be wrong has its own error naming the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from porter.errors import PorterError

from .config import VisualGLMConfig
from .model import build_model

STATES = "mp_rank_00_model_states.pt"


class CheckpointError(PorterError):
    pass


@dataclass
class Checkpoint:
    folder: Path
    iteration: str
    config: VisualGLMConfig
    sat_args: dict  # model_config.json as written

    @property
    def finetune(self) -> str | None:
        if self.sat_args.get("use_lora"):
            return "lora"
        if self.sat_args.get("use_ptuning"):
            return "ptuning"
        return None

    @property
    def states_file(self) -> Path:
        return self.folder / self.iteration / STATES


def inspect_checkpoint(folder: str | Path) -> Checkpoint:
    """Read ``latest`` and ``model_config.json`` and check the weights file exists; loads no tensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    latest = folder / "latest"
    if not latest.is_file():
        raise CheckpointError(f"{latest}: missing; a SAT checkpoint folder names its iteration in `latest`",
                              hint="point --from_pretrained at the folder that holds `latest` and `model_config.json`")
    iteration = latest.read_text().strip()
    if not (folder / iteration).is_dir():
        raise CheckpointError(f"{folder / iteration}: iteration folder missing (`latest` says {iteration!r})")
    if not (folder / iteration / STATES).is_file():
        raise CheckpointError(f"{folder / iteration / STATES}: weights file missing")
    config_file = folder / "model_config.json"
    try:
        sat_args = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{config_file}: missing") from None
    except ValueError as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from None
    return Checkpoint(folder, iteration, VisualGLMConfig.from_sat_args(sat_args, str(config_file)), sat_args)


def load_model(folder: str | Path, merge_lora: bool = False):
    """Build the model ``model_config.json`` describes and load its weights, checking every shape."""
    ckpt = inspect_checkpoint(folder)
    model = build_model(ckpt.config, finetune=ckpt.finetune, lora_rank=ckpt.sat_args.get("lora_rank", 10),
                        lora_layers=ckpt.sat_args.get("layer_range"), pre_seq_len=ckpt.sat_args.get("pre_seq_len", 8))
    # SAT stores its training state (lr scheduler, RNG states) beside the weights: a trusted local file.
    state = torch.load(ckpt.states_file, map_location="cpu", weights_only=False)
    weights = state.get("module", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{ckpt.states_file}: no 'module' state dict inside")
    expected = model.state_dict()
    for name, tensor in weights.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{ckpt.states_file}: tensor {name} has shape {tuple(tensor.shape)}, but model_config.json describes "
                f"{tuple(expected[name].shape)}", hint="the weights and model_config.json come from different models")
    missing = [n for n in expected if n not in weights]
    unexpected = [n for n in weights if n not in expected]
    if missing or unexpected:
        detail = (f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")) if missing \
            else (f"unexpected {unexpected[0]}" + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
        raise CheckpointError(f"{ckpt.states_file}: weights do not match model_config.json: {detail}")
    model.load_state_dict(weights)
    model.porter_config = ckpt.config
    if merge_lora and ckpt.finetune == "lora":
        model.get_mixin("lora").merge_lora()
        model.del_mixin("lora")
    return model, ckpt


def save_model(model, config: VisualGLMConfig, folder: str | Path, iteration: int = 1, finetune: str | None = None,
               **extra_args) -> Path:
    """Write ``model`` in SAT's layout; ``latest`` is written last, so a crash leaves the old one in force."""
    folder = Path(folder)
    (folder / str(iteration)).mkdir(parents=True, exist_ok=True)
    sat_args = {**config.sat_args(), "use_lora": finetune == "lora", "use_ptuning": finetune == "ptuning", **extra_args}
    _atomic_text(folder / "model_config.json", json.dumps(sat_args, indent=2) + "\n")
    states = folder / str(iteration) / STATES
    fd, tmp = tempfile.mkstemp(dir=states.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"module": model.state_dict(), "iteration": iteration}, tmp)
    os.replace(tmp, states)
    _atomic_text(folder / "latest", str(iteration))
    return folder


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
