"""Config loading: defaults, every kind of problem as one line with exit 2, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.cli import main
from syncd.config import DEFAULT_ADDRESS, load_config, parse_config
from syncd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch):
    for name in ("SYNCD_API_KEY_ID", "SYNCD_API_KEY", "VIAM_API_KEY_ID", "VIAM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def write(tmp_path: Path, text: str, name: str = "syncd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "part_id: abc\n"))
    assert cfg.part_id == "abc"
    assert cfg.cloud.address == DEFAULT_ADDRESS and cfg.cloud.tls
    assert cfg.cloud.host == "app.viam.com" and cfg.cloud.port == 443
    assert cfg.sync.file_quiet_period_s == 10
    assert cfg.sync.delete_after_upload is True
    assert cfg.capture_dir == Path("~/.viam/capture").expanduser()
    assert cfg.state_dir == Path("~/.local/state/syncd").expanduser()
    assert cfg.sync.max_request_bytes < 4 * 1024 * 1024


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, "part_id: a\ncapture_dir: cap\nstate_dir: st\n"))
    assert cfg.capture_dir == tmp_path / "cap"
    assert cfg.state_dir == tmp_path / "st"


def test_state_dir_from_systemd(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/syncd")
    assert load_config(write(tmp_path, "part_id: a\n")).state_dir == Path("/var/lib/syncd")


def test_example_config_is_valid():
    cfg = load_config(ROOT / "config.example.yaml")
    assert cfg.cloud.embedded
    assert cfg.received_dir == cfg.state_dir / "received"


def test_example_config_documents_every_key():
    import yaml

    from syncd.config import Config

    data = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    cfg = Config.__dataclass_fields__
    sections = {"cloud", "sync", "log", "disk", "failed", "metrics"}
    for name in cfg:
        if name in ("source", "warnings"):
            continue
        assert name in data, f"config.example.yaml lacks {name}"
    for section in sections:
        section_fields = cfg[section].default_factory.__dataclass_fields__
        assert set(data[section]) == set(section_fields), section


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "part_id: a\nsync:\n  concurency: 2\n",
            "sync.concurency: unknown key (did you mean 'concurrency'?)",
        ),
        ("part_id: a\nclod: {}\n", "clod: unknown key (did you mean 'cloud'?)"),
        (
            "part_id: a\nsync:\n  concurrency: two\n",
            "sync.concurrency: got 'two', expected an integer",
        ),
        (
            "part_id: a\nsync:\n  concurrency: 0\n",
            "sync.concurrency: got 0, expected an integer >= 1",
        ),
        ("part_id: a\nsync:\n  file_quiet_period_s: -1\n", "sync.file_quiet_period_s: got -1"),
        ("part_id: a\nsync:\n  retry_initial_s: 0\n", "sync.retry_initial_s: got 0"),
        ("part_id: a\ncloud:\n  tls: maybe\n", "cloud.tls: got 'maybe', expected true or false"),
        (
            "part_id: a\ncloud:\n  address: app.viam.com\n",
            "cloud.address: got 'app.viam.com', the port is missing",
        ),
        (
            "part_id: a\ncloud:\n  address: host:99999\n",
            "cloud.address: got 'host:99999', expected host:port",
        ),
        ("capture_dir: /x\n", "part_id: missing, this key is required"),
        ("part_id: ''\n", "part_id: got '', expected a non-empty string"),
        ("part_id: a\ncloud:\n  api_key: s3cret\n", "cloud.api_key_id: missing"),
        (
            "part_id: a\nsync:\n  tags: a\n",
            "sync.tags: got 'a', expected a list of non-empty strings",
        ),
        ("part_id: a\nsync:\n  windows: ['25:00-01:00']\n", "sync.windows: got '25:00-01:00'"),
        ("part_id: a\nlog:\n  level: loud\n", "log.level: got 'loud', expected one of debug"),
        ("part_id: a\ndisk:\n  max_used_fraction: 1.5\n", "disk.max_used_fraction: got 1.5"),
        ("part_id: a\nsync: 3\n", "sync: got 3, expected a mapping of keys"),
        ("- a\n- b\n", "top level: got ['a', 'b'], expected a mapping of keys"),
        ("part_id: a\nsync:\n  retry_initial_s: 10\n  retry_max_s: 5\n", "sync.retry_max_s: got 5"),
        (
            "part_id: a\nadditional_sync_paths: /x\n",
            "additional_sync_paths: got '/x', expected a list of paths",
        ),
        ("part_id: a\nmetrics:\n  listen: 9464\n", "metrics.listen: got 9464, expected host:port"),
    ],
)
def test_each_problem_is_one_line_naming_the_key(tmp_path, text, needle):
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    assert needle in problems[0]
    assert problems[0].startswith(str(tmp_path / "syncd.yaml") + ": ")
    assert "\n" not in problems[0]


def test_all_problems_reported_together(tmp_path):
    problems = problems_of(tmp_path, "sync:\n  concurrency: 0\ncloud:\n  tls: 1\n")
    assert len(problems) == 3
    assert any("part_id" in p for p in problems)


def test_yaml_syntax_error_names_the_line(tmp_path):
    problems = problems_of(tmp_path, "part_id: a\nsync:\n  tags: [a\n  b: c\n")
    assert len(problems) == 1
    assert "YAML syntax error" in problems[0]
    assert problems[0].startswith(f"{tmp_path / 'syncd.yaml'}:4:")


def test_missing_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_api_key_from_file_and_environment(tmp_path, monkeypatch):
    keyfile = tmp_path / "key"
    keyfile.write_text("from-file\n")
    keyfile.chmod(0o600)
    text = f"part_id: a\ncloud:\n  api_key_id: id1\n  api_key_file: {keyfile}\n"
    cfg = load_config(write(tmp_path, text))
    assert (cfg.cloud.api_key_id, cfg.cloud.api_key) == ("id1", "from-file")
    assert "from-file" not in repr(cfg)
    monkeypatch.setenv("VIAM_API_KEY_ID", "viam-id")
    monkeypatch.setenv("VIAM_API_KEY", "viam-key")
    cfg = load_config(write(tmp_path, text))
    assert (cfg.cloud.api_key_id, cfg.cloud.api_key) == ("viam-id", "viam-key")
    monkeypatch.setenv("SYNCD_API_KEY_ID", "syncd-id")
    monkeypatch.setenv("SYNCD_API_KEY", "syncd-key")
    cfg = load_config(write(tmp_path, text))
    assert (cfg.cloud.api_key_id, cfg.cloud.api_key) == ("syncd-id", "syncd-key")


def test_unreadable_key_file(tmp_path):
    text = f"part_id: a\ncloud:\n  api_key_id: i\n  api_key_file: {tmp_path / 'missing'}\n"
    (problem,) = problems_of(tmp_path, text)
    assert "cloud.api_key_file: cannot read" in problem


def test_world_readable_key_warns(tmp_path):
    path = write(tmp_path, "part_id: a\ncloud:\n  api_key_id: i\n  api_key: k\n")
    path.chmod(0o644)
    cfg = load_config(path)
    assert any("readable by other users" in w for w in cfg.warnings)
    path.chmod(0o600)
    assert not load_config(path).warnings


def test_plaintext_key_to_remote_host_refused(tmp_path):
    base = "part_id: a\ncloud:\n  api_key_id: i\n  api_key: k\n  tls: false\n"
    (problem,) = problems_of(tmp_path, base + "  address: robots.example.com:8080\n")
    assert "cloud.tls" in problem and "plaintext" in problem
    assert load_config(write(tmp_path, base + "  address: 127.0.0.1:8080\n"))
    allowed = base + "  address: robots.example.com:8080\n  allow_insecure: true\n"
    assert load_config(write(tmp_path, allowed)).cloud.allow_insecure


def test_parse_config_without_file():
    cfg = parse_config("part_id: z\nsync:\n  tags: [a, a, b]\n")
    assert cfg.sync.tags == ("a", "b")


def test_check_config_cli(tmp_path, capsys):
    path = write(tmp_path, "part_id: p1\ncloud:\n  api_key_id: kid\n  api_key: TOPSECRET\n")
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "p1" in out and "kid" in out and "TOPSECRET" not in out
    bad = write(tmp_path, "part_id: p1\nsync:\n  concurrency: -2\n", "bad.yaml")
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sync.concurrency" in err[0]


def test_cli_subprocess_exit_2_without_traceback(tmp_path, syncd_cmd):
    bad = write(tmp_path, "part_id: [1\n")
    result = subprocess.run(
        [*syncd_cmd, "check-config", "-c", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_version(syncd_cmd):
    from syncd import __version__

    result = subprocess.run([*syncd_cmd, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"syncd {__version__}"
    assert os.environ.get("PYTHONPATH") is None or True
    assert sys.executable
