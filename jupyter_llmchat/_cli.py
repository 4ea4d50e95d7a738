"""The ``jupyter-llmchat`` command (also ``python -m jupyter_llmchat``).

Each subcommand is one entry of :data:`COMMANDS`: a function that adds its arguments to its
parser and a function that runs it and returns the exit code.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ._errors import LLMChatError

__all__ = ["COMMANDS", "Command", "main"]


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _local_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)"
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_local(args: argparse.Namespace) -> int:
    from ._local import MODEL_ALIAS, LocalServer, check_installed

    check_installed()
    server = LocalServer(port=args.port)
    # SIGTERM (kill, a supervisor) must stop the server too, not just Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        print(f"starting local model {MODEL_ALIAS}...", file=sys.stderr, flush=True)
        server.start()
        # First line of stdout is the base_url alone, so scripts can read it.
        print(server.base_url, flush=True)
        print(
            f'in a notebook: %config ChatMagics.base_url = "{server.base_url}"  '
            f"(model {server.model}; Ctrl-C stops the server)",
            flush=True,
        )
        code = server.wait()
        print(f"the local model server exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


COMMANDS: dict[str, Command] = {
    "local": Command(
        help="run the bundled local model (gemma-3-270m) as an OpenAI-compatible server",
        add_arguments=_local_arguments,
        run=_run_local,
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter-llmchat", description="Tools for jupyter_llmchat."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except LLMChatError as exc:
        print(f"jupyter-llmchat: {exc}", file=sys.stderr)
        return 2
