"""The INI file: defaults, parsing, and refusing bad configurations with a precise message."""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs
import pygit2
import pytest

from scout_diff_cache.config import (
    DEFAULT_EXCLUDE,
    SECTIONS,
    default_locations,
    find_config,
    is_loopback,
    load_config,
    render_config,
)
from scout_diff_cache.errors import ConfigError

from support import GitRepo, write_config


def test_built_in_defaults_use_the_current_directory(git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(git_repo.path / "src")
    config = load_config(None)
    assert config.source is None
    assert config.repository.path == git_repo.path.resolve()
    assert config.server.port == 8787 and config.server.host == "127.0.0.1"
    assert config.upstream.url == "http://127.0.0.1:8000/v1"
    assert config.upstream.first_byte_timeout == 600 and config.upstream.idle_timeout == 120
    assert config.repository.max_file_bytes == 512 * 1024
    assert config.repository.max_snapshot_bytes == 64 * 1024 * 1024
    assert config.repository.exclude == DEFAULT_EXCLUDE
    assert config.context.inject is True


def test_sizes_durations_and_lists_are_parsed(tmp_path: Path, git_repo: GitRepo) -> None:
    path = write_config(
        tmp_path,
        {
            "server": {"max_body_bytes": "2 MiB", "sse_keepalive_interval": "1500ms"},
            "upstream": {
                "url": "http://127.0.0.1:9000/v1/",
                "first_byte_timeout": "20m",
                "idle_timeout": "45",
                "passthrough_routes": "files, batches\nimages/generations",
            },
            "repository": {
                "path": str(git_repo.path),
                "exclude": "*.log\n/generated/\n!keep.log",
                "max_file_bytes": "1GiB",
            },
        },
    )
    config = load_config(path)
    assert config.source == path
    assert config.server.max_body_bytes == 2 * 1024 * 1024
    assert config.server.sse_keepalive_interval == 1.5
    assert config.upstream.url == "http://127.0.0.1:9000/v1"
    assert config.upstream.first_byte_timeout == 1200 and config.upstream.idle_timeout == 45
    assert config.upstream.passthrough_routes == ("files", "batches", "images/generations")
    assert config.repository.exclude == ("*.log", "/generated/", "!keep.log")
    assert config.repository.max_file_bytes == 1024**3


def test_a_relative_repository_path_is_relative_to_the_config_file(tmp_path: Path, git_repo: GitRepo) -> None:
    path = write_config(tmp_path, {"repository": {"path": "repo"}})
    assert load_config(path).repository.path == git_repo.path.resolve()


@pytest.mark.parametrize(
    ("section", "key", "value", "allowed"),
    [
        ("server", "port", "99999", "TCP port from 1 to 65535"),
        ("server", "max_body_bytes", "12 parsecs", "KiB, MiB or GiB"),
        ("server", "log_level", "chatty", "debug, info, warning, error"),
        ("upstream", "url", "ftp://example", "http:// or https://"),
        ("upstream", "first_byte_timeout", "soon", "duration"),
        ("upstream", "idle_timeout", "0", "positive duration"),
        ("upstream", "max_connections", "-3", "at least 1"),
        ("upstream", "context_window", "lots", "expected auto or a whole number of tokens"),
        ("upstream", "context_window", "0", "of at least 1"),
        ("upstream", "passthrough_routes", "files ../slots", "'..' segment; expected routes under /v1"),
        ("upstream", "passthrough_routes", "/v1/files", "empty segment"),
        ("upstream", "passthrough_routes", "files%2f..", "percent-encoding"),
        ("upstream", "chat_template_kwargs", '["date_string"]', "expected a JSON object"),
        ("upstream", "chat_template_kwargs", "{date_string: 1}", "expected a JSON object"),
        ("upstream", "prompt", "ids", "expected text, tokens or auto"),
        ("repository", "exclude", "[unclosed", "unclosed '['"),
        ("context", "inject", "maybe", "true or false"),
    ],
)
def test_a_bad_value_names_file_section_key_value_and_what_is_allowed(
    tmp_path: Path, git_repo: GitRepo, section: str, key: str, value: str, allowed: str
) -> None:
    values = {section: {key: value}}
    values.setdefault("repository", {}).setdefault("path", str(git_repo.path))
    path = write_config(tmp_path, values)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: [{section}] {key} = {value!r}: ")
    assert allowed in message
    assert "\n" not in message


def test_unknown_sections_and_keys_are_refused(tmp_path: Path, git_repo: GitRepo) -> None:
    with pytest.raises(ConfigError, match=r"\[proxy\] unknown section; allowed sections: server, upstream"):
        load_config(write_config(tmp_path, {"proxy": {"port": "1"}}))
    with pytest.raises(ConfigError, match=r"\[upstream\] timeout = '5': unknown key; allowed keys: url, api_key"):
        load_config(write_config(tmp_path, {"upstream": {"timeout": "5"}}))


def test_api_key_and_api_key_file_together_are_refused(tmp_path: Path, git_repo: GitRepo) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-file\n")
    path = write_config(
        tmp_path, {"upstream": {"api_key": "sk-inline", "api_key_file": str(key_file)}, "repository": {"path": "repo"}}
    )
    with pytest.raises(ConfigError, match="not both") as caught:
        load_config(path)
    assert "sk-inline" not in str(caught.value) and "sk-file" not in str(caught.value)


def test_an_unreadable_key_file_is_refused(tmp_path: Path, git_repo: GitRepo) -> None:
    path = write_config(tmp_path, {"upstream": {"api_key_file": "missing.key"}, "repository": {"path": "repo"}})
    with pytest.raises(ConfigError, match=r"\[upstream\] api_key_file = '.*missing.key': cannot read it"):
        load_config(path)


def test_the_key_file_is_read_and_stripped(tmp_path: Path, git_repo: GitRepo) -> None:
    (tmp_path / "up.key").write_text("  sk-from-file \n")
    config = load_config(
        write_config(tmp_path, {"upstream": {"api_key_file": "up.key"}, "repository": {"path": "repo"}})
    )
    assert config.upstream.api_key == "sk-from-file"
    assert "sk-from-file" not in repr(config)


def test_a_path_that_is_not_a_repository_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    path = write_config(tmp_path, {"repository": {"path": "plain"}})
    with pytest.raises(ConfigError, match=r"\[repository\] path = '.*plain': not a git repository"):
        load_config(path)


def test_a_bare_repository_is_refused(tmp_path: Path) -> None:
    pygit2.init_repository(str(tmp_path / "bare.git"), bare=True)
    path = write_config(tmp_path, {"repository": {"path": "bare.git"}})
    with pytest.raises(ConfigError, match=r"\[repository\] path = '.*bare.git': a bare repository"):
        load_config(path)


def test_an_invalid_ini_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scout.ini"
    path.write_text("port = 1\n")
    with pytest.raises(ConfigError, match="not a valid INI file"):
        load_config(path)


def test_config_search_order(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    candidates = default_locations(cwd, home, None)
    assert candidates[0] == cwd / "scout.ini"
    assert candidates[1] == home / ".config" / "scout-diff-cache" / "scout.ini"
    assert candidates[2] == Path("/etc/scout-diff-cache/scout.ini")
    assert default_locations(cwd, home, str(tmp_path / "xdg"))[1] == tmp_path / "xdg" / "scout-diff-cache" / "scout.ini"

    assert find_config(None, candidates[:2]) is None
    candidates[1].parent.mkdir(parents=True)
    candidates[1].write_text("")
    assert find_config(None, candidates[:2]) == candidates[1]
    cwd.mkdir()
    candidates[0].write_text("")
    assert find_config(None, candidates[:2]) == candidates[0]
    with pytest.raises(ConfigError, match="config file not found"):
        find_config(tmp_path / "nope.ini", candidates)


def test_rendered_config_masks_secrets(tmp_path: Path, git_repo: GitRepo) -> None:
    config = load_config(
        write_config(tmp_path, {"upstream": {"api_key": "sk-very-secret"}, "repository": {"path": "repo"}})
    )
    text = render_config(config)
    assert "sk-very-secret" not in text
    assert "api_key = ********" in text
    assert f"path = {git_repo.path.resolve()}" in text
    assert os.linesep.join(["exclude =", "    *.lock"]) in text


def test_the_example_file_lists_every_option_with_its_default(
    tmp_path: Path, git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = (Path(__file__).parent.parent / "scout.ini.example").read_text()
    uncommented: list[str] = []
    in_list = False
    for line in example.splitlines():
        if in_list and re.fullmatch(r"#     \S+", line):
            uncommented.append(line[2:])
            continue
        in_list = False
        if re.fullmatch(r"# [a-z_]+ =( .*)?", line):
            uncommented.append(line[2:])
            in_list = line.endswith("=")
        elif line.startswith("["):
            uncommented.append(line)
    text = "\n".join(uncommented)
    path = tmp_path / "example.ini"
    text = re.sub(r"^[a-z_]+ =\n(?!    )", "", text + "\n", flags=re.M)  # options unset by default
    path.write_text(text.replace("path = /home/me/src/project", f"path = {git_repo.path}"))
    monkeypatch.chdir(git_repo.path)
    from_example = load_config(path)
    defaults = load_config(None)
    for section in ("server", "upstream", "repository", "context"):
        assert getattr(from_example, section) == getattr(defaults, section), section
    for name, cls in SECTIONS.items():
        section_text = example.split(f"[{name}]")[1].split("\n[")[0]
        for field in attrs.fields(cls):
            if "parse" in field.metadata:  # an INI key, not a value derived from one
                assert f"\n# {field.name} =" in section_text, (name, field.name)


def test_admin_routes_are_for_loopback_clients() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.10")
    assert not is_loopback("192.168.1.20") and not is_loopback(None) and not is_loopback("not an address")
