"""Targets: installed libraries porter may patch, and where they live on disk."""
from __future__ import annotations

import importlib.metadata as md
import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from .errors import NotFoundError, PlanError

STATE_DIR_NAME = ".porter-state"


@dataclass(frozen=True)
class Target:
    """A library porter knows how to patch, as a plugin describes it."""

    name: str  # what users type: `porter patch sat`
    distribution: str  # the installed distribution: "SwissArmyTransformer"
    package: str  # its top-level package directory in site-packages: "sat"
    versions: str = ""  # PEP 440 specifiers of the versions the plugin supports; "" means any
    description: str = ""
    # CUDA-only sites the plugin leaves on purpose, for `porter scan`: fnmatch pattern over
    # "path::qualified.function" -> why it is left (not reached by the supported models, guarded, ...)
    scan_exempt: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        return self.name

    def supports(self, version: str) -> bool:
        return version_in(version, self.versions)


@dataclass(frozen=True)
class InstalledTarget:
    """A target resolved to one installed copy: which site-packages, which version."""

    target: Target
    site_packages: Path
    version: str

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def package_dir(self) -> Path:
        return self.site_packages / self.target.package

    @property
    def state_dir(self) -> Path:
        """Journal and saved originals live beside the package, so they follow that environment."""
        return self.site_packages / STATE_DIR_NAME / self.target.name

    def path(self, rel: str) -> Path:
        return self.site_packages / rel


def record_hashes(installed: InstalledTarget) -> dict[str, str]:
    """sha256 (hex) of each file as pip installed it, from the distribution's RECORD; {} when there is none."""
    import base64

    wanted = _normalise(installed.target.distribution)
    for dist in md.distributions(path=[str(installed.site_packages)]):
        if _normalise(dist.metadata["Name"] or "") != wanted:
            continue
        hashes = {}
        for f in dist.files or ():
            if f.hash is not None and f.hash.mode == "sha256":
                digest = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
                hashes[f.as_posix()] = digest.hex()
        return hashes
    return {}


def record_differences(installed: InstalledTarget) -> dict[str, str]:
    """Files of the target's package that are not as pip installed them: path -> 'changed' (the bytes differ
    from the sha256 in RECORD: a hand edit, or a file copied over as the old Ascend recipe does) or 'missing'."""
    from .diskio import sha256_file

    prefix = installed.target.package + "/"
    found = {}
    for rel, digest in sorted(record_hashes(installed).items()):
        if not rel.startswith(prefix) or "__pycache__/" in rel:
            continue
        now = sha256_file(installed.path(rel))
        if now is None:
            found[rel] = "missing"
        elif now != digest:
            found[rel] = "changed"
    return found


def changed_since_install(installed: InstalledTarget, paths=None) -> list[str]:
    """The changed files of :func:`record_differences`, among ``paths`` when given."""
    return [rel for rel, why in record_differences(installed).items()
            if why == "changed" and (paths is None or rel in paths)]


def version_in(version: str, specifiers: str) -> bool:
    if not specifiers:
        return True
    try:
        return Version(version) in SpecifierSet(specifiers)
    except InvalidSpecifier as exc:
        raise PlanError(f"invalid version range {specifiers!r}: {exc}") from exc


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locate(target: Target, site_packages: Path | None = None, check_version: bool = True) -> InstalledTarget:
    """Find the installed copy of ``target``; ``site_packages`` picks another environment.

    ``check_version=False`` is for status and revert, which must work after an upgrade past the supported range.
    """
    wanted = _normalise(target.distribution)
    if site_packages is not None:
        site_packages = Path(site_packages).resolve()
        if not site_packages.is_dir():
            raise NotFoundError(f"--site-packages {site_packages}: no such directory")
        dists = [d for d in md.distributions(path=[str(site_packages)]) if _normalise(d.metadata["Name"] or "") == wanted]
        if not dists:
            raise NotFoundError(
                f"{target.distribution} is not installed in {site_packages}",
                hint=f"no {target.distribution}-*.dist-info folder there",
            )
        dist = dists[0]
    else:
        try:
            dist = md.distribution(target.distribution)
        except md.PackageNotFoundError:
            raise NotFoundError(
                f"{target.distribution} is not installed in this environment",
                hint="install it, or point porter at another environment with --site-packages DIR",
            ) from None
        site_packages = Path(str(dist.locate_file(""))).resolve()
    version = dist.version
    if not (site_packages / target.package).is_dir():
        raise NotFoundError(f"{target.distribution} {version} is registered in {site_packages} but its package "
                            f"folder {target.package}/ is missing")
    if check_version and not target.supports(version):
        raise PlanError(
            f"{target.distribution} {version} is outside the versions the {target.name!r} target supports "
            f"({target.versions})",
            hint="install a supported version, or update the plugin's rules for this release",
        )
    return InstalledTarget(target=target, site_packages=site_packages, version=version)


def module_name(rel: str) -> str | None:
    """``sat/training/utils.py`` -> ``sat.training.utils``; non-Python files have none."""
    if not rel.endswith(".py"):
        return None
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)
