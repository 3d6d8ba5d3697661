"""The ``syncd`` command: one small function per subcommand.

Every subcommand exits 2 on a configuration problem (one line per problem on stderr) and
1 on any other user-facing error (one line); tracebacks are reserved for real bugs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from syncd import __version__
from syncd.errors import ConfigError, SyncdError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2

Handler = Callable[[argparse.Namespace], int]


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="path to the syncd YAML config"
    )


# --- check-config -------------------------------------------------------------------


def _register_check_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a config file and print a summary")
    _add_config_arg(p)
    p.set_defaults(handler=_cmd_check_config)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from syncd.config import load_config

    cfg = load_config(args.config)
    for warning in cfg.warnings:
        print(f"syncd: warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK")
    for line in cfg.summary_lines():
        print(f"  {line}")
    return EXIT_OK


# --- run ----------------------------------------------------------------------------


def _register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="watch, queue and upload until stopped")
    _add_config_arg(p)
    p.add_argument(
        "--once",
        action="store_true",
        help="upload everything eligible now, then exit (0: done, 1: --timeout ran out)",
    )
    p.add_argument(
        "--timeout", type=float, metavar="S", help="with --once: give up after S seconds"
    )
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from syncd.config import load_config
    from syncd.daemon import run_daemon
    from syncd.logs import setup_logging

    cfg = load_config(args.config)
    setup_logging(cfg.log.level, cfg.log.format)
    for warning in cfg.warnings:
        logging.getLogger("syncd").warning("%s", warning)
    return asyncio.run(run_daemon(cfg, once=args.once, timeout=args.timeout))


# --- sink ---------------------------------------------------------------------------


def _register_sink(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sink",
        help="run a Viam-compatible data-sync receiver that stores uploads on disk",
        description="Serve Viam's DataSyncService and AuthService and store every upload "
        "under --store. Flags override the config file. Stops on SIGTERM or SIGINT.",
    )
    p.add_argument("-c", "--config", metavar="FILE", help="sink YAML config (optional)")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on; port 0 picks one")
    p.add_argument("--store", metavar="DIR", help="folder to store uploads in")
    p.add_argument("--api-key-id", metavar="ID", help="require this API key id")
    p.add_argument("--api-key", metavar="KEY", help="require this API key (see --api-key-file)")
    p.add_argument("--api-key-file", metavar="FILE", help="read the API key from FILE")
    for flag, what in (
        ("--max-message-bytes", "largest gRPC message (default 64MiB)"),
        ("--max-upload-bytes", "largest upload (default 10GiB)"),
        ("--min-free-bytes", "free space to keep on the store (default 64MiB)"),
    ):
        p.add_argument(flag, metavar="N", help=what)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.set_defaults(handler=_cmd_sink)


def _cmd_sink(args: argparse.Namespace) -> int:
    from syncd.logs import setup_logging
    from syncd.sink import run_sink
    from syncd.sink_config import KEYS, load_sink_config

    cfg = load_sink_config(args.config, {key: getattr(args, key, None) for key in KEYS})
    setup_logging(cfg.log_level)
    return run_sink(cfg)


# --- registry -----------------------------------------------------------------------

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_check_config,
    _register_run,
    _register_sink,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd", description="Capture-and-sync daemon for Viam's data-sync API."
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"syncd: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except SyncdError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
