"""Finding plugins, calling their hooks, and keeping what they register."""
from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import NotFoundError, PluginError

ENTRY_POINT_GROUP = "porter"
DISABLE_ENV = "PORTER_DISABLE_PLUGINS"  # comma-separated plugin names, or "*" for every entry point
EXTRA_ENV = "PORTER_PLUGINS"  # comma-separated modules or .py files to load as plugins (like --plugin)

# registry kind -> hook that fills it
KINDS = {
    "targets": "porter_register_targets",
    "rules": "porter_register_rules",
    "checks": "porter_register_checks",
    "devices": "porter_register_devices",
    "models": "porter_register_models",
    "datasets": "porter_register_datasets",
    "recipes": "porter_register_recipes",
    "commands": "porter_register_commands",
}


@dataclass(frozen=True)
class Command:
    """A plugin's command, as ``porter_register_commands`` registers it; `porter` runs it as it runs its built-in
    ones (``porter.commands._common.Command``)."""

    name: str
    help: str
    add_arguments: Callable
    run: Callable


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "entry point <dist>" or "--plugin"
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


def item_key(item: Any) -> str:
    """The registry key of an item: its ``key`` attribute, else ``id``, else ``name``."""
    for attr in ("key", "id", "name"):
        value = getattr(item, attr, None)
        if isinstance(value, str) and value:
            return value
    raise TypeError(f"{item!r} has no key, id or name")


# Kinds whose hooks run the first time something asks for them: rules and checks pull in libcst and friends,
# which `porter status`, `revert` and `--help` never need.
LAZY_KINDS = ("rules", "checks")


@dataclass
class Registry:
    plugins: list[PluginInfo] = field(default_factory=list)
    items: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in KINDS})
    owners: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, key) -> plugin name
    pending: list[tuple[PluginInfo, Any, Any]] = field(default_factory=list)  # (info, module, plugin manager)
    modules: dict[str, Any] = field(default_factory=dict)  # plugin name -> its module, for source_digest

    def source_digest(self) -> str:
        """A hash of every loaded plugin's source files (its whole package for a packaged plugin): what the rules
        they register are made of, read without importing the rules."""
        import hashlib

        from .diskio import hash_files

        h = hashlib.sha256(f"{os.environ.get(EXTRA_ENV, '')}\0".encode())
        for info in sorted(self.plugins, key=lambda i: i.name):
            h.update(f"{info.name}\0{info.version}\0{info.error}\0".encode())
        for name, module in sorted(self.modules.items()):
            origin = Path(getattr(module, "__file__", "") or "")
            top = sys.modules.get(module.__name__.split(".")[0])
            root = Path(top.__file__).parent if top is not None and getattr(top, "__path__", None) and top.__file__ \
                else None
            h.update(f"{name}\0".encode())
            if root is not None:
                hash_files(h, root.rglob("*.py"), root)
            elif origin.is_file():
                hash_files(h, [origin], origin.parent)
        return h.hexdigest()

    def __getattr__(self, kind: str) -> dict[str, Any]:
        if kind in KINDS:
            return self.kind(kind)
        raise AttributeError(kind)

    def kind(self, kind: str) -> dict[str, Any]:
        """Everything registered of ``kind``; with a lazy load, the rules' and checks' hooks run on first use."""
        if kind in LAZY_KINDS:
            self.load_lazy()
        return self.items[kind]

    def load_lazy(self, strict: bool = False) -> list[PluginInfo]:
        """Run the plugins' hooks of the lazy kinds (once). A plugin that fails there is dropped whole, as at
        load: its error recorded, nothing it registered kept. Returns the plugins that failed."""
        pending, self.pending = self.pending, []
        failed = []
        for info, module, pm in pending:
            error = _register(self, info, module, pm, LAZY_KINDS)
            if error is None:
                continue
            info.error, info.registered = error, {}
            for kind, key in [k for k, owner in self.owners.items() if owner == info.name]:
                del self.items[kind][key], self.owners[(kind, key)]
            pm.unregister(module)
            failed.append(info)
            if strict:
                raise PluginError(f"plugin {info.name!r} failed: {error}",
                                  hint=f"fix or uninstall it, or disable it with {DISABLE_ENV}={info.name}")
        return failed

    @property
    def errors(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def target(self, name: str):
        try:
            return self.items["targets"][name]
        except KeyError:
            known = ", ".join(sorted(self.items["targets"])) or "none"
            raise NotFoundError(f"unknown target {name!r} (known: {known})",
                                hint="`porter plugins` shows what each plugin registers") from None

    def rules_for(self, target: str) -> list:
        return sorted((r for r in self.kind("rules").values() if r.target == target), key=lambda r: r.id)

    def checks_for(self, target: str) -> list:
        return sorted((c for c in self.kind("checks").values() if c.target == target), key=lambda c: c.id)


def _load_module(spec: str):
    """A plugin given as a module name or a path to a .py file."""
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).resolve()
        name = f"porter_plugin_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None or not path.exists():
            raise FileNotFoundError(f"no plugin file {path}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def _error_text(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({frame.filename}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


class _PluginManager(pluggy.PluginManager):
    """Treat every ``porter_*`` function as a hook, decorated or not, so a misspelt name fails loudly."""

    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("porter_") and callable(getattr(plugin, name, None)):
            return {}
        return opts


def load(extra: Sequence[str] = (), strict: bool = False, disable: Sequence[str] | None = None,
         lazy: bool = False, builtin_commands: Collection[str] = ()) -> Registry:
    """Load plugins from entry points and ``extra`` and fill a registry.

    A plugin that fails to import, has a misspelt hook, raises in a hook, registers a key another plugin owns
    or a command named like one of ``builtin_commands`` (the `porter` executable's own) is recorded with its
    error and dropped; with ``strict`` the first such failure raises. With ``lazy`` the rules' and checks' hooks
    run only when those are first asked for (``Registry.load_lazy``), so a command that needs neither never
    imports what they pull in.
    """
    pm = _PluginManager("porter")
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    if disable is None:
        disable = [d.strip() for d in os.environ.get(DISABLE_ENV, "").split(",") if d.strip()]
    extra = list(extra) + [e.strip() for e in os.environ.get(EXTRA_ENV, "").split(",") if e.strip()]

    def fail(info: PluginInfo, message: str) -> None:
        info.error = message
        registry.plugins.append(info)
        if strict:
            raise PluginError(f"plugin {info.name!r} failed: {message}",
                              hint=f"fix or uninstall it, or disable it with {DISABLE_ENV}={info.name}")

    loaded = _import_plugins(_candidates(extra, disable), pm, fail)
    for info, module in loaded:
        error = _register(registry, info, module, pm, [k for k in KINDS if k not in LAZY_KINDS], builtin_commands)
        if error is not None:
            fail(info, error)
            pm.unregister(module)
            continue
        registry.plugins.append(info)
        registry.pending.append((info, module, pm))
        registry.modules[info.name] = module
    if not lazy:
        registry.load_lazy(strict)
    if registry.items["devices"]:
        # Plugin devices join the runtime's selection in this process (and in workers porter starts).
        from .runtime import device

        for device_class in registry.items["devices"].values():
            device.register(device_class)
    return registry


def _candidates(extra: Sequence[str], disable: Sequence[str]) -> list[tuple[str, str, str, Callable[[], Any]]]:
    """(name, version, where from, how to import) of every plugin to try: entry points, then ``extra``."""
    candidates: list[tuple[str, str, str, Callable[[], Any]]] = []
    if "*" not in disable:
        seen = set()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disable or ep.name in seen:
                continue
            seen.add(ep.name)
            dist = ep.dist
            candidates.append((ep.name, dist.version if dist else "?",
                               f"entry point of {dist.metadata['Name'] if dist else '?'}", ep.load))
    for spec in extra:
        candidates.append((Path(spec).stem if spec.endswith(".py") else spec, "-", "--plugin",
                           functools.partial(_load_module, spec)))
    return candidates


def _import_plugins(candidates, pm: pluggy.PluginManager, fail: Callable[[PluginInfo, str], None]
                    ) -> list[tuple[PluginInfo, Any]]:
    """Import and register each candidate with pluggy; one that fails to import or names a hook porter does not
    have goes to ``fail`` and is dropped."""
    loaded: list[tuple[PluginInfo, Any]] = []
    for name, version, source, loader in candidates:
        info = PluginInfo(name=name, version=version, source=source)
        try:
            module = loader()
            pm.register(module, name=name)
            unknown = [h.name for h in pm.hook.__dict__.values()
                       if isinstance(h, pluggy.HookCaller) and not h.has_spec() and h.get_hookimpls()]
            if unknown:
                pm.unregister(module)
                raise PluginError(f"unknown hook(s) {', '.join(unknown)}: see porter/hookspecs.py")
        except Exception as exc:  # a broken plugin must not take the others down
            fail(info, _error_text(exc) if not isinstance(exc, PluginError) else exc.message)
            continue
        loaded.append((info, module))
    pm.check_pending()
    return loaded


def _register(registry: Registry, info: PluginInfo, module: Any, pm: pluggy.PluginManager, kinds,
              builtin_commands: Collection[str] = ()) -> str | None:
    """Call ``module``'s hooks for ``kinds`` and add what they register, all or nothing; the error, if any."""
    staged: dict[str, dict[str, Any]] = {k: {} for k in kinds}
    try:
        for kind in kinds:
            impls = [i for i in getattr(pm.hook, KINDS[kind]).get_hookimpls() if i.plugin is module]
            if not impls:
                continue

            def register(*args, kind=kind, **kwargs):
                item = Command(*args, **kwargs) if kind == "commands" else args[0]
                key = item_key(item)
                owner = registry.owners.get((kind, key))
                if owner is not None or key in staged[kind]:
                    raise PluginError(f"{kind[:-1]} {key!r} is already registered by {owner or info.name!r}")
                if kind == "commands" and key in builtin_commands:  # the built-in wins
                    raise PluginError(f"command {key!r} clashes with the built-in `porter {key}`")
                if kind == "targets" and (key == "any" or "/" in key):  # `any` names the rules for any code
                    raise PluginError(f"target {key!r}: 'any' and names holding '/' (paths) are porter's own")
                if kind == "devices":  # checked here, so an incomplete device fails its plugin, not its first use
                    from .runtime.device import problems

                    lacking = problems(item)
                    if lacking:
                        raise PluginError(f"device {key!r} lacks " + "; ".join(lacking))
                staged[kind][key] = item

            impls[0].function(register=register)
    except Exception as exc:
        return exc.message if isinstance(exc, PluginError) else _error_text(exc)
    for kind, items in staged.items():
        for key, item in items.items():
            registry.items[kind][key] = item
            registry.owners[(kind, key)] = info.name
        if items:
            info.registered[kind] = sorted(items)
    return None
