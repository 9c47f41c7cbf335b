"""The managed overlay: upstreams and aliases the console writes, beside the operator's YAML.

The config file stays the operator's and is never rewritten, so its comments and layout
survive; what the console and the admin API add, change, disable or remove is kept in
``nobusy.managed.yaml`` (``managed_file``), merged over the file entry by entry whenever
settings are built (``nobusy.settings.load_settings``, so ``nobusy check`` sees it too). An
overlay entry adds an upstream or alias, or replaces the keys it names of one the file
defines (``{enabled: false}`` disables it and changes nothing else); ``null`` removes one.
The file is written whole and atomically (a temporary file renamed over the old one), so a
reader, another worker or replica included, never sees half of it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nobusy.errors import ConfigError

__all__ = [
    "MANAGED_NAME",
    "SECTIONS",
    "merge_overlay",
    "overlay_path",
    "read_raw",
    "sections",
    "write",
]

MANAGED_NAME = "nobusy.managed.yaml"
SECTIONS = ("upstreams", "models")

_HEADER = (
    "# Written by nobusy (the console's Upstreams page and /v1/nobusy/upstreams, /aliases).\n"
    "# Merged over the config file entry by entry; `null` removes an entry. Edit the config\n"
    "# file for anything else: this file is rewritten whole on every change.\n"
)


def overlay_path(config_file: Path | str | None, merged: Mapping[str, Any]) -> Path:
    """``managed_file`` when set, else ``nobusy.managed.yaml`` beside the config file, else
    in the data dir (``merged``: the settings read so far, env and flags included)."""
    given = merged.get("managed_file")
    if given:
        return Path(str(given))
    if config_file:
        return Path(config_file).parent / MANAGED_NAME
    return Path(str(merged.get("data_dir") or "data")) / MANAGED_NAME


def sections(raw: Mapping[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """The overlay's sections, from the file read as the config is (``${VAR}`` resolved)."""
    out: dict[str, dict[str, Any]] = {}
    for key, section in raw.items():
        if key not in SECTIONS:
            raise ConfigError(
                f"{path}: '{key}' cannot be set here; the managed file holds only "
                f"{' and '.join(SECTIONS)} (set the rest in the config file)"
            )
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: {key} must be a mapping of names to entries")
        out[str(key)] = {str(name): value for name, value in section.items()}
    return out


def read_raw(path: Path) -> dict[str, dict[str, Any]]:
    """The overlay as written, ``${VAR}`` references unresolved: what an edit starts from, so
    that writing it back never puts a variable's value (a secret) into the file."""
    if not path.exists():
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return sections(raw, path)


def merge_overlay(merged: dict[str, Any], overlay: Mapping[str, Mapping[str, Any]]) -> None:
    """Apply ``overlay`` to the settings read from the file (in place)."""
    for section in SECTIONS:
        changes = overlay.get(section)
        if not changes:
            continue
        base = merged.get(section) or {}
        if not isinstance(base, dict):
            continue  # the file's own error is said when the section is parsed
        base = dict(base)
        for name, value in changes.items():
            before = base.get(name)
            if value is None:
                base.pop(name, None)
            elif isinstance(value, dict) and before is not None:
                if section == "models" and not isinstance(before, dict):
                    before = {"routes": before}  # the short form: a list of routes
                base[name] = {**before, **value} if isinstance(before, dict) else value
            else:
                base[name] = value
        merged[section] = base


def write(path: Path, overlay: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the overlay file atomically: a temporary file in the same directory, synced,
    then renamed over the old one (a rename within a file system is atomic)."""
    data = {section: dict(overlay[section]) for section in SECTIONS if overlay.get(section)}
    text = _HEADER + (yaml.safe_dump(data, sort_keys=True, allow_unicode=True) if data else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o600)  # it may hold upstream keys (encrypted when a data key exists)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
