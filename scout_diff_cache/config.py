"""The INI file, parsed once into frozen, typed values the rest of the code can trust.

Each option is an attrs field whose metadata carries its INI parser, so the field list *is* the
set of allowed keys: there is no second table to keep in step.
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pygit2

from .errors import ConfigError
from .passthrough import ALLOWED, segments
from .patterns import PatternError, compile_patterns

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_EXCLUDE = (
    "*.lock",
    "package-lock.json",
    "pnpm-lock.yaml",
    "go.sum",
    "node_modules/",
    "dist/",
    "build/",
    "vendor/",
    "*.min.js",
    "*.min.css",
    "*.map",
)

#: What goes first when the repository does not fit the window: a file takes the rank of the first
#: pattern it matches, `**` standing for every file that no other pattern matches (the source).
DEFAULT_PRIORITIES = (
    "**",
    "*.md",
    "*.rst",
    "*.txt",
    "*.adoc",
    "doc/",
    "docs/",
    "examples/",
    "test/",
    "tests/",
    "spec/",
    "__tests__/",
    "test_*",
    "*_test.*",
    "*.test.*",
    "*.spec.*",
    "*.json",
    "*.csv",
    "*.tsv",
    "*.xml",
    "*.svg",
    "data/",
    "fixtures/",
    "testdata/",
    "*.lock",
    "package-lock.json",
    "pnpm-lock.yaml",
    "go.sum",
    "*.min.js",
    "*.min.css",
    "*.map",
)


def _size(raw: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB)?", raw.strip(), re.IGNORECASE)
    if not match:
        raise ValueError("expected a size in bytes, optionally with a KiB, MiB or GiB suffix (e.g. 512KiB)")
    unit = (match[2] or "b").lower()
    return int(match[1]) * {"b": 1, "kib": KiB, "mib": MiB, "gib": GiB}[unit]


def _positive_size(raw: str) -> int:
    value = _size(raw)
    if value < 1:
        raise ValueError("expected a size of at least 1 byte")
    return value


def _duration(raw: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m)?", raw.strip())
    if not match or float(match[1]) <= 0:
        raise ValueError(
            "expected a positive duration in seconds, or with an ms, s or m suffix (e.g. 600, 1500ms, 10m)"
        )
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2] or "s"]


def _port(raw: str) -> int:
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError("expected a TCP port from 1 to 65535")
    return int(raw)


def _count(raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError("expected a whole number of at least 1")
    return int(raw)


def _whole(raw: str) -> int:
    if not raw.strip().isdigit():
        raise ValueError("expected a whole number (0 or more)")
    return int(raw)


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a non-empty value")
    return raw.strip()


def _bool(raw: str) -> bool:
    states = configparser.ConfigParser.BOOLEAN_STATES
    if raw.strip().lower() not in states:
        raise ValueError("expected true or false (also yes/no, on/off, 1/0)")
    return states[raw.strip().lower()]


def one_of(*choices: str) -> Callable[[str], str]:
    """A parser that takes one of `choices` and refuses anything else, naming them."""
    allowed = f"{', '.join(choices[:-1])} or {choices[-1]}"

    def parse(raw: str) -> str:
        if raw.strip() not in choices:
            raise ValueError(f"expected {allowed}")
        return raw.strip()

    return parse


def _log_level(raw: str) -> str:
    level = raw.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError("expected one of debug, info, warning, error")
    return level


def _tokens(raw: str) -> int | None:
    if raw.strip() == "auto":
        return None
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError("expected auto or a whole number of tokens of at least 1, such as 131072")
    return int(raw)


def _url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("expected an http:// or https:// base URL such as http://127.0.0.1:8000/v1")
    return raw.strip().rstrip("/")


def _path(raw: str) -> Path:
    return Path(_text(raw)).expanduser()


def _patterns(raw: str) -> tuple[str, ...]:
    lines = tuple(line.strip() for line in raw.splitlines() if line.strip())
    try:
        compile_patterns(lines)
    except PatternError as error:
        raise ValueError(f"expected gitignore-style patterns, one per line: {error}") from None
    return lines


def _priorities(raw: str) -> tuple[str, ...]:
    lines = _patterns(raw)
    if any(line.startswith("!") for line in lines):
        raise ValueError("expected one pattern per line, most important first, without '!'")
    return lines


def option(default: Any, parse: Callable[[str], Any], *, secret: bool = False, restart: bool = False) -> Any:
    """An INI key: its parser, whether its value is masked, whether a reload can change it."""
    return attrs.field(
        default=default, repr=not secret, metadata={"parse": parse, "secret": secret, "restart": restart}
    )


@attrs.frozen
class ServerConfig:
    host: str = option("127.0.0.1", _text, restart=True)
    port: int = option(8787, _port, restart=True)
    max_body_bytes: int = option(32 * MiB, _positive_size, restart=True)
    log_level: str = option("info", _log_level)
    log_format: str = option("text", one_of("text", "json"))
    #: SSE comment pings while a streaming request waits for the upstream's first byte.
    sse_keepalive_interval: float = option(15.0, _duration)
    #: How long in-flight requests may run on after SIGTERM before the process exits.
    shutdown_grace: float = option(30.0, _duration, restart=True)
    #: Requests to the upstream handled at once; past it, 429 with Retry-After.
    max_concurrent_requests: int = option(64, _count)
    #: One client key per line; when set, every route but /health needs `Authorization: Bearer KEY`.
    api_keys_file: Path | None = option(None, _path)
    allow_unauthenticated_remote: bool = option(False, _bool)
    #: The keys read from api_keys_file (not an INI key).
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)


def _header_names(raw: str) -> tuple[str, ...]:
    names = tuple(raw.split())
    if not names or not all(re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name) for name in names):
        raise ValueError("expected one or more HTTP header names, separated by spaces")
    return names


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise ValueError(f'expected a JSON object, such as {{"date_string": "26 Jul 2024"}}: {error}') from None
    if not isinstance(value, dict):
        raise ValueError('expected a JSON object, such as {"date_string": "26 Jul 2024"}')
    return value


def _routes(raw: str) -> tuple[str, ...]:
    routes = tuple(raw.replace(",", " ").split())
    for route in routes:
        try:
            segments(route)
        except ValueError as error:
            raise ValueError(
                f"{route!r} has {error}; expected routes under /v1, written without it (files, audio/speech), "
                f"separated by spaces or commas: {ALLOWED}"
            ) from None
    return routes


@attrs.frozen
class UpstreamConfig:
    url: str = option("http://127.0.0.1:8000/v1", _url)
    api_key: str | None = option(None, _text, secret=True)
    api_key_file: Path | None = option(None, _path)
    model: str = option("llama-4-scout", _text)
    connect_timeout: float = option(10.0, _duration)
    first_byte_timeout: float = option(600.0, _duration)
    idle_timeout: float = option(120.0, _duration)
    max_connections: int = option(100, _count, restart=True)
    #: auto: send the repository's routing key to routers in front of the upstream; off: send none.
    routing_key: str = option("auto", one_of("auto", "off"))
    #: The headers the key goes in: vllm-router's consistent hash reads X-Session-ID, smg's X-SMG-Routing-Key.
    routing_key_headers: tuple[str, ...] = option(("X-Session-ID", "X-SMG-Routing-Key"), _header_names)
    #: A top-level cache_salt in every chat body: only requests with the same salt share cached blocks.
    cache_salt: str | None = option(None, _text, secret=True)
    #: Variables for the upstream's chat template in every body the proxy builds (warm-ups too), a
    #: client's own winning: pins what a template would otherwise vary, such as Llama 3's date.
    chat_template_kwargs: dict[str, Any] | None = option(None, _json_object)
    #: The upstream's context window in tokens per request; None (auto): learned from the upstream.
    context_window: int | None = option(None, _tokens)
    #: Routes under /v1 the pass-through forwards besides the built-in inference routes.
    passthrough_routes: tuple[str, ...] = option((), _routes)
    #: How chat prompts go upstream: text (rendered and tokenised by the upstream every request),
    #: tokens (the snapshot as token ids tokenised once per epoch, where the server and request
    #: allow, text otherwise, the fallbacks logged as warnings) or auto (the same, quietly).
    prompt: str = option("text", one_of("text", "tokens", "auto"))


@attrs.frozen
class RepositoryConfig:
    path: Path = option(Path("."), _path)
    exclude: tuple[str, ...] = option(DEFAULT_EXCLUDE, _patterns)
    max_file_bytes: int = option(512 * KiB, _positive_size)
    max_snapshot_bytes: int = option(64 * MiB, _positive_size)
    #: When the snapshot does not fit the window: what is inlined first (see `git/fitting.py`).
    priorities: tuple[str, ...] = option(DEFAULT_PRIORITIES, _priorities)


def _share(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise ValueError("expected a share of the snapshot's size above 0, such as 0.1 for 10%")
    return value


def _interval(raw: str) -> float:
    return 0.0 if raw.strip().lower() == "off" else _duration(raw)


def _state_home() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "scout-diff-cache"


@attrs.frozen
class ContextConfig:
    inject: bool = option(True, _bool)
    rebase: str = option("auto", one_of("auto", "every-commit", "manual"))
    rebase_diff_share: float = option(0.5, _share)
    rebase_min_diff_bytes: int = option(256 * KiB, _size)
    keepalive_interval: float = option(0.0, _interval)
    #: Earlier epochs kept in memory, so a branch switched back to reuses its snapshot's bytes.
    remembered_epochs: int = option(2, _whole)
    #: Keep each conversation's context put and insert work-tree changes where they happened.
    conversations: bool = option(True, _bool)
    max_conversations: int = option(64, _count)
    #: system: a change is a system message of its own; user: it opens the next user message.
    change_placement: str = option("system", one_of("system", "user"))
    #: Where the context sits on chat and Responses (see layout.py): learned from the upstream
    #: (auto), two system messages of its own (separate), or one with the client's (strict).
    layout: str = option("auto", one_of("auto", "separate", "strict"))
    #: client: the usage clients are told leaves out the injected context's tokens (their context
    #: meters see their own conversation); upstream: as the upstream counted it.
    usage: str = option("client", one_of("client", "upstream"))
    #: drop: Claude Code's `x-anthropic-billing-header` line, whose suffix differs per
    #: conversation, leaves a Messages `system` before it can break the prefix; keep: sent on.
    billing_header: str = option("drop", one_of("drop", "keep"))
    state_dir: Path = option(attrs.Factory(_state_home), _path)
    #: The window's parts, in tokens (None: their share of it; see `context/split.py`); the
    #: snapshot gets what they leave.
    answer_tokens: int | None = option(None, _tokens)
    conversation_tokens: int | None = option(None, _tokens)
    diff_tokens: int | None = option(None, _tokens)


@attrs.frozen
class SecurityConfig:
    #: redact: secrets become [REDACTED:RULE:HASH]; exclude-file: files holding one are left out;
    #: off: nothing is scanned, and files that are secrets by name are sent too.
    secrets: str = option("redact", one_of("redact", "exclude-file", "off"))


@attrs.frozen
class Config:
    source: Path | None = None
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    repository: RepositoryConfig = RepositoryConfig()
    context: ContextConfig = ContextConfig()
    security: SecurityConfig = SecurityConfig()


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "upstream": UpstreamConfig,
    "repository": RepositoryConfig,
    "context": ContextConfig,
    "security": SecurityConfig,
}


def default_locations(cwd: Path, home: Path, xdg_config_home: str | None) -> list[Path]:
    """Where a config file is looked for when none is named, first match wins."""
    xdg = Path(xdg_config_home) if xdg_config_home else home / ".config"
    return [
        cwd / "scout.ini",
        xdg / "scout-diff-cache" / "scout.ini",
        Path("/etc/scout-diff-cache/scout.ini"),
    ]


def find_config(explicit: Path | None, candidates: list[Path]) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: config file not found")
        return explicit
    return next((path for path in candidates if path.is_file()), None)


def load_config(source: Path | None) -> Config:
    """Parse and check the INI file (or the built-in defaults when source is None)."""
    where = str(source) if source else "(built-in defaults)"
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    if source is not None:
        try:
            parser.read_string(source.read_text(encoding="utf-8"), source=str(source))
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{where}: cannot read the config file: {error}") from None
        except configparser.Error as error:
            raise ConfigError(f"{where}: not a valid INI file: {' '.join(str(error).split())}") from None
    if parser.defaults():
        raise ConfigError(f"{where}: [DEFAULT] is not used here; allowed sections: {', '.join(SECTIONS)}")
    unknown = [name for name in parser.sections() if name not in SECTIONS]
    if unknown:
        raise ConfigError(f"{where}: [{unknown[0]}] unknown section; allowed sections: {', '.join(SECTIONS)}")

    base = source.parent if source else Path.cwd()
    sections = {name: _parse_section(where, name, cls, parser) for name, cls in SECTIONS.items()}
    sections["upstream"] = _read_api_key(where, base, sections["upstream"])
    sections["server"] = _read_client_keys(where, base, sections["server"])
    sections["repository"] = _check_repository(where, base, sections["repository"])
    sections["context"] = attrs.evolve(sections["context"], state_dir=(base / sections["context"].state_dir).resolve())
    return Config(source=source, **sections)


def _parse_section(where: str, name: str, cls: type, parser: configparser.ConfigParser) -> Any:
    fields = {field.name: field for field in attrs.fields(cls) if "parse" in field.metadata}
    values: dict[str, Any] = {}
    if parser.has_section(name):
        for key, raw in parser.items(name):
            if key not in fields:
                raise ConfigError(f"{where}: [{name}] {key} = {raw!r}: unknown key; allowed keys: {', '.join(fields)}")
            try:
                values[key] = fields[key].metadata["parse"](raw)
            except ValueError as error:
                shown = "********" if fields[key].metadata["secret"] else raw
                raise ConfigError(f"{where}: [{name}] {key} = {shown!r}: {error}") from None
    return cls(**values)


def _read_api_key(where: str, base: Path, upstream: UpstreamConfig) -> UpstreamConfig:
    if upstream.api_key_file is None:
        return upstream
    if upstream.api_key is not None:
        raise ConfigError(
            f"{where}: [upstream] api_key_file = '{upstream.api_key_file}': set api_key or api_key_file, not both"
        )
    path = base / upstream.api_key_file
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"{where}: [upstream] api_key_file = '{path}': cannot read it ({error.__class__.__name__})"
        ) from None
    if not key:
        raise ConfigError(
            f"{where}: [upstream] api_key_file = '{path}': the file is empty; expected the key on one line"
        )
    return attrs.evolve(upstream, api_key=key, api_key_file=path)


def _read_client_keys(where: str, base: Path, server: ServerConfig) -> ServerConfig:
    if server.api_keys_file is None:
        if not is_loopback(server.host) and not server.allow_unauthenticated_remote:
            raise ConfigError(
                f"{where}: [server] host = '{server.host}': listening beyond loopback needs api_keys_file, "
                "or allow_unauthenticated_remote = true to accept anyone who can reach it"
            )
        return server
    path = base / server.api_keys_file
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"{where}: [server] api_keys_file = '{path}': cannot read it ({error.__class__.__name__})"
        ) from None
    keys = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ConfigError(f"{where}: [server] api_keys_file = '{path}': no keys in it; expected one key per line")
    return attrs.evolve(server, api_keys_file=path, api_keys=keys)


def is_loopback(address: str | None) -> bool:
    """A listening host or a peer address on this machine only (`localhost`, 127/8, ::1)."""
    if address == "localhost":
        return True
    try:
        return address is not None and ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check_repository(where: str, base: Path, repository: RepositoryConfig) -> RepositoryConfig:
    path = (base / repository.path).resolve()
    found = pygit2.discover_repository(str(path)) if path.is_dir() else None
    if found is None:
        raise ConfigError(f"{where}: [repository] path = '{path}': not a git repository (expected a git work tree)")
    repo = pygit2.Repository(found)
    if repo.is_bare or repo.workdir is None:
        raise ConfigError(f"{where}: [repository] path = '{path}': a bare repository; expected one with a work tree")
    return attrs.evolve(repository, path=Path(repo.workdir).resolve())


def needing_restart(old: Config, new: Config) -> list[tuple[str, str]]:
    """(section, key) of every changed option that a reload cannot apply."""
    changed = []
    for name in SECTIONS:
        before, after = getattr(old, name), getattr(new, name)
        for field in attrs.fields(type(before)):
            if field.metadata.get("restart") and getattr(before, field.name) != getattr(after, field.name):
                changed.append((name, field.name))
    return changed


def render_config(config: Config) -> str:
    """The effective configuration as INI text, secrets masked (for check-config)."""
    lines = [f"# loaded from: {config.source or '(built-in defaults)'}"]
    for name in SECTIONS:
        section = getattr(config, name)
        lines.append(f"\n[{name}]")
        for field in (field for field in attrs.fields(type(section)) if "parse" in field.metadata):
            shown = _show(getattr(section, field.name), field)
            lines.append(f"{field.name} =" + (shown if shown.startswith("\n") or not shown else f" {shown}"))
    return "\n".join(lines) + "\n"


def _show(value: Any, field: attrs.Attribute) -> str:  # type: ignore[type-arg]
    if value is None:
        return "auto" if field.metadata["parse"] is _tokens else ""
    if field.metadata["secret"]:
        return "********"
    if isinstance(value, bool):
        return "true" if value else "false"
    if field.metadata["parse"] in (_duration, _interval):
        return f"{value:g}s" if value else "off"
    if isinstance(value, tuple):
        return "".join(f"\n    {item}" for item in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
