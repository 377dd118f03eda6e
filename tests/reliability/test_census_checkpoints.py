"""Census: checkpoint folders a careless or hostile user brings to `porter run visualglm check`. Each row damages a
copy of a tiny folder in the released layout, runs `check` in this interpreter (``census.cli``) and asserts exit
7, one error line that names the file, no traceback, and an empty marker folder: the crafted pickles would write
into it if anything unpickled them with pickle's full unpickler.

On the code before issue 23's point 3 every crafted-pickle row wrote its marker (check unpickled with
weights_only=False); the wrong-typed model_config.json rows raised tracebacks; the /dev/zero and FIFO rows could hang.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from census import Case, assert_refused, cli, ids

STATES = "mp_rank_00_model_states.pt"
ENV = {"PORTER_DEVICE": "cpu"}


# -- what each row does to its copy of the folder (folder, marker folder) ------------------------------------------

def put(path: Path, data: bytes | str) -> None:
    """Replace a file with new bytes (unlinked first: the copy's files are hard links to the template's)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def save(state_of, legacy: bool = False):
    def setup(folder: Path, marker: Path):
        import torch

        states = folder / "1" / STATES
        state = state_of(marker)
        states.unlink()
        torch.save(state, states, _use_new_zipfile_serialization=not legacy)
    return setup


def payload(name: str, legacy: bool = False):
    def state_of(marker):
        from crafted import crafted_state

        return crafted_state(name, marker)
    return save(state_of, legacy)


def in_module(marker):
    """The payload where a tensor should be: inside the state dict."""
    import torch
    from crafted import OsSystem

    return {"module": {"w": torch.zeros(2), "transformer.word_embeddings.weight": OsSystem(marker)}}


def float64_array(marker):
    import numpy as np
    import torch

    return {"module": {"w": torch.zeros(2)}, "np_rng_state": ("MT19937", np.zeros(624))}  # not SAT's uint32 state


def weights_bytes(data: bytes):
    return lambda folder, marker: put(folder / "1" / STATES, data)


def truncated(folder, marker):
    data = (folder / "1" / STATES).read_bytes()
    put(folder / "1" / STATES, data[: len(data) // 2])


def zip_without_data_pkl(folder, marker):
    import zipfile

    (folder / "1" / STATES).unlink()
    with zipfile.ZipFile(folder / "1" / STATES, "w") as z:
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data/0", b"\0" * 16)


def weights_symlink(target: str):
    def setup(folder, marker):
        (folder / "1" / STATES).unlink()
        (folder / "1" / STATES).symlink_to(target)
    return setup


def weights_fifo(folder, marker):
    (folder / "1" / STATES).unlink()
    os.mkfifo(folder / "1" / STATES)  # opened for reading, it would wait for a writer for ever


def weights_folder(folder, marker):
    (folder / "1" / STATES).unlink()
    (folder / "1" / STATES).mkdir()


def second_rank(folder, marker):
    os.link(folder / "1" / STATES, folder / "1" / "mp_rank_01_model_states.pt")


def safetensors_beside(folder, marker):
    put(folder / "1" / "mp_rank_00_model_states.safetensors", b"")


def safetensors_only(header: bytes):
    def setup(folder, marker):
        (folder / "1" / STATES).unlink()
        put(folder / "1" / "mp_rank_00_model_states.safetensors", header)
    return setup


def latest(data: bytes | None):
    def setup(folder, marker):
        if data is None:
            (folder / "latest").unlink()
        else:
            put(folder / "latest", data)
    return setup


def latest_symlink(folder, marker):
    (folder / "latest").unlink()
    (folder / "latest").symlink_to("/dev/zero")


def weights_missing(folder, marker):
    (folder / "1" / STATES).unlink()


def config_text(text: str | bytes | None):
    def setup(folder, marker):
        if text is None:
            (folder / "model_config.json").unlink()
        else:
            put(folder / "model_config.json", text)
    return setup


def config_edit(change):
    def setup(folder, marker):
        config = json.loads((folder / "model_config.json").read_text())
        change(config)
        put(folder / "model_config.json", json.dumps(config))
    return setup


def config_folder(folder, marker):
    (folder / "model_config.json").unlink()
    (folder / "model_config.json").mkdir()


W = "{dir}/1/" + STATES  # the weights file, as messages name it
REFUSED = W + ": refused: its pickle names "


def C(id, proves, setup, *needles):
    return Case(id=id, kind="checkpoint", proves=proves), setup, needles


ROWS = [  # (case, what the row does to its folder, what the error line must hold)
    # crafted pickles: each would write into the marker folder if unpickled
    C("checkpoint/pickle-os-system", "a pickle calling os.system is refused by name before it is unpickled",
      payload("os-system"), REFUSED + "posix.system"),
    C("checkpoint/pickle-builtins-eval", "a pickle calling eval is refused by name", payload("eval"),
      REFUSED + "builtins.eval"),
    C("checkpoint/pickle-builtins-open", "a pickle calling open to write a file is refused", payload("open"),
      REFUSED + "io.open"),
    C("checkpoint/pickle-exec-via-partial", "exec behind functools.partial is refused, both globals named",
      payload("exec-partial"), REFUSED + "builtins.exec, functools.partial"),
    C("checkpoint/pickle-numpy-save", "a numpy global other than the RNG state's (numpy.save) is refused",
      payload("numpy-save"), REFUSED, "numpy.save"),
    C("checkpoint/pickle-method-via-getattr", "a method reached through getattr (pathlib.Path.touch) is refused",
      payload("path-touch"), REFUSED + "builtins.getattr, pathlib.Path"),
    C("checkpoint/pickle-custom-class", "a custom class whose __setstate__ writes a file is refused",
      payload("custom-class"), REFUSED, "crafted.Sneaky"),
    C("checkpoint/pickle-in-state-dict", "the payload in place of a tensor inside the state dict is refused",
      save(in_module), REFUSED + "posix.system"),
    C("checkpoint/pickle-legacy-format", "the same payload in torch's legacy (non-zip) format, which cannot be "
      "scanned, is refused by the weights-only unpickler", payload("os-system", legacy=True), REFUSED + "posix.system"),
    C("checkpoint/pickle-numpy-float64", "a numpy array that is not SAT's uint32 RNG state is refused (the allow-list "
      "is exactly SAT's)", save(float64_array), REFUSED, "Float64DType"),
    # the weights file's bytes
    C("checkpoint/weights-truncated-zip", "a zip cut in half is 'corrupt', naming the file", truncated,
      "checkpoint file corrupt: " + W),
    C("checkpoint/weights-random-bytes", "random bytes are 'corrupt'", weights_bytes(os.urandom(4096)),
      "checkpoint file corrupt: " + W),
    C("checkpoint/weights-empty-file", "a 0-byte weights file is 'corrupt'", weights_bytes(b""),
      "checkpoint file corrupt: " + W),
    C("checkpoint/weights-zip-without-data-pkl", "a zip with no data.pkl is 'corrupt'", zip_without_data_pkl,
      "checkpoint file corrupt: " + W, "data.pkl"),
    C("checkpoint/weights-not-a-dict", "a file holding a list, not a state dict, is refused",
      save(lambda marker: [1, 2, 3]), W + ": no 'module' state dict of tensors inside"),
    C("checkpoint/weights-non-tensor-states", "a state dict of numbers, not tensors, is refused",
      save(lambda marker: {"module": {"w": 1.5, "b": "x"}}), W + ": no 'module' state dict of tensors inside"),
    C("checkpoint/weights-symlink-dev-zero", "a weights file that is a symlink to /dev/zero is refused at once (no "
      "endless read)", weights_symlink("/dev/zero"), W + ": not a regular file"),
    C("checkpoint/weights-fifo", "a FIFO as the weights file is refused without opening it (no hang)", weights_fifo,
      W + ": not a regular file"),
    C("checkpoint/weights-folder", "a folder in place of the weights file is refused", weights_folder,
      W + ": not a regular file"),
    C("checkpoint/weights-dangling-symlink", "a symlink to nothing is refused, naming the file",
      weights_symlink("/nonexistent/porter-weights.pt"), W + ": cannot be read (No such file or directory)"),
    C("checkpoint/weights-missing", "an iteration folder without the weights file is refused", weights_missing,
      W + ": weights file missing"),
    C("checkpoint/weights-two-mp-ranks", "two mp_rank files (model parallel) are refused, both named", second_rank,
      "{dir}/1: a model-parallel checkpoint in 2 parts (mp_rank_00_model_states.pt, mp_rank_01_model_states.pt)"),
    C("checkpoint/weights-pt-and-safetensors", "a .pt and a .safetensors side by side: porter will not guess",
      safetensors_beside, "{dir}/1: both mp_rank_00_model_states.pt and mp_rank_00_model_states.safetensors"),
    C("checkpoint/safetensors-header-garbage", "a .safetensors whose header is not JSON is 'corrupt'",
      safetensors_only((24).to_bytes(8, "little") + b"{garbage, not json at all"),
      "checkpoint file corrupt: {dir}/1/mp_rank_00_model_states.safetensors", "header"),
    C("checkpoint/safetensors-header-too-large", "a .safetensors claiming a 2**60-byte header is 'corrupt' (nothing "
      "that big is read)", safetensors_only((1 << 60).to_bytes(8, "little") + b"{}"),
      "checkpoint file corrupt: {dir}/1/mp_rank_00_model_states.safetensors"),
    # latest
    C("checkpoint/latest-missing", "a folder without latest is refused", latest(None),
      "{dir}/latest: missing; a SAT checkpoint folder names its iteration"),
    C("checkpoint/latest-empty", "an empty latest is refused", latest(b"\n"), "{dir}/latest: empty"),
    C("checkpoint/latest-not-utf8", "a latest that is not UTF-8 is refused", latest(b"\xff\xfe1\n"),
      "{dir}/latest: not UTF-8 text"),
    C("checkpoint/latest-parent-path", "a latest of ../x (out of the folder) is refused", latest(b"../1"),
      "{dir}/latest: says '../1', which is not a folder name in {dir}"),
    C("checkpoint/latest-absolute-path", "a latest holding an absolute path is refused", latest(b"/etc"),
      "{dir}/latest: says '/etc', which is not a folder name"),
    C("checkpoint/latest-folder-missing", "a latest naming an iteration folder that does not exist is refused",
      latest(b"7"), "{dir}/7: iteration folder missing (`latest` says '7')"),
    C("checkpoint/latest-huge", "a 1 MB latest is refused after reading 257 bytes of it", latest(b"1" * (1 << 20)),
      "{dir}/latest: more than 256 bytes"),
    C("checkpoint/latest-symlink-dev-zero", "a latest that is a symlink to /dev/zero is refused (no endless read)",
      latest_symlink, "{dir}/latest: not a regular file"),
    # model_config.json
    C("checkpoint/config-missing", "a folder without model_config.json is refused", config_text(None),
      "{dir}/model_config.json: missing"),
    C("checkpoint/config-not-json", "a model_config.json that is not JSON is refused", config_text("{ not json"),
      "{dir}/model_config.json: not valid JSON"),
    C("checkpoint/config-not-utf8", "a model_config.json that is not UTF-8 is refused", config_text(b'{"a": "\xff"}'),
      "{dir}/model_config.json: not UTF-8 text"),
    C("checkpoint/config-a-list", "a model_config.json holding a list is refused", config_text("[1, 2]"),
      "{dir}/model_config.json: expected a JSON object of SAT's arguments"),
    C("checkpoint/config-is-a-folder", "a folder named model_config.json is refused", config_folder,
      "{dir}/model_config.json: not a regular file"),
    C("checkpoint/config-eva-args-list", "eva_args as a list is refused, naming the section",
      config_edit(lambda c: c.update(eva_args=[1, 2])), "{dir}/model_config.json: 'eva_args' is a list: expected an "
      "object"),
    C("checkpoint/config-qformer-args-string", "qformer_args as a string is refused",
      config_edit(lambda c: c.update(qformer_args="none")), "{dir}/model_config.json: 'qformer_args' is the string"),
    C("checkpoint/config-size-as-string", "a size given as a string (num_layers 'two') is refused, naming the field",
      config_edit(lambda c: c.update(num_layers="two")),
      "{dir}/model_config.json: 'num_layers' is the string 'two': expected a whole number above 0"),
    C("checkpoint/config-string-as-number", "a string field given as a number (layernorm_order 5) is refused",
      config_edit(lambda c: c["qformer_args"].update(layernorm_order=5)),
      "'qformer_args.layernorm_order' is the number 5: expected one of pre, post, sandwich"),
    C("checkpoint/config-tokenizer-type-number", "tokenizer_type as a number is refused",
      config_edit(lambda c: c.update(tokenizer_type=7)), "'tokenizer_type' is the number 7: expected a string"),
    C("checkpoint/config-negative-size", "a negative size (eva_args.hidden_size -48) is refused",
      config_edit(lambda c: c["eva_args"].update(hidden_size=-48)),
      "'eva_args.hidden_size' is the number -48: expected a whole number above 0"),
    C("checkpoint/config-zero-heads", "0 attention heads is refused before any division by it",
      config_edit(lambda c: c.update(num_attention_heads=0)), "'num_attention_heads' is the number 0"),
    C("checkpoint/config-bool-as-size", "true as a layer count is refused (JSON true is not 1 here)",
      config_edit(lambda c: c["qformer_args"].update(num_layers=True)), "'qformer_args.num_layers' is true"),
    C("checkpoint/config-fractional-size", "a fractional size (vocab_size 1.5) is refused",
      config_edit(lambda c: c.update(vocab_size=1.5)), "'vocab_size' is the number 1.5"),
    C("checkpoint/config-epsilon-string", "a layernorm epsilon given as a string is refused",
      config_edit(lambda c: c["eva_args"].update(layernorm_epsilon="1e-6")),
      "'eva_args.layernorm_epsilon' is the string '1e-6': expected a number above 0"),
    C("checkpoint/config-image-size-strings", "an image size of strings is refused",
      config_edit(lambda c: c["eva_args"].update(image_size=["224", "224"])), "'eva_args.image_size' is the string"),
    C("checkpoint/config-is-decoder-numbers", "qformer_args.is_decoder of numbers is refused",
      config_edit(lambda c: c["qformer_args"].update(is_decoder=[2, 0])),
      "'qformer_args.is_decoder' [2, 0]: expected true or false per layer"),
    C("checkpoint/config-eva-args-missing", "a config without eva_args is refused, naming it",
      config_edit(lambda c: c.pop("eva_args")), "missing or malformed field 'eva_args'"),
    C("checkpoint/config-use-lora-string", "use_lora as a string is refused (\"false\" would read as true)",
      config_edit(lambda c: c.update(use_lora="false")), "'use_lora' is 'false': expected true or false"),
    C("checkpoint/config-model-parallel-string", "model_parallel_size as a string is refused, not crashed on",
      config_edit(lambda c: c.update(model_parallel_size="two")), "model_parallel_size 'two'; porter loads 1"),
]
CASES = [row[0] for row in ROWS]  # what census.all_cases and docs/reliability.md read


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from porter_visualglm.release import make_release_folder, tiny_release_config

    root = tmp_path_factory.mktemp("census-checkpoints")
    config = tiny_release_config()
    config["tokenizer_type"] = "porter-standin"  # so a sound folder passes `check` whole
    return make_release_folder(root / "template", config)


@pytest.fixture
def folder(template, tmp_path):
    dest = tmp_path / "ckpt"
    shutil.copytree(template, dest, copy_function=os.link)  # hard links: setups replace files, never edit them
    return dest


@pytest.mark.parametrize("case,setup,needles", ROWS, ids=ids(ROWS))
def test_check_refuses_with_one_line_and_runs_nothing(folder, tmp_path, case, setup, needles):
    from crafted import files_in

    marker = tmp_path / "marker"
    marker.mkdir()
    setup(folder, marker)
    result = cli("run", "visualglm", "check", "--from_pretrained", str(folder), env=ENV)
    assert_refused(result, 7, *[n.format(dir=folder) for n in needles])
    assert files_in(marker) == [], "the crafted pickle ran"
    assert "will load." not in result.stdout


def test_a_sound_folder_and_a_sat_training_checkpoint_pass(folder, tmp_path):
    """The other side: the template passes, and so does the state a SAT training run saves beside the weights
    (numpy's, Python's and torch's RNG states, DeepSpeed's fields): the allow-list is enough for SAT's own files."""
    import torch
    from crafted import sat_training_state

    assert cli("run", "visualglm", "check", "--from_pretrained", str(folder), env=ENV).returncode == 0
    states = folder / "1" / STATES
    weights = torch.load(states, map_location="cpu", weights_only=True)["module"]
    states.unlink()
    torch.save(sat_training_state(weights), states)
    result = cli("run", "visualglm", "check", "--from_pretrained", str(folder), env=ENV)
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"{folder} will load." in result.stdout
    states.unlink()  # the same in torch's legacy format, which is not memory-mapped and not scanned: still loads
    torch.save(sat_training_state(weights), states, _use_new_zipfile_serialization=False)
    assert cli("run", "visualglm", "check", "--from_pretrained", str(folder), env=ENV).returncode == 0
    safetensors = pytest.importorskip("safetensors.torch")  # and the weights alone, as .safetensors
    states.unlink()
    safetensors.save_file(weights, folder / "1" / "mp_rank_00_model_states.safetensors")
    result = cli("run", "visualglm", "check", "--from_pretrained", str(folder), env=ENV)
    assert result.returncode == 0 and "mp_rank_00_model_states.safetensors: all " in result.stdout, result.stderr


def test_the_census_is_distinct():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
