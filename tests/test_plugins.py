"""Plugin discovery and isolation: a broken plugin is named, the others keep working."""
import json
import textwrap
from pathlib import Path

import pytest

from porter import plugins
from porter.errors import PluginError
from porter.testing import run_porter

FIXTURE_PLUGIN = str(Path(__file__).with_name("fixture_plugin.py"))


def write_plugin(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text("import porter\n" + textwrap.dedent(body))
    return str(path)


@pytest.fixture
def broken(tmp_path):
    return {
        "import_fails": write_plugin(tmp_path, "import_fails", "raise ImportError('needs a thing that is missing')\n"),
        "misspelt": write_plugin(tmp_path, "misspelt", """
            @porter.hookimpl
            def porter_register_rulez(register):
                pass
        """),
        "undecorated_misspelt": write_plugin(tmp_path, "undecorated_misspelt", """
            def porter_register_target(register):
                pass
        """),
        "hook_raises": write_plugin(tmp_path, "hook_raises", """
            @porter.hookimpl
            def porter_register_rules(register):
                raise RuntimeError('rule table is corrupt')
        """),
        "duplicate": write_plugin(tmp_path, "duplicate", """
            from porter.target import Target
            @porter.hookimpl
            def porter_register_targets(register):
                register(Target(name="sat", distribution="x", package="x"))
        """),
    }


def test_entry_point_plugins_are_discovered_with_versions():
    registry = plugins.load(disable=[])
    info = {p.name: p for p in registry.plugins}
    assert info["sat"].source == "entry point of porter" and info["sat"].error is None
    assert "sat" in registry.targets and "sat.imports.wandb" in registry.rules
    assert info["sat"].registered["targets"] == ["sat"]


@pytest.mark.parametrize("name, error", [
    ("import_fails", "ImportError: needs a thing that is missing"),
    ("misspelt", "unknown hook(s) porter_register_rulez"),
    ("undecorated_misspelt", "unknown hook(s) porter_register_target"),
    ("hook_raises", "RuntimeError: rule table is corrupt"),
    ("duplicate", "target 'sat' is already registered by 'sat'"),
])
def test_a_broken_plugin_is_reported_by_name_and_the_rest_work(broken, name, error):
    registry = plugins.load(extra=[broken[name], FIXTURE_PLUGIN])
    failed = {p.name: p.error for p in registry.errors}
    assert list(failed) == [name] and error in failed[name]
    assert "toylib" in registry.targets and "sat" in registry.targets
    assert registry.targets["sat"].distribution == "SwissArmyTransformer"
    # what a failed plugin staged before raising is not half-registered
    assert all(owner != name for owner in registry.owners.values())


def test_strict_makes_a_broken_plugin_fatal(broken):
    with pytest.raises(PluginError, match="plugin 'hook_raises' failed"):
        plugins.load(extra=[broken["hook_raises"]], strict=True)


def test_cli_warns_names_the_plugin_and_keeps_going(broken):
    r = run_porter("--plugin", broken["import_fails"], "rules", "sat")
    assert r.returncode == 0
    assert "plugin 'import_fails' was not loaded: ImportError" in r.stderr
    assert "sat.imports.wandb" in r.stdout
    r = run_porter("--strict", "--plugin", broken["import_fails"], "rules", "sat")
    assert r.returncode == 5 and "plugin 'import_fails' failed" in r.stderr


def test_disable_env_var():
    r = run_porter("plugins", "--json", env={"PORTER_DISABLE_PLUGINS": "sat"})
    assert [p["name"] for p in json.loads(r.stdout)] == ["torch", "visualglm"]
    r = run_porter("plugins", "--json", env={"PORTER_DISABLE_PLUGINS": "sat,torch,visualglm"})
    assert json.loads(r.stdout) == []
    r = run_porter("rules", "sat", env={"PORTER_DISABLE_PLUGINS": "*"})
    assert r.returncode == 6 and "unknown target 'sat'" in r.stderr


def test_porter_plugins_lists_what_each_registers(porter_env):
    r = run_porter("plugins", env=porter_env)
    assert r.returncode == 0
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "targets: sat; rules: sat.compat.prefetch-factor, sat.compat.torch-load" in lines["sat"]
    assert "sat.imports.wandb" in lines["sat"]
    assert "models: visualglm; datasets: visualglm.coco, visualglm.fewshot; recipes: visualglm.check, visualglm.convert, visualglm.demo" in lines["visualglm"]
    assert "checks: sat.parity.model, sat.parity.ops, sat.smoke" in lines["sat"]
    assert "targets: toylib; rules: toylib.backend, toylib.config, toylib.sync" in lines["fixture_plugin"]


def test_plugin_commands_are_added_to_the_cli(tmp_path):
    plugin = write_plugin(tmp_path, "hello", """
        @porter.hookimpl
        def porter_register_commands(register):
            def add(parser):
                parser.add_argument("--name", default="world")
            def run(args, registry):
                print(f"hello {args.name}, {len(registry.targets)} targets")
                return 0
            register("hello", "say hello", add, run)
    """)
    r = run_porter("--plugin", plugin, "hello", "--name", "npu")
    import re

    assert r.returncode == 0 and re.fullmatch(r"hello npu, \d+ targets", r.stdout.strip())


def test_a_plugin_command_named_like_a_built_in_fails_its_plugin_and_the_built_in_runs(tmp_path):
    plugin = write_plugin(tmp_path, "clash", """
        @porter.hookimpl
        def porter_register_commands(register):
            register("status", "not porter's status", lambda parser: None, lambda args, registry: 42)
    """)
    line = "plugin 'clash' was not loaded: command 'status' clashes with the built-in `porter status`"
    r = run_porter("--plugin", plugin, "status")
    assert r.returncode == 0 and line in r.stderr.splitlines()[0]
    r = run_porter("--plugin", plugin, "plugins", "--json")
    clash = next(p for p in json.loads(r.stdout) if p["name"] == "clash")
    assert clash["registered"] == {} and clash["error"] == "command 'status' clashes with the built-in `porter status`"
    r = run_porter("--strict", "--plugin", plugin, "status")
    assert r.returncode == 5 and "plugin 'clash' failed: command 'status' clashes with the built-in" in r.stderr


def test_a_plugin_command_whose_plugin_fails_later_is_not_run(tmp_path):
    plugin = write_plugin(tmp_path, "halfway", """
        @porter.hookimpl
        def porter_register_commands(register):
            register("halfway", "parsed, then dropped", lambda parser: None, lambda args, registry: 0)
        @porter.hookimpl
        def porter_register_rules(register):
            raise RuntimeError('rule table is corrupt')
    """)
    r = run_porter("--plugin", plugin, "halfway")
    assert r.returncode == 6 and "command 'halfway' is not available: its plugin was not loaded" in r.stderr


def test_plugin_devices_reach_the_runtime(tmp_path, monkeypatch):
    from porter.runtime import device

    monkeypatch.setattr(device, "_extra", {})
    plugin = write_plugin(tmp_path, "toydev", """
        from porter.runtime.device import CPU
        class ToyDevice(CPU):
            name = "toy"
        @porter.hookimpl
        def porter_register_devices(register):
            register(ToyDevice)
    """)
    registry = plugins.load(extra=[plugin])
    assert "toy" in registry.devices and "toy" in device.known()
    assert device.select("toy").name == "toy"
    device.reset()


def test_a_device_that_lacks_what_porter_asks_fails_its_plugin_at_registration(tmp_path, monkeypatch):
    """A device written against another porter (no backend, no is_present, no torch module) is named with what it
    lacks when its plugin loads, and the other plugins keep working."""
    from porter.runtime import device

    monkeypatch.setattr(device, "_extra", {})
    plugin = write_plugin(tmp_path, "halfdev", """
        from porter.runtime.device import Device
        class HalfDevice(Device):
            name = "half"
            torch_type = "half"
        @porter.hookimpl
        def porter_register_devices(register):
            register(HalfDevice)
    """)
    registry = plugins.load(extra=[plugin])
    error = next(info.error for info in registry.errors if info.name == "halfdev")
    for word in ("device 'half' lacks", "backend", "deepspeed_accelerator", "is_present()", "_module()"):
        assert word in error, error
    assert "half" not in device.known() and "sat" in registry.targets
    with pytest.raises(TypeError, match="lacks"):
        device.register(type("Nothing", (), {}))
