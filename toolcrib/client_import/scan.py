"""Finding secrets and client-side variables in one server's strings, and turning them into references.

Variable syntaxes: VS Code's ``mcp.json`` (``${input:ID}``, ``${env:X}``, ``${workspaceFolder}``; see
https://code.visualstudio.com/docs/reference/variables-reference) and Claude Code's ``.mcp.json``
(``${X}``, ``${X:-default}``; "Environment variable expansion in .mcp.json" in the Claude Code MCP docs).

Rules (each replacement is reported; see :mod:`toolcrib.client_import.report`):

* ``${input:ID}`` (VS Code prompts) -> ``secret:SERVER/ID``.
* ``${env:X}`` (VS Code), ``${X}`` and ``${X:-default}`` (Claude Code ``.mcp.json``) -> ``secret:SERVER/x``
  inside ``env``/``headers`` or when ``X`` names a secret; elsewhere (a path in ``args``) the value the
  variable has now, else its default, else a reference.
* ``${workspaceFolder}`` -> the folder the file belongs to (the parent of ``.vscode/``); ``${userHome}`` ->
  the home folder. Any other ``${...}`` is kept and reported for a hand edit.
* In ``args``: the value of a secret-named flag (``--api-key X``, ``--token=X``), the password of a URL
  (``postgres://user:PASS@host``), a secret-named query parameter (``?api_key=X``) and a well-known token
  shape (``sk-...``, ``ghp_...``, ``xoxb-...``, ``AKIA...``) -> references, and so does the value of a
  header-shaped argument with a secret name (``Authorization: Bearer X``, as ``mcp-remote --header`` takes).
  ``${KEY}`` in ``args`` where ``KEY`` is in the server's own ``env`` becomes that (cleaned) env value,
  which is what ``mcp-remote`` (expanding from its env) and Claude Code (from its own) both pass.
  URLs and ``env``/``headers`` values get the same URL treatment (a password's reference is named
  ``HOST-password``).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path

from toolcrib.client_import.report import MovedSecret, Report

SECRET_KEY = re.compile(r"(token|secret|passw|api[_-]?key|apikey|auth|credential|private|access[_-]?key)", re.I)
_NOT_A_VALUE_FLAG = re.compile(r"(file|path|dir|env|var|header|url|uri|name|type|mode|method|scheme|flow)$", re.I)
_SECRET_PARAM = re.compile(
    r"^(api[_-]?key|apikey|key|token|access[_-]?token|auth|authorization|password|passwd|pwd|secret|"
    r"client[_-]?secret|sig|signature|x-api-key)$",
    re.I,
)
_TOKEN_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])(sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|glpat-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
    r"|lin_api_[A-Za-z0-9]{20,})"
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#\s]*):([^@/?#\s]+)@")
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;\s]+)=([^&#;\s]*)")
_HEADER_ARG = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):(\s*(?:(?:Bearer|Basic|Token)\s+)?)(\S+)$", re.I)
_FLAG = re.compile(r"^(--?[A-Za-z][A-Za-z0-9_.-]*)(?:=(.*))?$", re.S)
_VAR = re.compile(r"\$\{([^{}]*)\}")
_PLAIN_VAR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.S)
_REF_CHAR = re.compile(r"[A-Za-z0-9_.-]")


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def looks_secret(key: str, value: str) -> bool:
    """A literal that should not live in a config file: a secret-like key name, or a token-like value."""
    if not value or value.startswith(("secret:", "${")):
        return False
    if SECRET_KEY.search(key) or _TOKEN_SHAPES.fullmatch(value):
        return True
    return len(value) >= 20 and " " not in value and "/" not in value and _entropy(value) > 3.5


def _token_like(value: str) -> bool:
    """A bare argument that is a credential by shape (stricter than :func:`looks_secret`: args hold names)."""
    if _TOKEN_SHAPES.fullmatch(value):
        return True
    return (
        len(value) >= 24
        and re.fullmatch(r"[A-Za-z0-9_+=-]+", value) is not None
        and re.search(r"\d", value) is not None
        and re.search(r"[A-Za-z]", value) is not None
        and _entropy(value) > 4.0
    )


def ref_name(key: str) -> str:
    """A reference name (``[A-Za-z0-9][A-Za-z0-9_.-]*``) derived from a key, flag or variable name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", key.lower()).strip("_.-")[:48] or "secret"
    return name if name[0].isalnum() else "s" + name


class ServerScan:
    """Secret extraction for one server: references are ``secret:SERVER/NAME``, unique per distinct value."""

    def __init__(
        self,
        server: str,
        report: Report,
        workspace: Path,
        inputs: dict[str, str],
        own_env: dict[str, str] | None = None,
    ) -> None:
        self.server, self.report, self.workspace, self.inputs = server, report, workspace, inputs
        self.own_env = own_env or {}  # the server's own `env`, already cleaned: what ${KEY} in its args means
        self._by_value: dict[str, str] = {}
        self._names: set[str] = set()

    def move(self, value: str, hint: str, where: str, origin: str = "a literal secret") -> str:
        """The reference that replaces ``value``; the same value gets the same reference."""
        key = f"{origin}\0{value}"
        if key in self._by_value:
            return self._by_value[key]
        base = ref_name(hint)
        name, n = base, 2
        while name in self._names:
            name, n = f"{base}-{n}", n + 1
        self._names.add(name)
        ref = f"secret:{self.server}/{name}"
        self._by_value[key] = ref
        self.report.secrets.append(MovedSecret(self.server, where, ref, origin))
        return ref

    # ---- ${...} variables ---------------------------------------------------------------------

    def variables(self, text: str, where: str, *, secret_context: bool) -> tuple[str, bool]:
        """``text`` with client variables replaced; the flag says whether a reference was put in."""
        made_ref = False

        def sub(match: re.Match[str]) -> str:
            nonlocal made_ref
            body = match.group(1)
            if body.startswith("input:"):
                ident = body[6:].strip() or "input"
                desc = self.inputs.get(ident)
                origin = f"VS Code input {ident!r}" + (f" ({desc})" if desc else "")
                made_ref = True
                return self._ref_here(text, match, self.move(ident, ident, where, origin))
            if body in ("workspaceFolder", "workspaceRoot"):
                self.report.note(self.server, f"{where}: ${{{body}}} -> {str(self.workspace)!r}")
                return str(self.workspace)
            if body == "workspaceFolderBasename":
                return self.workspace.name
            if body == "userHome":
                return str(Path.home())
            if body == "pathSeparator":
                return os.sep
            plain = _PLAIN_VAR.match(body[4:] if body.startswith("env:") else body)
            if plain is None:
                self.report.note(self.server, f"{where}: ${{{body}}} has no toolcrib equivalent; kept, edit it by hand")
                return match.group(0)
            var, default = plain.group(1), plain.group(2)
            if where.startswith("args") and not body.startswith("env:") and var in self.own_env:
                # mcp-remote expands it from its env, Claude Code from its own: either way, this value
                self.report.note(self.server, f"{where}: ${{{body}}} -> the server's env value of {var}")
                made_ref = made_ref or "secret:" in self.own_env[var]
                return self.own_env[var]
            if not secret_context and not SECRET_KEY.search(var):
                current = os.environ.get(var)
                if current is not None or default is not None:
                    value = current if current is not None else (default or "")
                    how = "its current value" if current is not None else "its default"
                    self.report.note(self.server, f"{where}: ${{{body}}} -> {how} {value!r}")
                    return value
            made_ref = True
            return self._ref_here(text, match, self.move(var, var, where, f"${var} (read by the client)"))

        return _VAR.sub(sub, text), made_ref

    def _ref_here(self, text: str, match: re.Match[str], ref: str) -> str:
        if _REF_CHAR.match(text[match.end() : match.end() + 1]):
            self.report.note(self.server, f"{ref} is followed by text that would extend its name; edit it by hand")
        return ref

    # ---- literal secrets ----------------------------------------------------------------------

    def url_secrets(self, text: str, where: str) -> str:
        """Passwords of URLs and secret-named query parameters inside ``text`` -> references."""

        def one_url(url_match: re.Match[str]) -> str:
            url = url_match.group(0)
            userinfo = _USERINFO.match(url)
            if userinfo and not userinfo.group(2).startswith(("secret:", "${")):
                host = re.match(r"[^:/?#\s]*", url[userinfo.end() :])
                hint = f"{host.group(0) if host and host.group(0) else 'url'}-password"
                ref = self.move(userinfo.group(2), hint, where, "a URL password")
                url = f"{userinfo.group(1)}:{ref}@{url[userinfo.end() :]}"
            head, sep, query = url.partition("?")
            if not sep:
                return url

            def param(m: re.Match[str]) -> str:
                name, value = m.group(2), m.group(3)
                if not value or not _SECRET_PARAM.match(name) or value.startswith(("secret:", "${")):
                    return m.group(0)
                return f"{m.group(1)}{name}={self.move(value, name, where, f'the query parameter {name!r}')}"

            return head + _QUERY_PARAM.sub(param, sep + query)

        return _URL.sub(one_url, text)

    def args(self, args: list[str]) -> list[str]:
        """``args`` with client variables and literal secrets replaced by references."""
        out: list[str] = []
        pending: str | None = None  # a secret-named flag whose value is the next argument
        for i, raw in enumerate(args):
            where = f"args[{i}]"
            arg, made_ref = self.variables(raw, where, secret_context=pending is not None)
            if pending is not None:
                flag, pending = pending, None
                if arg and not arg.startswith("-") and not made_ref and not arg.startswith(("/", ".", "~")):
                    out.append(self.move(arg, flag.lstrip("-"), where, f"the value of {flag}"))
                    continue
            header = _HEADER_ARG.match(arg)
            if header and not made_ref and SECRET_KEY.search(header.group(1)):
                value = header.group(3)
                if not value.startswith(("secret:", "${")):
                    ref = self.move(value, header.group(1), where, f"the {header.group(1)} header value")
                    arg = f"{header.group(1)}:{header.group(2)}{ref}"
                out.append(arg)
                continue
            flag_match = _FLAG.match(arg)
            if (
                flag_match
                and SECRET_KEY.search(flag_match.group(1))
                and not _NOT_A_VALUE_FLAG.search(flag_match.group(1))
            ):
                flag, value = flag_match.group(1), flag_match.group(2)
                if value is None:
                    pending = flag
                elif value and "secret:" not in value and not made_ref:
                    arg = f"{flag}={self.move(value, flag.lstrip('-'), where, f'the value of {flag}')}"
                out.append(arg)
                continue
            arg = self.url_secrets(arg, where)
            if not made_ref and _token_like(arg):
                arg = self.move(arg, f"arg{i}", where, "a token-shaped argument")
            elif not made_ref:
                arg = self._tokens_in(arg, f"arg{i}", where)
            out.append(arg)
        return out

    def _tokens_in(self, text: str, hint: str, where: str) -> str:
        return _TOKEN_SHAPES.sub(lambda m: self.move(m.group(0), hint, where, "a token"), text)

    def table(self, values: dict[str, str], field: str) -> dict[str, str]:
        """``env`` or ``headers``: variables, whole-value secrets (``Bearer X`` keeps its scheme), URL passwords."""
        cleaned: dict[str, str] = {}
        for key, raw in values.items():
            where = f"{field}.{key}"
            value, made_ref = self.variables(raw, where, secret_context=True)
            if made_ref:
                cleaned[key] = value
                continue
            bearer = _BEARER.match(value)
            literal = bearer.group(2) if bearer else value
            if looks_secret(key, literal) or (bearer and not literal.startswith(("secret:", "${"))):
                ref = self.move(literal, key, where)
                cleaned[key] = f"{bearer.group(1)} {ref}" if bearer else ref
            else:
                cleaned[key] = self.url_secrets(value, where)
        return cleaned


_BEARER = re.compile(r"^(Bearer|Basic|Token)\s+(\S+)$", re.I)
