"""The ``syncd`` command: one small function per subcommand.

Every subcommand exits 2 on a configuration problem (one line per problem on stderr) and
1 on any other user-facing error (one line); tracebacks are reserved for real bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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
    _tune_memory()
    return asyncio.run(run_daemon(cfg, once=args.once, timeout=args.timeout))


def _tune_memory() -> None:
    """For the long-running commands.

    What is loaded by now (modules, protobuf descriptors, the config) lives as long as
    the process: frozen, later collections skip it. An upload makes many short-lived
    objects and few cycles: collecting the youngest generation every 10,000 allocations
    rather than 700 saves about 5% of a small file's upload, for a few more
    milliseconds' worth of garbage.

    Buffers of 256 KiB and more (requests in flight, up to ``sync.max_request_bytes``
    each) go back to the system when freed. glibc would otherwise raise that threshold
    after the first such buffer is freed and keep later ones in per-thread heaps: 16
    tabular uploads of 2 MiB requests peaked at 132 MB RSS instead of 94. Only on glibc.
    """
    import ctypes

    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 256 * 1024)


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


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
    _tune_memory()
    return run_sink(cfg)


# --- capture ------------------------------------------------------------------------


def _register_capture(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="queue sensor readings in the outbox")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    tab = kinds.add_parser(
        "tabular",
        help="one reading per JSON object line on stdin, until EOF",
        description="Read one JSON object per line from stdin and queue each as a tabular "
        "reading (time: when the line was read). Readings are committed every --batch lines "
        "or 100 ms after a line was read. Bad lines are reported and skipped; exit 1 if any.",
    )
    binary = kinds.add_parser("binary", help="one binary reading from a file (- for stdin)")
    for kind in (tab, binary):
        _add_config_arg(kind)
        kind.add_argument(
            "--component-type", required=True, metavar="T", help="e.g. rdk:component:sensor"
        )
        kind.add_argument("--component-name", required=True, metavar="N")
        kind.add_argument("--method", required=True, metavar="M", help="e.g. Readings")
        kind.add_argument("--tag", action="append", default=[], metavar="X", help="repeatable")
        kind.set_defaults(handler=_cmd_capture)
    tab.add_argument("--batch", type=int, default=1000, metavar="N", help="lines per commit")
    binary.add_argument("--file-extension", required=True, metavar="EXT", help="e.g. .jpeg")
    binary.add_argument("--mime-type", default="", metavar="TYPE")
    binary.add_argument("file", metavar="FILE")


def _cmd_capture(args: argparse.Namespace) -> int:
    from syncd import outbox_cli
    from syncd.config import load_config
    from syncd.outbox import Outbox

    cfg = load_config(args.config)
    stream = {
        "component_type": args.component_type,
        "component_name": args.component_name,
        "method_name": args.method,
        "tags": tuple(args.tag),
    }
    with Outbox(cfg.state_dir) as outbox:
        if args.kind == "binary":
            rid = outbox_cli.capture_binary(
                outbox,
                args.file,
                file_extension=args.file_extension,
                mime_type=args.mime_type,
                **stream,
            )
            print(rid)
            return EXIT_OK
        with outbox_cli.sigterm_as_exit():
            queued, bad = outbox_cli.capture_tabular(
                outbox, sys.stdin.buffer, sys.stderr, batch_lines=max(1, args.batch), **stream
            )
    if bad:
        print(f"syncd: {queued} readings queued, {bad} bad lines skipped", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


# --- status -------------------------------------------------------------------------


def _register_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what the outbox holds: counts, bytes, oldest pending")
    _add_config_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    from syncd import linkctl, outbox_cli
    from syncd.config import load_config
    from syncd.outbox import Outbox, OutboxCounts

    cfg = load_config(args.config)
    path = cfg.state_dir / "outbox.db"
    counts = OutboxCounts.zero()
    # Read-only commands never create the outbox (e.g. owned by root, before the daemon).
    if Outbox.exists(cfg.state_dir):
        with Outbox(cfg.state_dir) as outbox:
            counts = outbox.counts()
    paused = linkctl.pause_note(cfg.state_dir)
    if args.json:
        print(json.dumps({"outbox": str(path), **counts.as_dict(), "paused": paused is not None}))
    else:
        print("\n".join(outbox_cli.status_lines(counts, path)))
        if paused is not None:
            since, _, why = paused.partition(" ")
            why = f" ({why})" if why else ""
            print(f"uploads:  paused since {since}{why}; `syncd resume` to undo")
        if cfg.sync.windows:
            state = "open" if linkctl.in_windows(cfg.sync.windows, datetime.now()) else "closed"
            print(f"windows:  {', '.join(cfg.sync.windows)} ({state} now)")
    return EXIT_OK


# --- pause, resume --------------------------------------------------------------------


def _register_pause(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pause",
        help="hold uploads back until `syncd resume` (capture and queueing go on)",
        description="Hold uploads back, from within a second, across restarts, until "
        "`syncd resume`. Uploads in flight finish; capture and queueing go on.",
    )
    _add_config_arg(p)
    p.add_argument("reason", nargs="*", help="a note shown by `syncd status` and in the log")
    p.set_defaults(handler=_cmd_pause)
    r = sub.add_parser("resume", help="let uploads go on after `syncd pause`")
    _add_config_arg(r)
    r.set_defaults(handler=_cmd_pause)


def _cmd_pause(args: argparse.Namespace) -> int:
    from syncd import linkctl
    from syncd.config import load_config

    cfg = load_config(args.config)
    paused = args.command == "pause"
    try:
        linkctl.set_paused(cfg.state_dir, paused, " ".join(getattr(args, "reason", [])))
    except OSError as exc:
        raise SyncdError(
            f"cannot {args.command} in {cfg.state_dir}: {exc.strerror or exc} "
            "(run it as the user syncd runs as, e.g. sudo -u syncd)"
        ) from None
    if paused:
        print("paused: uploads stop within a second; `syncd resume` to undo")
    else:
        print("resumed: uploads go on within a second")
    return EXIT_OK


# --- failed -------------------------------------------------------------------------


def _register_failed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("failed", help="list, retry or purge dead letters")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="one line per dead letter: id, source, attempts, reason")
    retry = actions.add_parser("retry", help="queue dead letters again (ids, or all)")
    purge = actions.add_parser(
        "purge", help="delete dead letters (ids, or all); files stay on disk"
    )
    for action in (ls, retry, purge):
        _add_config_arg(action)
        action.set_defaults(handler=_cmd_failed)
    for action in (retry, purge):
        action.add_argument(
            "ids", nargs="+", metavar="ID", help="ids from `syncd failed list`, or: all"
        )


def _cmd_failed(args: argparse.Namespace) -> int:
    from syncd import outbox_cli
    from syncd.config import load_config
    from syncd.outbox import Outbox

    cfg = load_config(args.config)
    ids = None
    if args.action != "list":
        try:
            ids = outbox_cli.parse_ids(args.ids)
        except ValueError as exc:
            raise SyncdError(str(exc)) from None
    if not Outbox.exists(cfg.state_dir):
        if args.action == "list":
            print("syncd: no failed items", file=sys.stderr)
            return EXIT_OK
        raise SyncdError(f"no outbox in {cfg.state_dir}")
    with Outbox(cfg.state_dir) as outbox:
        failed = outbox.list_failed()
        if args.action == "list":
            for item in failed:
                print(outbox_cli.failed_line(item))
            if not failed:
                print("syncd: no failed items", file=sys.stderr)
            return EXIT_OK
        known = {item.id for item in failed}
        missing = [] if ids is None else [i for i in ids if i not in known]
        targets = None if ids is None else [i for i in ids if i in known]
        if targets is None or targets:
            if args.action == "retry":
                print(f"retried {outbox.retry_failed(targets)}")
            else:
                print(f"purged {outbox.purge_failed(targets)}")
    for i in missing:
        print(f"syncd: no failed item with id {i}", file=sys.stderr)
    return EXIT_ERROR if missing else EXIT_OK


# --- query --------------------------------------------------------------------------


def _register_query(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="list (or download) what a sink's store holds",
        description="Query a sink's store through its index (no sink needs to run): newest "
        "first, every given filter must match, --tag and --mime-type match any of theirs. "
        "Times are ISO 8601, UTC unless they name a zone; --start is included, --end not.",
    )
    p.add_argument("kind", nargs="?", choices=("binary", "tabular"), default="binary")
    p.add_argument("--store", required=True, metavar="DIR", help="the sink's store folder")
    p.add_argument("--component-name", default="", metavar="N")
    p.add_argument("--component-type", default="", metavar="T", help="e.g. rdk:component:camera")
    p.add_argument("--method", default="", metavar="M", help="e.g. ReadImage")
    p.add_argument("--part-id", default="", metavar="ID")
    p.add_argument("--mime-type", action="append", default=[], metavar="TYPE", help="repeatable")
    p.add_argument("--tag", action="append", default=[], metavar="X", help="repeatable")
    p.add_argument("--start", metavar="ISO", help="from this time (time requested)")
    p.add_argument("--end", metavar="ISO", help="until this time")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (0: all)")
    p.add_argument("--oldest-first", action="store_true", help="oldest first")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--download", metavar="DIR", help="binary: copy the payloads into DIR")
    p.set_defaults(handler=_cmd_query)


def _cmd_query(args: argparse.Namespace) -> int:
    from pathlib import Path

    from syncd.query_cli import QueryArgs, run_query

    if args.limit < 0:
        raise SyncdError("--limit: must be 0 (everything) or more")
    query = QueryArgs(
        store=Path(args.store),
        kind=args.kind,
        component_name=args.component_name,
        component_type=args.component_type,
        method=args.method,
        part_id=args.part_id,
        mime_types=tuple(args.mime_type),
        tags=tuple(args.tag),
        start=args.start,
        end=args.end,
        limit=args.limit,
        oldest_first=args.oldest_first,
    )
    download = Path(args.download) if args.download else None
    return run_query(query, as_lines=args.json, download_to=download)


# --- registry -----------------------------------------------------------------------

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_check_config,
    _register_run,
    _register_sink,
    _register_capture,
    _register_status,
    _register_pause,
    _register_failed,
    _register_query,
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
