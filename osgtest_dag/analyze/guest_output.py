"""What a guest leaves in its output directory, read with caps and without following links:
phase durations from result.json, package lists (dpkg or rpm), the base image's stamp."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from osgtest_dag.model.documents import GuestResult, read_bytes_nofollow

LOG_READ_CAP = 64 << 20  # bytes of one log we parse (extraction caps them anyway)
PACKAGE_LIST_CAP = 16 << 20
ARCHES = ("x86_64", "aarch64", "i686", "noarch", "amd64", "arm64", "i386", "all")


def read_text(path: Path, cap: int) -> str:
    return read_bytes_nofollow(path, cap).decode("utf-8", errors="replace")


def parse_time(value) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def durations(guest: GuestResult) -> dict:
    """Seconds per phase (and `total`) from result.json's timestamps."""
    out: dict[str, float] = {}
    for p in guest.phases:
        a, b = parse_time(p.start), parse_time(p.end)
        if a and b:
            out[p.name] = round((b - a).total_seconds(), 1)
    a, b = parse_time(guest.started), parse_time(guest.finished)
    if a and b:
        out["total"] = round((b - a).total_seconds(), 1)
    return out


_NVRA = re.compile(r"^(?P<name>.+)-(?P<ver>[^-]+)-(?P<rel>[^-]+)\.(?P<arch>[^.]+)$")


def parse_package_list(text: str) -> dict[str, str]:
    """Installed packages -> version. Reads what the payload writes (`name<TAB>version<TAB>arch`
    from dpkg-query or rpm, `(none):` epochs dropped), two-column `dpkg-query -W` output, and
    plain `rpm -qa` NEVRA lines. A name seen with two architectures is kept as `name.arch`."""
    seen: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) >= 2:
            name, version = parts[0].strip(), parts[1].strip()
            arch = parts[2].strip() if len(parts) > 2 else ""
        else:
            m = _NVRA.match(line)
            if not m:
                continue
            name, version, arch = m["name"], f"{m['ver']}-{m['rel']}", m["arch"]
        for prefix in ("(none):", "0:"):
            if version.startswith(prefix):
                version = version[len(prefix) :]
        name = name.split(":")[0] if ":" in name and arch else name  # dpkg's name:arch
        seen.setdefault(name, []).append((arch, version))
    out: dict[str, str] = {}
    for name, variants in seen.items():
        if len({a for a, _ in variants}) > 1:
            for arch, version in variants:
                out[f"{name}.{arch}"] = version
        else:
            out[name] = variants[-1][1]
    return out


def package_changes(start: dict[str, str], end: dict[str, str]) -> dict[str, str]:
    """What the cell installed or changed: packages at the end that are new or differ."""
    return {n: v for n, v in sorted(end.items()) if start.get(n) != v}


def image_stamp(environment_log: str) -> dict:
    """The `== image` section of environment.log: the base image's /etc/osgtest-image-release."""
    m = re.search(r"^== image\n(.*?)(?:\n== |\Z)", environment_log, re.S | re.M)
    if not m:
        return {}
    out = {}
    for line in m[1].splitlines():
        k, sep, v = line.partition("=")
        if sep and re.fullmatch(r"[a-z_]+", k):
            out[k] = v.strip()
    return out


def package_summary(out_dir: Path, package_set: list[str]) -> dict:
    """The package set's versions at the end, and what the cell installed or changed."""
    lists = {}
    for which in ("start", "end"):
        p = out_dir / f"packages-{which}.txt"
        if p.is_file() and not p.is_symlink():
            try:
                lists[which] = parse_package_list(read_text(p, PACKAGE_LIST_CAP))
            except OSError:
                pass
    end = lists.get("end") or {}
    start = lists.get("start") or {}
    wanted = {}
    for name in package_set:
        for key in (name, *(f"{name}.{arch}" for arch in ARCHES)):
            if key in end:
                wanted[key] = end[key]
    return {
        "package_versions": wanted,
        "packages_installed": package_changes(start, end) if "end" in lists else {},
    }
