"""The asking magics, ``%%chat``, ``%chat`` and ``%chat_fix``, and the settings of them all.

``ChatMagics`` is a traitlets ``Configurable`` (every ``Magics`` is), so its settings work from
``ipython_config.py`` and ``%config ChatMagics.x = ...``; it makes the sessions from them. IPython
style, one ``Magics`` class per concern: the reporting magics are ``_report_magics``'s; what one
question of a cell does (replay, the request, its errors) is ``_cellrun``'s; the prompt's
templating and the option parsing are ``_prompt``'s.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import warnings
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    line_magic,
    magics_class,
    no_var_expand,
)
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import (
    Bool,
    Dict,
    Enum,
    Float,
    Int,
    TraitError,
    Unicode,
    Union,
    default,
    observe,
    validate,
)

from .. import _sessions
from .._core._mcp_config import config_from_dict
from .._core._params import params as make_params
from .._core._presets import chat_openai_compatible
from .._core._provider import env_credentials
from .._core._spend import spend_guard
from .._errors import ChatBusyError, ConfigurationError
from . import _cellcontext as ctx
from . import _context
from ._approval import POLICIES, ToolApproval
from ._bridge import start_bridge
from ._cellcontext import CellRuns
from ._cellrun import CellRunner
from ._display import formatwarning_hook, show_line
from ._mcp_magics import MCPMagics
from ._prompt import parse_options, protect_questions, split_line
from ._report_magics import ChatReportMagics

__all__ = ["ChatMagics", "load", "unload"]

#: Every magic of the extension (unload removes them).
MAGIC_NAMES = ("chat", "chat_fix", "chat_usage", "chat_history", "chat_reset", "chat_config",
               "chat_budget", "chat_panel", "chat_export", "chat_mcp")

FORMATS = ("markdown", "text", "code", "json")
#: The settings a session is built from; a changed one applies to it at its next question.
_SESSION_SETTINGS = (
    "base_url", "model", "system_prompt", "provider_name", "params", "api_args", "api_headers",
    "credentials_env",
)


@magics_class
class ChatMagics(Magics):
    """Chat with an OpenAI-compatible server from notebook cells."""

    base_url = Unicode(
        help="Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1. "
        "Default: $OPENAI_BASE_URL; empty starts the bundled local model."
    ).tag(config=True)
    model = Unicode(
        help="Model name. Default: $OPENAI_MODEL; empty asks the server's /models for its only model."
    ).tag(config=True)
    system_prompt = Unicode(
        "", help="System prompt for new sessions (%%chat --system changes one session's)."
    ).tag(config=True)
    provider_name = Unicode(
        "OpenAI-compatible", help="Provider name shown in usage and cost tables, and used to find prices."
    ).tag(config=True)
    params = Dict(
        help="Model parameters for new sessions, as in jupyter_llmchat.params(): "
        "{'temperature': 0.2, 'max_tokens': 512}."
    ).tag(config=True)
    api_args = Dict(
        help="Extra fields deep-merged into every request body (a None value deletes a field)."
    ).tag(config=True)
    api_headers = Dict(help="Extra HTTP headers sent with every request.").tag(config=True)
    credentials_env = Unicode(
        "OPENAI_API_KEY",
        help="Name of the environment variable holding the API key (read at every request; "
        "the key itself is never stored).",
    ).tag(config=True)
    default_format = Enum(
        FORMATS, "markdown", help="How answers are rendered when %%chat has no -f."
    ).tag(config=True)
    display_rate_hz = Float(
        10.0, help="Most display updates per second while an answer streams."
    ).tag(config=True)
    record_metadata = Bool(
        True, help="Record turns, tokens and cost in the notebook's metadata (needs the JupyterLab extension)."
    ).tag(config=True)
    context_max_tokens = Int(
        2000, help="Most tokens (estimated as characters / 4) of each value attached with "
        "%%chat --with, whatever the value's size."
    ).tag(config=True)
    replay = Union(
        [Bool(), Enum(["only"])], default_value=True,
        help="Show the recorded answer, with no request, when a %%chat cell is re-run with "
        "the same prompt, conversation above, model, system prompt, params, tools and --with "
        "values (--refresh asks again). \"only\": never send anything (CI, docs builds): a cell "
        "with no matching recorded answer fails saying what changed. The environment's "
        "JUPYTER_LLMCHAT_REPLAY=only does the same and wins over this setting.",
    ).tag(config=True)
    footer = Bool(
        True, help="Show a one-line footer under each answer: model, tokens in/out, cost."
    ).tag(config=True)
    tool_approval = Enum(
        POLICIES, "ask", help='Which tool calls ask first. "ask": the calls of your own '
        "functions and of tools annotated read-only run, the others (MCP tools) ask in the "
        'cell (yes / no / always); refused where nobody can answer (nbclient, papermill). '
        '"auto": every call runs. "never": every call is refused.'
    ).tag(config=True)
    mcp_servers = Dict(
        help="MCP servers connected at %load_ext (and when changed), their tools offered to every "
        "session, in other MCP clients' shape: {'name': {'command': ..., 'args': [...], 'env': "
        "{...}}} or {'name': {'url': ..., 'headers': {...}}}, plus 'ask', 'timeout', "
        "'include_tools', 'exclude_tools', 'namespace'. Write secrets as ${env:VAR}."
    ).tag(config=True)

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("OPENAI_BASE_URL", "")

    @default("model")
    def _default_model(self) -> str:
        return os.environ.get("OPENAI_MODEL", "")

    @validate("params")
    def _validate_params(self, proposal: Any) -> dict[str, Any]:
        try:
            return make_params(**proposal["value"])
        except (ConfigurationError, TypeError) as exc:
            raise TraitError(f"ChatMagics.params: {exc}") from None

    @validate("mcp_servers")
    def _validate_mcp_servers(self, proposal: Any) -> dict[str, Any]:
        value = dict(proposal["value"])
        for name, spec in value.items():
            try:
                config_from_dict(str(name), spec)
            except ConfigurationError as exc:
                raise TraitError(f"ChatMagics.mcp_servers: {exc}") from None
        return value

    @validate("display_rate_hz")
    def _validate_rate(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0.1 <= value <= 60:
            raise TraitError("ChatMagics.display_rate_hz must be between 0.1 and 60")
        return value

    @validate("base_url")
    def _validate_base_url(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise TraitError("ChatMagics.base_url must be an http(s) URL, e.g. http://127.0.0.1:11434/v1")
        return value

    @observe("replay")
    def _replay_changed(self, change: Any) -> None:
        # The core's one spend guard refuses every request in this mode (panel, parallel_chat).
        only = change["new"] == "only"
        spend_guard.set_replay_only("ChatMagics.replay = 'only'" if only else None)

    @observe("tool_approval")
    def _tool_approval_changed(self, change: Any) -> None:
        self.approval.policy = change["new"]

    #: Magics are always registered on a shell (IPython types it Optional).
    shell: Any

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        #: The kernel's tool approval (an on_tool_request callback for every Chat), installed
        #: by load(); its policy follows ``tool_approval``.
        self.approval = ToolApproval()
        super().__init__(shell=shell, **kwargs)
        self.approval.policy = self.tool_approval
        #: Sessions this object built: name -> (the Chat, the settings it last took).
        self._from_config: dict[str, tuple[Any, str]] = {}
        #: The last failed cell, for %chat_fix (fed by a post_run_cell hook, see load()).
        self.cell_runs = CellRuns()
        self.runner = CellRunner(self.shell, self, self.cell_runs)
        _sessions.set_factory(self._make_session, self._refresh_from_config)

    def _session_settings(self) -> str:
        values = [getattr(self, name) for name in _SESSION_SETTINGS]
        return json.dumps(values, sort_keys=True, default=str)

    # -- sessions -----------------------------------------------------------------------------

    def _make_session(self, name: str) -> Any:
        chat = self._configured_chat()
        self._from_config[name] = (chat, self._session_settings())
        return chat

    def _configured_chat(self) -> Any:
        """A Chat made from the settings in force."""
        common: dict[str, Any] = {
            "system_prompt": self.system_prompt or None,
            "params": self.params,
            "api_args": self.api_args,
        }
        if not self.base_url:
            chat = _sessions.local_chat(**common)
        else:
            chat = chat_openai_compatible(
                base_url=self.base_url,
                name=self.provider_name,
                credentials=env_credentials(self.credentials_env) if self.credentials_env else None,
                model=self.model or None,
                api_headers=self.api_headers,
                **common,
            )
        return chat

    def made_from_config(self, session: str) -> bool:
        """The session is the Chat these settings made (not one given to ``use()``)."""
        made = self._from_config.get(session)
        return made is not None and made[0] is _sessions.sessions().get(session)

    def refresh_session(self, session: str) -> None:
        self._refresh_from_config(session)

    # -- %%chat -------------------------------------------------------------------------------

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @argument("-m", "--model", help="Model for this cell only.")
    @argument("--system", help="Set the session's system prompt from now on.")
    @argument("-t", "--temperature", type=float, help="Temperature for this cell only (0 to 2).")
    @argument("--max-tokens", type=int, help="Most tokens in this answer.")
    @argument("-o", "--output", metavar="VAR", help="Store the answer in variable VAR.")
    @argument("-f", "--format", choices=FORMATS, metavar="FORMAT",
              help="markdown, text, code or json: how the answer shows, and what -o stores.")
    @argument("--new", action="store_true",
              help="Start a new conversation: send no history; the cells below continue from "
                   "this one, the cells above keep theirs.")
    @argument("--no-history", action="store_true", help="Send this prompt alone and record nothing.")
    @argument("--with", dest="with_names", metavar="NAME[,NAME...]",
              help="Attach a bounded summary of these variables (DataFrames, arrays, ...).")
    @argument("--tools", dest="tool_names", metavar="NAME[,NAME...]",
              help="Offer these functions of your namespace as tools, for this cell only; "
              "kernel: read-only tools to look at your variables and the last error.")
    @argument("--dry-run", action="store_true",
              help="Show what would be sent, with a token estimate; send and record nothing.")
    @argument("--refresh", action="store_true",
              help="Ask the server even when a recorded answer could be replayed.")
    @argument("--insert", action="store_true",
              help="Also put the answer's first code block into a new cell below (not when "
              "replayed); asked again, JupyterLab replaces that cell's code.")
    # argparse formats help with %, so "%%%%" shows as "%%".
    @argument("prompt", nargs="*", metavar="PROMPT",
              help="The question, for %%%%chat on the line; for %%%%%%%%chat, the cell body.")
    # IPython would expand $name and {expr} in the line before we see it: prompts stay verbatim.
    @no_var_expand
    @line_cell_magic
    def chat(self, line: str, cell: str | None = None) -> Any:
        """Send a prompt to the session's model and stream the answer into the output.

        As a cell magic the cell body is the prompt; as a line magic (%chat ...) the rest of the
        line is. {{ expr }} is replaced by the value of expr in your namespace (\\{{ keeps it
        literal); single braces are left alone. Examples::

            %%chat -t 0 --max-tokens 200
            Explain {{ df.shape }} in one sentence.

            %chat -o answer What is a monad?
        """
        __tracebackhide__ = True  # noqa: F841 - %xmode Verbose shows the user's frames, not ours
        if cell is None:
            args, prompt = split_line(self.chat, line)
        else:
            args = parse_options(self.chat, line)
            if args.prompt:
                raise UsageError(
                    f"unexpected text on the %%chat line: {' '.join(args.prompt)!r} "
                    "(the prompt goes in the cell body)"
                )
            prompt = cell
        return self.runner.run(args, prompt)

    def _refresh_from_config(self, name: str) -> None:
        """Apply the settings changed since a configuration-made session last took them.

        Run before each question (and after a reset), in place: the session stays the same
        Chat, so a handle from ``session()`` keeps working and its turns, tools and listeners
        stay (DESIGN §2). A session restored from the notebook at ``%load_ext`` so picks up the
        ``%config`` lines that follow. The system prompt follows the setting only when the
        setting changed (a ``%%chat --system`` stays until then). A Chat given to ``use()`` is
        the user's: never changed.
        """
        made = self._from_config.get(name)
        chat = _sessions.sessions().get(name)
        settings = self._session_settings()
        if made is None or chat is not made[0] or made[1] == settings:
            return
        before = dict(zip(_SESSION_SETTINGS, json.loads(made[1])))
        now = dict(zip(_SESSION_SETTINGS, json.loads(settings)))
        if any(before[k] != now[k] for k in _SESSION_SETTINGS if k != "system_prompt"):
            try:
                chat.set_provider(self._configured_chat().provider)
            except ChatBusyError:
                return  # answering (in the panel): its next question takes them
        if before["system_prompt"] != now["system_prompt"]:
            chat.system_prompt = self.system_prompt or None
        self._from_config[name] = (chat, settings)

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @argument("-o", "--output", metavar="VAR", help="Store the fixed cell (the answer's code block) in VAR.")
    @line_magic
    def chat_fix(self, line: str) -> Any:
        """Ask the model to explain the last error and give a fixed cell.

        Sends the exception (type, message, your own frames) and the source of the cell that
        raised it; the answer streams like %%chat. Nothing is sent when there was no error.
        """
        args = parse_options(self.chat_fix, line)
        refusal = self.cell_runs.refusal()
        if refusal is not None:  # the last failed cell was fixed since, or was a chat request
            show_line(self.shell, refusal)
            return None
        err = ctx.last_error(self.shell)
        if err is None:
            show_line(self.shell, "no error yet: %chat_fix explains the last exception of this kernel")
            return None
        options = "-s " + shlex.quote(args.session)
        if args.output:
            options += " -f code -o " + shlex.quote(args.output)
        chat_args = parse_options(self.chat, options)
        return self.runner.run(chat_args, _context.fix_prompt(err), template=False)


def load(ipython: Any) -> None:
    # The package's warnings show in the cell as one line, without our file paths.
    warnings.formatwarning = formatwarning_hook(warnings.formatwarning)
    magics = ChatMagics(shell=ipython)
    ipython.register_magics(magics)
    magics.approval.install()
    ipython.register_magics(ChatReportMagics(shell=ipython, settings=magics))
    mcp = MCPMagics(shell=ipython, settings=magics)
    ipython.register_magics(mcp)
    ipython.events.register("post_run_cell", magics.cell_runs.post_run_cell)
    ipython.events.register("post_execute", magics.runner.cell_done)
    _sessions.registry.magics[ipython] = magics
    if protect_questions not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(protect_questions)
    start_bridge(ipython, magics)
    mcp.connect_configured()  # last: a server's start takes a second, and may fail


def unload(ipython: Any) -> None:
    magics = _sessions.registry.magics.pop(ipython, None)
    original = getattr(warnings.formatwarning, "_llmchat_original", None)
    if original is not None:
        warnings.formatwarning = original
    if protect_questions in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(protect_questions)
    mcp = ipython.magics_manager.registry.get("MCPMagics")
    if mcp is not None:
        mcp.close()
    if magics is not None:
        if magics.replay == "only":
            spend_guard.set_replay_only(None)
        magics.approval.uninstall()
        ipython.events.unregister("post_run_cell", magics.cell_runs.post_run_cell)
        ipython.events.unregister("post_execute", magics.runner.cell_done)
        _sessions.set_factory(None)
        for kind in ("line", "cell"):
            for name in MAGIC_NAMES:
                ipython.magics_manager.magics[kind].pop(name, None)
