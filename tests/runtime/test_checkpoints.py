"""porter.runtime.checkpoints: SAT's own checkpoints load weights-only; a file that needs anything more is refused,
naming it and the globals, and nothing in it runs."""
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from porter.runtime import checkpoints

sys.path.insert(0, str(Path(__file__).parents[1] / "reliability"))
from crafted import PAYLOADS, crafted_state, files_in, sat_training_state  # noqa: E402


@pytest.fixture
def marker(tmp_path):
    folder = tmp_path / "marker"
    folder.mkdir()
    yield folder
    assert files_in(folder) == [], "a payload ran"


def weights():
    return {"transformer.word_embeddings.weight": torch.randn(8, 4), "mixins.x.bias": torch.zeros(4, dtype=torch.float16)}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_checkpoint_as_sat_and_deepspeed_save_it_loads_and_its_rng_states_restore(tmp_path, legacy):
    random.seed(3)
    np.random.seed(3)
    state = sat_training_state(weights())
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert checkpoints.unsafe_globals(path) == ([] if not legacy else None)
    loaded = checkpoints.load(path, map_location="cpu", mmap=not legacy)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded["module"][k], v) for k, v in state["module"].items())
    # what SAT's load_checkpoint does with them on a resume that loads the RNG states
    random.setstate(loaded["random_rng_state"])
    np.random.set_state(loaded["np_rng_state"])
    torch.set_rng_state(loaded["torch_rng_state"])
    assert np.random.randint(1 << 30) == (np.random.seed(3), np.random.randint(1 << 30))[1]
    assert loaded["param_shapes"][0]["mixins.x.bias"] == torch.Size([4])


def test_the_allow_list_holds_for_the_call_only(tmp_path):
    path = tmp_path / "s.pt"
    torch.save({"np": np.random.get_state()}, path)
    initial = list(torch.serialization.get_safe_globals())
    # once first: torch registers safe globals of its own when a module is first imported (torch.distributed.tensor
    # during a load, where no earlier test imported it), which is not the allow-list this test is about
    checkpoints.load(path)
    ours = [g for g in checkpoints.allowed_globals() if g not in initial]
    assert ours and not [g for g in ours if g in torch.serialization.get_safe_globals()]
    checkpoints.load(path)
    # torch may add (and reorder) its own entries as its modules are first imported; porter's are gone again
    assert not [g for g in ours if g in torch.serialization.get_safe_globals()]
    with pytest.raises(pickle.UnpicklingError):  # plain torch.load still refuses numpy's state
        torch.load(path, weights_only=True)


@pytest.mark.parametrize("payload", sorted(set(PAYLOADS) - {"custom-class"}))
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_crafted_pickle_is_refused_naming_the_file_and_globals(tmp_path, marker, payload, legacy):
    path = tmp_path / "evil.pt"
    torch.save(crafted_state(payload, marker), path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(checkpoints.RefusedCheckpoint) as caught:
        checkpoints.load(path, map_location="cpu")
    message = str(caught.value)
    assert message.startswith(f"{path}: refused: its pickle names ") and "\n" not in message
    assert caught.value.globals and all(name in message for name in caught.value.globals)
    if not legacy:  # the zip's pickle is scanned first: every global is named, not only the first
        assert caught.value.globals == checkpoints.unsafe_globals(path)


def test_a_numpy_array_other_than_the_rng_states_is_refused(tmp_path):
    path = tmp_path / "f64.pt"
    torch.save({"module": {}, "x": np.zeros(3)}, path)
    with pytest.raises(checkpoints.RefusedCheckpoint, match=r"Float64DType"):
        checkpoints.load(path)


def test_weights_only_false_is_refused(tmp_path):
    torch.save({}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="never turns weights_only off"):
        checkpoints.load(tmp_path / "a.pt", weights_only=False)


@pytest.mark.parametrize("kind", ["dev-zero", "folder", "fifo", "missing"])
def test_what_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path, kind):
    path = tmp_path / "w.pt"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block until a writer came
    with pytest.raises(checkpoints.RefusedCheckpoint, match=f"^{path}: (not a regular file|cannot be read)"):
        checkpoints.load(path)


def test_safetensors_load_memory_mapped_and_garbage_is_an_error(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    saved = weights()
    safetensors.save_file(saved, path)
    loaded = checkpoints.load(path, map_location="cpu")
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert checkpoints.unsafe_globals(path) is None  # no pickle to scan
    (tmp_path / "bad.safetensors").write_bytes((16).to_bytes(8, "little") + b"{not json at all")
    with pytest.raises(Exception, match="header"):
        checkpoints.load(tmp_path / "bad.safetensors")


def test_other_weights_only_failures_say_why_without_torchs_advice_to_drop_weights_only(tmp_path):
    path = tmp_path / "opcode.pt"
    torch.save({"x": torch.zeros(1)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[:40]) + b"\xff" * 40)  # an opcode the weights-only unpickler does not know
    with pytest.raises(Exception) as caught:
        checkpoints.load(path)
    assert "weights_only` set to `False`" not in str(caught.value)


def test_importing_it_stays_light():
    probe = ("import sys, porter.runtime.checkpoints; heavy = [m for m in sys.modules if m.split('.')[0] in "
             "('libcst', 'pluggy', 'safetensors') or m in ('porter.cli', 'porter.plugins', 'porter.errors')]; "
             "print(heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_each_crafted_payload_really_runs_code_under_the_full_unpickler(payload, tmp_path):
    """The positive control for every test that says a crafted file ran nothing: unpickled the unsafe way
    (weights_only=False, in a child interpreter), each payload does write into its marker folder."""
    marker = tmp_path / "marker"
    marker.mkdir()
    torch.save(crafted_state(payload, marker), tmp_path / "x.pt")
    tests = Path(__file__).parent.parent
    code = (f"import sys; sys.path[:0] = [{str(tests / 'reliability')!r}]; import torch; "
            f"torch.load({str(tmp_path / 'x.pt')!r}, weights_only=False)")
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert files_in(marker), f"{payload} wrote nothing even when unpickled with weights_only=False"
