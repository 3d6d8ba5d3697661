"""The sink's settings: a small YAML file and/or command-line flags, checked into one frozen object.

Keys (flags of the same name override the file)::

    listen: 0.0.0.0:8080          # HOST:PORT ([v6]:PORT for IPv6); port 0 picks a free one
    store: /var/lib/syncd-sink    # relative paths are relative to the config file
    api_key_id: ...               # optional; with api_key (or api_key_file) clients must
    api_key: ...                  #   authenticate; never logged
    api_key_file: /etc/syncd/sink.key
    max_message_bytes: 64MiB      # one gRPC message (Viam's SDK sends a file in one)
    max_upload_bytes: 10GiB       # one upload's payload
    min_free_bytes: 64MiB         # free space the store always keeps
    log_level: info               # debug logs one line per upload
    organization_id: ...          # optional: what the data API reports as the data's
    location_id: ...              #   organization, location, robot and part name, and
    robot_id: ...                 #   filters by (unset: "" reported, any value matches)
    robot_name: ...
    part_name: ...

Every problem is one line naming where it is (file and key, or flag) and what was expected;
all problems are raised together as :class:`~syncd.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syncd.errors import ConfigError
from syncd.sink import DEFAULT_MAX_MESSAGE_BYTES
from syncd.sink_index_types import CaptureIdentity
from syncd.sink_store import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MIN_FREE_BYTES

LOG_LEVELS = ("debug", "info", "warning", "error")
IDENTITY_KEYS = ("organization_id", "location_id", "robot_id", "robot_name", "part_name")
KEYS = (
    "listen",
    "store",
    "api_key_id",
    "api_key",
    "api_key_file",
    "max_message_bytes",
    "max_upload_bytes",
    "min_free_bytes",
    "log_level",
    *IDENTITY_KEYS,
)
MIN_MESSAGE_BYTES = 4 * 1024**2  # syncd's own chunks are up to 1 MiB plus framing
MAX_MESSAGE_BYTES = 2**32 - 1  # the gRPC length prefix is 32 bits
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class SinkConfig:
    host: str
    port: int
    store: Path
    api_key_id: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    log_level: str = "info"
    identity: CaptureIdentity = field(default_factory=CaptureIdentity)


def load_sink_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> SinkConfig:
    """Read ``path`` (optional), apply ``overrides`` (flag values; None = not given), check."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    base = Path.cwd()
    if path is not None:
        base = Path(path).absolute().parent
        for key, value in _read_file(Path(path), problems).items():
            values[key] = value
            where[key] = f"{path}: {key}"
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in KEYS:
            raise ValueError(f"unknown sink setting {key!r}")
        # a secret given on the command line replaces whichever form the file used
        for twin in {"api_key": ("api_key_file",), "api_key_file": ("api_key",)}.get(key, ()):
            values.pop(twin, None)
        values[key] = value
        where[key] = "--" + key.replace("_", "-")
    cfg = _check(values, where, base, problems)
    if problems or cfg is None:
        raise ConfigError(problems)
    return cfg


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}")
        return {}
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        problems.append(f"{path}: expected a mapping of sink settings, got {type(doc).__name__}")
        return {}
    out = {}
    for key, value in doc.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(KEYS)}"
            problems.append(f"{path}: unknown key {key!r}{hint}")
            continue
        out[key] = value
    return out


def _check(
    values: dict[str, Any], where: dict[str, str], base: Path, problems: list[str]
) -> SinkConfig | None:
    def bad(key: str, message: str) -> None:
        problems.append(f"{where.get(key, key)}: {message}")

    host, port = "", 0
    listen = values.get("listen")
    if listen is None:
        problems.append("listen: required (HOST:PORT, in the config file or as --listen)")
    else:
        parsed = _parse_listen(listen)
        if parsed is None:
            bad("listen", f"{listen!r} is not HOST:PORT with a port from 0 to 65535")
        else:
            host, port = parsed

    store: Path | None = None
    raw_store = values.get("store")
    if raw_store is None:
        problems.append("store: required (a folder, in the config file or as --store)")
    elif not isinstance(raw_store, str) or not raw_store.strip():
        bad("store", f"{raw_store!r} is not a folder path")
    else:
        store = _resolve(raw_store, where["store"], base)
        if store.exists() and not store.is_dir():
            bad("store", f"{str(store)!r} exists and is not a folder")

    sizes: dict[str, int] = {}
    for key, lo, hi in (
        ("max_message_bytes", MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES),
        ("max_upload_bytes", 1, None),
        ("min_free_bytes", 0, None),
    ):
        if key not in values:
            continue
        size = _parse_size(values[key])
        if size is None:
            bad(key, f"{values[key]!r} is not a size in bytes (e.g. 67108864 or '64MiB')")
        elif size < lo or (hi is not None and size > hi):
            limit = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            bad(key, f"{values[key]!r} is out of range: expected {limit} bytes")
        else:
            sizes[key] = size

    level = values.get("log_level", "info")
    if level not in LOG_LEVELS:
        bad("log_level", f"{level!r} is not one of {', '.join(LOG_LEVELS)}")

    key_id = _optional_str(values, "api_key_id", bad)
    api_key = _optional_str(values, "api_key", bad)
    if "api_key_file" in values:
        if "api_key" in values:
            bad("api_key_file", "give api_key or api_key_file, not both")
        else:
            api_key = _read_key_file(values["api_key_file"], where["api_key_file"], base, bad)
    if bool(key_id) != bool(api_key) and not problems:
        missing = "api_key (or api_key_file)" if key_id else "api_key_id"
        problems.append(f"{missing}: required when {'api_key_id' if key_id else 'api_key'} is set")

    identity = {}
    for key in IDENTITY_KEYS:
        value = values.get(key, "")
        if not isinstance(value, str):
            bad(key, f"{value!r} is not a string")
        else:
            identity[key] = value.strip()

    if problems or store is None:
        return None
    return SinkConfig(
        host=host,
        port=port,
        store=store,
        api_key_id=key_id,
        api_key=api_key,
        log_level=level,
        identity=CaptureIdentity(**identity),
        **sizes,
    )


def _resolve(raw: str, where: str, base: Path) -> Path:
    # paths from the file are relative to the file; paths from flags to the current folder
    path = Path(raw).expanduser()
    return path if path.is_absolute() or where.startswith("--") else (base / path)


def _parse_listen(value: Any) -> tuple[str, int] | None:
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", value.strip())
    if not match:
        return None
    host = match[1] or match[3]
    port = int(match[2] or match[4])
    return (host, port) if port <= 65535 else None


def _parse_size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    match = _SIZE.match(value)
    if not match or match[2].lower() not in _UNITS:
        return None
    return int(float(match[1]) * _UNITS[match[2].lower()])


def _optional_str(values: dict[str, Any], key: str, bad: Any) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        # never echo what may be a secret
        bad(key, "expected a non-empty string")
        return None
    return value.strip()


def _read_key_file(raw: Any, where: str, base: Path, bad: Any) -> str | None:
    if not isinstance(raw, str) or not raw.strip():
        bad("api_key_file", f"{raw!r} is not a file path")
        return None
    path = _resolve(raw, where, base)
    try:
        key = path.read_text().strip()
    except OSError as exc:
        bad("api_key_file", f"cannot read {str(path)!r}: {exc.strerror}")
        return None
    if not key:
        bad("api_key_file", f"{str(path)!r} is empty")
        return None
    return key
