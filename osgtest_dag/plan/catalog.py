"""Platform and repository catalogs: data files that say what ids and names mean.

The shipped catalogs live in `osgtest_dag/data/`; a user catalog (`--catalog FILE`) with the
same layout adds or replaces entries, so sites can add platforms or repositories without code.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from osgtest_dag.base import yamlsrc
from osgtest_dag.base.errors import UserError
from osgtest_dag.base.paths import default_image_dir
from osgtest_dag.model.cell import RepoSetup, x86_64_level  # what the cell configuration carries

ARCHES = ("x86_64", "aarch64")
# HTCondor's `Arch` machine attribute for each architecture.
CONDOR_ARCH = {"x86_64": "X86_64", "aarch64": "aarch64"}
FAMILIES = ("el", "debian")
# Families whose repository names need no catalog entry: dnf and yum enable any repository id
# by name (the reference passes each name to `--enablerepo`), so an EL name the catalog does
# not know is enabled as written. An apt repository is nothing without its sources.list lines,
# so a Debian name must be in the catalog.
PASS_THROUGH_FAMILIES = ("el",)
# How a platform's image runs a cell: `osgtest`, the boot hook our builders and customization
# install (payload/osgtest-boot); `own`, a hook of the image's own that runs the IO disk's
# run-job, as the reference's images do (mount /dev/vdb at /mnt/user, run /mnt/user/run-job,
# power off): such an image is used as it is, never built or customized here.
HOOKS = ("osgtest", "own")
# Families where osg-test is packaged (the OSG repositories build it for EL only). There a cell
# without a test command runs osg-test, as the reference does; elsewhere it is install-only: it
# passes when its packages install and the package manager's own check is clean.
OSG_TEST_FAMILIES = ("el",)
# The size (MiB) of a base image's disk, its root, when the catalog does not say: the local
# builder's (guest.debian_builder.DISK_SIZE_MB). A VM profile's `disk` beyond it is the cell's
# scratch disk (model.cell.scratch_size).
DEFAULT_IMAGE_SIZE_MB = 3072


@dataclass(frozen=True)
class Platform:
    id: str  # rocky_9.x86_64
    os: str  # rocky_9
    family: str  # el | debian
    distro: str  # rocky
    display: str  # Rocky
    major: int
    arch: str
    codename: str | None
    image: str  # path or URL of the base image
    image_format: str  # qcow2 | raw
    hook: str = "osgtest"  # one of HOOKS
    image_size: int = DEFAULT_IMAGE_SIZE_MB  # MiB: the image's disk (its root)

    @property
    def name(self) -> str:
        return f"{self.display} {self.major} ({self.arch})"

    @property
    def condor_arch(self) -> str:
        return CONDOR_ARCH[self.arch]

    @property
    def x86_64_level(self) -> int:
        return x86_64_level(self.family, self.major)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "os": self.os,
            "family": self.family,
            "distro": self.distro,
            "major": self.major,
            "arch": self.arch,
            "name": self.name,
            "codename": self.codename,
            "image": self.image,
            "image_format": self.image_format,
        }


def did_you_mean(word: str, choices, n: int = 3) -> str:
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


@dataclass(frozen=True)
class Catalog:
    platforms: dict = field(default_factory=dict)  # os id -> dict
    platform_defaults: dict = field(default_factory=dict)
    repos: dict = field(default_factory=dict)  # family -> {"setup_packages", "repos"}
    settings: dict = field(default_factory=dict)
    image_dir: str = ""

    @classmethod
    def load(cls, extra: list[Path] | tuple = (), image_dir: str | Path | None = None) -> Catalog:
        pdoc = _load_shipped("platforms.yaml")
        rdoc = _load_shipped("repositories.yaml")
        platforms = dict(pdoc["platforms"])
        defaults = dict(pdoc.get("defaults", {}))
        repos: dict[str, dict[str, Any]] = {
            fam: {"setup_packages": list(rdoc[fam]["setup_packages"]), "repos": dict(rdoc[fam]["repos"])}
            for fam in FAMILIES
        }
        settings = dict(rdoc["settings"])
        for path in extra:
            doc = yamlsrc.load(Path(path))
            data = doc.data or {}
            if not isinstance(data, dict):
                raise UserError("a catalog file must be a mapping", where=doc.where())
            known = {"defaults", "platforms", "settings", *FAMILIES}
            for k in data:
                if k not in known:
                    raise UserError(
                        f"unknown catalog section {k!r}",
                        where=doc.key_where(k),
                        hint=did_you_mean(k, known) or f"known sections: {', '.join(sorted(known))}",
                    )
            for os_id, entry in (data.get("platforms") or {}).items():
                _check_platform_entry(doc, os_id, entry)
                platforms[os_id] = entry
            _check_image_size(doc, ("defaults",), data.get("defaults") or {})
            defaults.update(data.get("defaults") or {})
            settings.update(data.get("settings") or {})
            for fam in FAMILIES:
                if fam in data:
                    section = data[fam] or {}
                    if "setup_packages" in section:
                        repos[fam]["setup_packages"] = list(section["setup_packages"])
                    repos[fam]["repos"].update(section.get("repos") or {})
        return cls(
            platforms=platforms,
            platform_defaults=defaults,
            repos=repos,
            settings=settings,
            image_dir=str(image_dir or default_image_dir()),
        )

    # -- platforms -----------------------------------------------------------------
    def platform_ids(self) -> list[str]:
        return [f"{os_id}.{arch}" for os_id, e in self.platforms.items() for arch in e["arches"]]

    def platform(self, platform_id: str) -> Platform:
        """Resolve `rocky_9.x86_64`; KeyError-free: raises UserError naming the known ids."""
        os_id, dot, arch = str(platform_id).rpartition(".")
        entry = self.platforms.get(os_id) if dot else None
        if entry is None or arch not in entry["arches"]:
            known = self.platform_ids()
            hint = did_you_mean(str(platform_id), known)
            raise UserError(
                f"unknown platform {platform_id!r}",
                hint=(hint + " " if hint else "") + "known platforms: " + ", ".join(known),
            )
        image = entry.get("image", self.platform_defaults.get("image", "{image_dir}/{platform}.qcow2"))
        fmt = entry.get("image_format", self.platform_defaults.get("image_format", "qcow2"))
        size = entry.get("image_size", self.platform_defaults.get("image_size", DEFAULT_IMAGE_SIZE_MB))
        return Platform(
            id=platform_id,
            os=os_id,
            family=entry["family"],
            distro=entry["distro"],
            display=entry["display"],
            major=int(entry["major"]),
            arch=arch,
            codename=entry.get("codename"),
            image=image.format(image_dir=self.image_dir, platform=platform_id, os=os_id, arch=arch),
            image_format=fmt,
            hook=entry.get("hook", "osgtest"),
            image_size=size,
        )

    # -- repositories --------------------------------------------------------------
    def repo_names(self, family: str) -> list[str]:
        return sorted(self.repos[family]["repos"])

    def knows_repo(self, family: str, name: str) -> bool:
        return name in self.repos[family]["repos"]

    def repo_hint(self, family: str, name: str) -> str:
        """What to say about `name`, a repository of `family` the catalog does not know."""
        return (
            did_you_mean(name, self.repo_names(family))
            or f"known {family} repositories: {', '.join(self.repo_names(family))}"
        )

    def resolve(self, platform: Platform, series: str, names: tuple[str, ...]) -> RepoSetup:
        """What the payload must do on `platform` to use repositories `names` of `series`."""
        fam = self.repos[platform.family]
        subst = {
            "series": series,
            "major": platform.major,
            "codename": platform.codename or "",
            "debian_mirror": self.settings.get("debian_mirror", ""),
            "debian_security_mirror": self.settings.get("debian_security_mirror", ""),
        }
        setup = tuple(p.format(**subst) for p in fam["setup_packages"])
        enable: list[str] = []
        apt: list[str] = []
        for name in names:
            # an EL id the catalog does not know is enabled as written (PASS_THROUGH_FAMILIES)
            entry = fam["repos"].get(name) or {"enable": [name]}
            for rid in entry.get("enable", []):
                if rid.format(**subst) not in enable:
                    enable.append(rid.format(**subst))
            for line in entry.get("apt_sources", []):
                if line.format(**subst) not in apt:
                    apt.append(line.format(**subst))
        return RepoSetup(setup_packages=setup, enable=tuple(enable), apt_sources=tuple(apt))

    def network_check_host(self, family: str) -> str:
        hosts = self.settings.get("network_check_host", {})
        return hosts.get(family, "") if isinstance(hosts, dict) else str(hosts)


def _load_shipped(name: str) -> dict:
    return yamlsrc.load(Path(str(resources.files("osgtest_dag") / "data" / name))).data


def _check_platform_entry(doc: yamlsrc.Document, os_id: str, entry) -> None:
    where = doc.where("platforms", os_id)
    if not isinstance(entry, dict):
        raise UserError(f"platform {os_id!r} must be a mapping", where=where)
    for req in ("family", "distro", "display", "major", "arches"):
        if req not in entry:
            raise UserError(
                f"platform {os_id!r} lacks {req!r}",
                where=where,
                hint="give family, distro, display, major and arches",
            )
    if entry["family"] not in FAMILIES:
        raise UserError(
            f"platform {os_id!r}: family must be one of {', '.join(FAMILIES)}",
            where=doc.where("platforms", os_id, "family"),
        )
    if entry.get("hook", "osgtest") not in HOOKS:
        raise UserError(
            f"platform {os_id!r}: hook must be one of {', '.join(HOOKS)}",
            where=doc.where("platforms", os_id, "hook"),
            hint="`own`: the image runs the IO disk's run-job itself (as the reference's images do)",
        )
    _check_image_size(doc, ("platforms", os_id), entry)
    for arch in entry["arches"]:
        if arch not in ARCHES:
            raise UserError(
                f"platform {os_id!r}: unknown arch {arch!r}",
                where=doc.where("platforms", os_id, "arches"),
                hint=f"known: {', '.join(ARCHES)}",
            )


def _check_image_size(doc: yamlsrc.Document, key: tuple, entry: dict) -> None:
    """`image_size`: the image's disk in MiB, a whole number (e.g. 10240 for a 10 GiB cloud image)."""
    size = entry.get("image_size", DEFAULT_IMAGE_SIZE_MB)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise UserError(
            f"image_size must be a positive whole number of MiB, not {size!r}",
            where=doc.where(*key, "image_size"),
            hint="the size of the image's disk, e.g. `qemu-img info` shows it",
        )
