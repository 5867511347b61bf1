"""`hvd` entry point: `hvd daemon`, `hvd doctor`, `hvd config example`, and the client commands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hvd import __version__
from hvd.catalog.protocol import PROTOCOL
from hvd.catalog.schema import MIGRATIONS
from hvd.config import example_toml, load_config
from hvd.errors import HvdError
from hvd.log import setup_logging


def _cmd_daemon(args: argparse.Namespace) -> int:
    from hvd.daemon import run

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.file)
    run(config)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.action == "example":
        sys.stdout.write(example_toml())
        return 0
    load_config(args.config)
    print("config ok")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from hvd.doctor import main as doctor_main

    code: int = doctor_main(load_config(args.config))
    return code


def _cmd_completion(args: argparse.Namespace) -> int:
    from hvd.cli.completion import script

    sys.stdout.write(script(args.shell, build_parser()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvd", description="hvd: compute daemon and client")
    parser.add_argument("--version", action="version",
                        version=f"hvd {__version__} (catalog schema {len(MIGRATIONS)}, protocol {PROTOCOL})")
    parser.add_argument("--cacert", metavar="FILE",
                        help="cluster CA certificate to verify an https:// API (default: $HVD_CACERT)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("daemon", help="run the daemon in the foreground")
    p.add_argument("-c", "--config", type=Path, help="hvd.toml")
    p.set_defaults(func=_cmd_daemon)
    p = sub.add_parser("config", help="print the example config or check one")
    p.add_argument("action", choices=["example", "check"])
    p.add_argument("-c", "--config", type=Path)
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("doctor", help="check this host can run hvd")
    p.add_argument("-c", "--config", type=Path)
    p.set_defaults(func=_cmd_doctor)
    p = sub.add_parser("completion", help="print a shell completion script: source <(hvd completion bash)")
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=_cmd_completion)
    try:
        from hvd.cli.client import add_client_commands
    except ImportError:  # the client commands are optional while they are being built
        pass
    else:
        add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.cacert:
        os.environ["HVD_CACERT"] = args.cacert  # read by the client session, like the other HVD_* settings
    try:
        code = args.func(args)
    except HvdError as exc:
        print(f"hvd: error: {exc.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
