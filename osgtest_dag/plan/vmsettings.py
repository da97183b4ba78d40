"""A VM's resources as parameter files write them (`vm:`, `vm_per_platform:`, a cluster role's
`vm:`): memory and disk as MiB or sizes such as `4GB`, vcpus as a count.
"""

from __future__ import annotations

import re

from osgtest_dag.base import yamlsrc
from osgtest_dag.base.errors import UserError
from osgtest_dag.plan.catalog import did_you_mean

VM_KEYS = ("memory", "vcpus", "disk")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[KMGT])?\s*$", re.IGNORECASE)
_FACTOR = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mb(value) -> int:
    """`2048`, `"2048M"`, `"2GB"`, `"2 GiB"` -> MiB. Plain numbers are MiB."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size")
    unit = (m.group(2) or "").upper()[:1]
    mb = int(float(m.group(1)) * _FACTOR[unit])
    if mb <= 0:
        raise ValueError("must be positive")
    return mb


def vm_overrides(doc: yamlsrc.Document, key: tuple, value) -> dict:
    if not isinstance(value, dict):
        raise UserError("VM settings must be a mapping of memory, vcpus, disk", where=doc.where(*key))
    out = {}
    for k, v in value.items():
        where = doc.where(*key, k)
        if k not in VM_KEYS:
            raise UserError(
                f"unknown VM setting {k!r}",
                where=doc.key_where(*key, k),
                hint=did_you_mean(str(k), VM_KEYS) or f"known: {', '.join(VM_KEYS)}",
            )
        if k == "vcpus":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 256:
                raise UserError("'vcpus' must be a whole number from 1 to 256", where=where)
            out[k] = v
        else:
            try:
                out[k] = parse_size_mb(v)
            except ValueError as e:
                raise UserError(
                    f"bad {k} size: {e}", where=where, hint="a number of MiB or a size such as 4GB"
                ) from None
    return out
