"""The ``jupyter-llmchat`` command (also ``python -m jupyter_llmchat``).

Each subcommand is one entry of :data:`COMMANDS`: a function that adds its arguments to its
parser and a function that runs it and returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ._errors import ConfigurationError, LLMChatError, RecordError
from ._local._model import MODEL_ALIAS, LocalServer, check_installed
from ._record._export import export_format, export_record, notebook_record
from ._record._metadata import KEY, merge_records, record_from_outputs, validate_record

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


def _consolidate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the .ipynb file to update in place")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the rebuilt record instead of writing it"
    )


def _run_consolidate(args: argparse.Namespace) -> int:
    """Rebuild metadata.jupyter_llmchat from the answers' output metadata (no extension needed),
    merged into the record the notebook already holds."""
    path = pathlib.Path(args.notebook)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        existing = (nb.get("metadata") or {}).get(KEY)
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        print(f"jupyter-llmchat: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    try:
        record = record_from_outputs(nb)
        validate_record(record)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"jupyter-llmchat: {path}: chat outputs are malformed: {exc}", file=sys.stderr)
        return 2
    if existing is not None:
        try:
            validate_record(existing)
        except RecordError as exc:
            # Never written over: it may hold what no output does (panel turns, spend).
            print(f"jupyter-llmchat: {path}: its metadata.{KEY} is not a record this version can "
                  f"read ({str(exc)[:200]}); the file is left as it is", file=sys.stderr)
            return 2
        record = merge_records(existing, record)
        try:
            validate_record(record)  # the same limits on write as on read
        except RecordError as exc:
            print(f"jupyter-llmchat: {path}: the merged record would not be read back "
                  f"({str(exc)[:200]}); the file is left as it is", file=sys.stderr)
            return 2
    if args.dry_run:
        print(json.dumps(record, indent=1))
        return 0
    nb.setdefault("metadata", {})[KEY] = record
    # nbformat's layout (what Jupyter saves), so that only the record shows in a diff.
    text = json.dumps(nb, indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=False) + "\n"
    _write_atomically(path, text)
    turns = sum(len(s["turns"]) for s in record["sessions"].values())
    print(f"{path}: {len(record['sessions'])} session(s), {turns} turn(s) recorded in metadata.{KEY}")
    return 0


def _write_atomically(path: pathlib.Path, text: str) -> None:
    """Write next to the file, then rename: a crash never leaves a half-written notebook.

    A symlink stays a symlink (its target is written); the file keeps its mode; the data and
    the rename are on disk (fsync of the file and of its directory) before we say done.
    """
    target = pathlib.Path(os.path.realpath(path))
    mode = target.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes it 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the saved .ipynb file (read only; no kernel is started)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="FILE.md (Markdown) or FILE.html (one self-contained page)")
    parser.add_argument("-s", "--session", default=None, help="only this session (default: all)")


def _run_export(args: argparse.Namespace) -> int:
    """Write the notebook's conversation (its metadata's record, in its order of cells) to a
    Markdown or HTML file. Every failure is one line on stderr and exit code 1, nothing written."""
    path = pathlib.Path(args.notebook)
    try:
        export_format(args.output)
    except ConfigurationError as exc:
        print(f"jupyter-llmchat export: {exc}", file=sys.stderr)
        return 1
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        print(f"jupyter-llmchat export: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    try:
        record, order = notebook_record(nb)
        out = export_record(record, order, args.output, args.session, title=path.stem)
    except RecordError as exc:
        print(f"jupyter-llmchat export: {path}: its chat record cannot be read: {str(exc)[:300]}",
              file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        print(f"jupyter-llmchat export: {path}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"jupyter-llmchat export: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: conversation written to {out}")
    return 0


def _tour_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=".", help="where to put the tour notebook (default: here)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--port", type=int, default=None, help="JupyterLab's port")


def tour_notebook() -> pathlib.Path:
    """The packaged tour notebook (or the repository's, in a development install)."""
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here / "notebooks" / "01-tour.ipynb", here.parent / "notebooks" / "01-tour.ipynb"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("the tour notebook is not installed")


def _run_tour(args: argparse.Namespace) -> int:
    """Copy the tour notebook here (unless it exists) and open it in JupyterLab."""
    here = pathlib.Path(args.dir)
    # In a clone of the repository, open its own copy rather than scatter another one.
    target = here / "notebooks" / "01-tour.ipynb"
    if not target.is_file():
        target = here / "01-tour.ipynb"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tour_notebook(), target)
    cmd = [sys.executable, "-m", "jupyterlab", str(target), "--ServerApp.ip=127.0.0.1"]
    if args.no_browser:
        cmd.append("--no-browser")
    if args.port:
        cmd.append(f"--port={args.port}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # JupyterLab refuses root without it
        cmd.append("--allow-root")
    print(f"jupyter-llmchat: opening {target} in JupyterLab (the URL with its token follows)", file=sys.stderr)
    return subprocess.call(cmd)


COMMANDS: dict[str, Command] = {
    "consolidate": Command(
        help="rebuild a notebook's chat record (its metadata) from the answers in its outputs",
        add_arguments=_consolidate_arguments,
        run=_run_consolidate,
    ),
    "export": Command(
        help="write a saved notebook's chat conversation to a Markdown or HTML file",
        add_arguments=_export_arguments,
        run=_run_export,
    ),
    "tour": Command(
        help="open the tour notebook in JupyterLab",
        add_arguments=_tour_arguments,
        run=_run_tour,
    ),
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
