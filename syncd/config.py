"""The YAML configuration: loaded once into frozen dataclasses and passed down.

Every problem becomes one plain line naming the file, the key path, the value and what
was expected; all problems of a file are reported together (``ConfigError.problems``).
Relative paths are resolved against the folder holding the config file.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from syncd.errors import ConfigError

DEFAULT_ADDRESS = "app.viam.com:443"
EMBEDDED = "embedded"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "text", "json", "journal")
THIN_STRATEGIES = ("every_nth", "oldest_first")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def _opt(default: Any, kind: str, doc: str = "", **rules: Any) -> Any:
    """A config option: its default, its kind (how it is checked) and extra rules."""
    meta = {"kind": kind, "doc": doc, **rules}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for defaults")
    return field(default=default, metadata=meta)


def _default_state_dir() -> str:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere follow XDG.
    return os.environ.get("STATE_DIRECTORY") or "~/.local/state/syncd"


@dataclass(frozen=True)
class CloudConfig:
    address: str = _opt(DEFAULT_ADDRESS, "address")
    tls: bool = _opt(True, "bool")
    ca_file: Path | None = _opt(None, "path?")
    api_key_id: str | None = _opt(None, "str?")
    api_key: str | None = field(default=None, repr=False, metadata={"kind": "str?"})
    api_key_file: Path | None = _opt(None, "path?")
    allow_insecure: bool = _opt(False, "bool")
    connect_timeout_s: float = _opt(10.0, "float", gt=0)
    call_timeout_s: float = _opt(60.0, "float", gt=0)

    @property
    def embedded(self) -> bool:
        return self.address == EMBEDDED

    @property
    def host(self) -> str:
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        return split_address(self.address)[1]


@dataclass(frozen=True)
class SyncConfig:
    concurrency: int = _opt(16, "int", ge=1, le=256)
    file_quiet_period_s: float = _opt(10.0, "float", ge=0)
    tags: tuple[str, ...] = _opt((), "strs")
    delete_after_upload: bool = _opt(True, "bool")
    retry_initial_s: float = _opt(1.0, "float", gt=0)
    retry_max_s: float = _opt(300.0, "float", gt=0)
    call_attempts: int = _opt(3, "int", ge=1, le=20)
    batch_max_readings: int = _opt(1000, "int", ge=1)
    max_request_bytes: int = _opt(2 * 1024 * 1024, "int", ge=64 * 1024, le=64 * 1024 * 1024)
    chunk_bytes: int = _opt(64 * 1024, "int", ge=1024, le=16 * 1024 * 1024)
    scan_interval_s: float = _opt(300.0, "float", gt=0)
    prog_recover_age_s: float = _opt(600.0, "float", ge=0)
    max_bytes_per_s: int = _opt(0, "int", ge=0)
    windows: tuple[str, ...] = _opt((), "windows")


@dataclass(frozen=True)
class LogConfig:
    level: str = _opt("info", "choice", choices=LOG_LEVELS)
    format: str = _opt("auto", "choice", choices=LOG_FORMATS)
    summary_interval_s: float = _opt(60.0, "float", ge=0)


@dataclass(frozen=True)
class DiskConfig:
    max_used_fraction: float = _opt(0.9, "float", gt=0, le=1)
    thin_every_nth: int = _opt(5, "int", ge=1)
    strategy: str = _opt("every_nth", "choice", choices=THIN_STRATEGIES)
    check_interval_s: float = _opt(30.0, "float", gt=0)


@dataclass(frozen=True)
class FailedConfig:
    max_age_days: float = _opt(30.0, "float", ge=0)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = _opt(None, "address?")


@dataclass(frozen=True)
class Config:
    part_id: str = _opt(MISSING, "str")
    capture_dir: Path = _opt("~/.viam/capture", "path")
    state_dir: Path = _opt(None, "path")
    additional_sync_paths: tuple[Path, ...] = _opt((), "paths")
    cloud: CloudConfig = field(default_factory=CloudConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    log: LogConfig = field(default_factory=LogConfig)
    disk: DiskConfig = field(default_factory=DiskConfig)
    failed: FailedConfig = field(default_factory=FailedConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: Path | None = field(default=None, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def sync_paths(self) -> tuple[Path, ...]:
        """Every folder the watcher covers: the capture dir first."""
        return (self.capture_dir, *self.additional_sync_paths)

    @property
    def received_dir(self) -> Path:
        """Where the embedded receiver stores uploads."""
        return self.state_dir / "received"

    def summary_lines(self) -> list[str]:
        """A short description without secrets, for logs and check-config."""
        cloud = self.cloud
        if cloud.embedded:
            target = f"embedded receiver storing into {self.received_dir}"
        else:
            target = f"{cloud.address} ({'TLS' if cloud.tls else 'plaintext'})"
        auth = f"API key {cloud.api_key_id}" if cloud.api_key else "none"
        tags = ", ".join(self.sync.tags) or "none"
        lines = [
            f"part_id: {self.part_id}",
            f"capture_dir: {self.capture_dir}",
        ]
        lines += [f"additional_sync_path: {p}" for p in self.additional_sync_paths]
        lines += [
            f"state_dir: {self.state_dir}",
            f"upload to: {target}",
            f"auth: {auth}",
            f"concurrency: {self.sync.concurrency}, quiet period: "
            f"{self.sync.file_quiet_period_s:g} s, delete after upload: "
            f"{'yes' if self.sync.delete_after_upload else 'no'}",
            f"tags: {tags}",
        ]
        return lines


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into host and port."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- validation ---------------------------------------------------------------------


class _Checker:
    """Collects problems while turning plain YAML values into typed values."""

    def __init__(self, source: str, base: Path):
        self.source = source
        self.base = base
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.source}: {key}: {message}")

    def build(self, cls: type, data: Any, prefix: str) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            where = prefix.rstrip(".") or "top level"
            self.problem(where, f"got {_show(data)}, expected a mapping of keys")
            if not prefix:
                return None
            data = {}
        known = {f.name: f for f in fields(cls) if f.name not in ("source", "warnings")}
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(str(key), list(known), n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.problem(f"{prefix}{key}", f"unknown key{suggestion}")
        values: dict[str, Any] = {}
        for name, f in known.items():
            key = f"{prefix}{name}"
            if f.default_factory is not MISSING and is_dataclass(f.default_factory):
                values[name] = self.build(f.default_factory, data.get(name), f"{key}.")
                continue
            if name not in data or (data[name] is None and f.default is not MISSING):
                if f.default is MISSING:
                    self.problem(key, "missing, this key is required")
                elif f.metadata["kind"] == "path":
                    values[name] = self._check_path(key, f.default, f.metadata)
                continue
            checked = self.check(key, data[name], f.metadata)
            if checked is not _BAD:
                values[name] = checked
        try:
            return cls(**values)
        except TypeError:
            return None  # a required key is missing; already reported

    def check(self, key: str, value: Any, meta: Any) -> Any:
        kind: str = meta["kind"]
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        if optional and value is None:
            return None
        checker = getattr(self, f"_check_{kind}")
        return checker(key, value, meta)

    def _bad(self, key: str, value: Any, expected: str) -> object:
        self.problem(key, f"got {_show(value)}, expected {expected}")
        return _BAD

    def _check_bool(self, key: str, value: Any, meta: Any) -> Any:
        return value if isinstance(value, bool) else self._bad(key, value, "true or false")

    def _check_int(self, key: str, value: Any, meta: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return self._bad(key, value, f"an integer{_range_text(meta)}")
        return self._in_range(key, value, meta, "an integer")

    def _check_float(self, key: str, value: Any, meta: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._bad(key, value, f"a number{_range_text(meta)}")
        if value != value or value in (float("inf"), float("-inf")):
            return self._bad(key, value, "a finite number")
        return self._in_range(key, float(value), meta, "a number")

    def _in_range(self, key: str, value: float, meta: Any, noun: str) -> Any:
        ok = (
            ("gt" not in meta or value > meta["gt"])
            and ("ge" not in meta or value >= meta["ge"])
            and ("le" not in meta or value <= meta["le"])
        )
        return value if ok else self._bad(key, value, f"{noun}{_range_text(meta)}")

    def _check_str(self, key: str, value: Any, meta: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            return self._bad(key, value, "a non-empty string")
        return value.strip()

    def _check_choice(self, key: str, value: Any, meta: Any) -> Any:
        choices = meta["choices"]
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        return self._bad(key, value, "one of " + ", ".join(choices))

    def _check_strs(self, key: str, value: Any, meta: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return self._bad(key, value, "a list of non-empty strings")
        return tuple(dict.fromkeys(value))

    def _check_path(self, key: str, value: Any, meta: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            return self._bad(key, value, "a path")
        path = Path(os.path.expandvars(value.strip())).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()

    def _check_paths(self, key: str, value: Any, meta: Any) -> Any:
        if not isinstance(value, list):
            return self._bad(key, value, "a list of paths")
        paths = [self._check_path(f"{key}[{i}]", v, meta) for i, v in enumerate(value)]
        return _BAD if _BAD in paths else tuple(paths)

    def _check_address(self, key: str, value: Any, meta: Any) -> Any:
        if value == EMBEDDED and key == "cloud.address":
            return value
        expected = "host:port, e.g. app.viam.com:443" + (
            " or 'embedded'" if key == "cloud.address" else ""
        )
        if not isinstance(value, str) or ":" not in value:
            if isinstance(value, str) and value:
                self.problem(key, f"got {_show(value)}, the port is missing (expected {expected})")
                return _BAD
            return self._bad(key, value, expected)
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return self._bad(key, value, expected)
        return value

    def _check_windows(self, key: str, value: Any, meta: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return self._bad(key, value, 'a list of time windows like "22:00-06:00"')
        for item in value:
            if not isinstance(item, str) or not _WINDOW.match(item.replace(" ", "")):
                return self._bad(key, item, 'a time window like "22:00-06:00" (24-hour HH:MM)')
        return tuple(v.replace(" ", "") for v in value)


_BAD = object()


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    if value is None:
        text = "nothing"
    return text if len(text) <= 60 else text[:57] + "..."


def _range_text(meta: Any) -> str:
    parts = []
    if "gt" in meta:
        parts.append(f"> {meta['gt']:g}")
    if "ge" in meta:
        parts.append(f">= {meta['ge']:g}")
    if "le" in meta:
        parts.append(f"<= {meta['le']:g}")
    return (" " + " and ".join(parts)) if parts else ""


# --- loading ------------------------------------------------------------------------


def parse_config(text: str, source: str = "config", base: Path | None = None) -> Config:
    """Parse and validate YAML text; raises ConfigError listing every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}: YAML syntax error: {reason}"]) from None
    checker = _Checker(source, base or Path.cwd())
    if data is None:
        data = {}
    if isinstance(data, dict) and data.get("state_dir") is None:
        data = {**data, "state_dir": _default_state_dir()}
    cfg = checker.build(Config, data, "")
    problems = checker.problems
    if cfg is None or problems:
        raise ConfigError(problems or [f"{source}: the configuration is empty"])
    cfg = _apply_secrets(cfg, checker)
    if checker.problems:
        raise ConfigError(checker.problems)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and resolve a config file; raises ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: config file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{p}: is a directory, expected a YAML config file"]) from None
    except PermissionError:
        raise ConfigError([f"{p}: config file is not readable (permission denied)"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: config file is not UTF-8 text"]) from None
    cfg = parse_config(text, source=str(p), base=p.resolve().parent)
    warnings = list(cfg.warnings)
    if cfg.cloud.api_key and _readable_by_others(p) and _mentions_key(text):
        warnings.append(
            f"{p}: holds cloud.api_key but is readable by other users; "
            f"run: chmod 600 {p} (or use cloud.api_key_file)"
        )
    return replace(cfg, source=p, warnings=tuple(warnings))


def _mentions_key(text: str) -> bool:
    return re.search(r"^\s*api_key\s*:", text, flags=re.MULTILINE) is not None


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _apply_secrets(cfg: Config, checker: _Checker) -> Config:
    """Fill the API key from the file or the environment (environment wins)."""
    cloud = cfg.cloud
    key_id, key = cloud.api_key_id, cloud.api_key
    warnings = list(cfg.warnings)
    if cloud.api_key_file is not None:
        if key is not None:
            checker.problem("cloud.api_key_file", "set together with cloud.api_key; keep one")
        try:
            key = cloud.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            checker.problem(
                "cloud.api_key_file", f"cannot read {cloud.api_key_file}: {exc.strerror}"
            )
        else:
            if not key:
                checker.problem("cloud.api_key_file", f"{cloud.api_key_file} is empty")
            if _readable_by_others(cloud.api_key_file):
                warnings.append(
                    f"cloud.api_key_file: {cloud.api_key_file} is readable by other users; "
                    f"run: chmod 600 {cloud.api_key_file}"
                )
    for prefix in ("VIAM", "SYNCD"):  # SYNCD_* wins over VIAM_*
        key_id = os.environ.get(f"{prefix}_API_KEY_ID") or key_id
        key = os.environ.get(f"{prefix}_API_KEY") or key
    if key and not key_id:
        checker.problem("cloud.api_key_id", "missing: an API key needs its api_key_id")
    if key_id and not key and cloud.api_key_file is None:
        checker.problem("cloud.api_key", f"missing: api_key_id {key_id!r} is set without a key")
    if cfg.sync.retry_max_s < cfg.sync.retry_initial_s:
        checker.problem(
            "sync.retry_max_s",
            f"got {cfg.sync.retry_max_s:g}, expected a number >= sync.retry_initial_s "
            f"({cfg.sync.retry_initial_s:g})",
        )
    if cfg.sync.chunk_bytes > cfg.sync.max_request_bytes:
        checker.problem(
            "sync.chunk_bytes",
            f"got {cfg.sync.chunk_bytes}, expected at most sync.max_request_bytes "
            f"({cfg.sync.max_request_bytes})",
        )
    if key and not cloud.embedded and not cloud.tls and not cloud.allow_insecure:
        host = cloud.host
        if not is_loopback(host):
            checker.problem(
                "cloud.tls",
                f"false with an API key for {host}: the key would cross the network in "
                "plaintext; enable TLS or set cloud.allow_insecure: true",
            )
    cloud = replace(cloud, api_key_id=key_id, api_key=key)
    return replace(cfg, cloud=cloud, warnings=tuple(warnings))
