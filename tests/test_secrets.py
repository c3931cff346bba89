"""Secrets never leave the box: a corpus of real-format fake secrets, in snapshot and diff."""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import string
from pathlib import Path

import pytest

from scout_diff_cache.git.secrets import CONFIG_LIKE, PLACEHOLDER, RULES, matches, placeholder, redact

from support import FakeUpstream, GitRepo, ProxyFactory, header_of, injected, run_cli, write_config

RNG = random.Random(20261126)


def pick(alphabet: str, length: int) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(length))


UPPER_DIGITS = string.ascii_uppercase + string.digits
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


def pem(kind: str) -> str:
    body = "\n".join(pick(B64, 64) for _ in range(6))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"


def jwt() -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': pick(ALNUM, 12), 'admin': True})}.{pick(URLSAFE, 43)}"


def corpus() -> list[tuple[str, str, str, str]]:
    """(rule, file, file text, the secret value that must never be sent)."""
    items = []
    for kind in ("RSA PRIVATE KEY", "OPENSSH PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "PGP PRIVATE KEY BLOCK"):
        key = pem(kind)
        items.append(("private-key", f"keys/{kind.split()[0].lower()}.txt", f"notes\n{key}\nmore notes\n", key))
    service_key = pem("PRIVATE KEY").replace("\n", "\\n")
    account = f'{{"type": "service_account", "project_id": "demo", "private_key": "{service_key}"}}'
    items.append(("private-key", "deploy/service-account.json", account + "\n", service_key))
    akid = "AKIA" + pick(UPPER_DIGITS, 16)
    items.append(("aws-access-key-id", "src/settings.py", f'AWS_ACCESS_KEY_ID = "{akid}"\n', akid))
    secret = pick(B64, 40)
    items.append(("aws-secret-access-key", "src/aws.py", f'aws_secret_access_key = "{secret}"\n', secret))
    items.append(("aws-secret-access-key", "deploy/aws.yaml", f"aws_secret_access_key: {(s2 := pick(B64, 40))}\n", s2))
    gkey = "AIza" + pick(URLSAFE, 35)
    items.append(("google-api-key", "web/maps.js", f'const key = "{gkey}";\n', gkey))
    for token in ("ghp_" + pick(ALNUM, 36), "gho_" + pick(ALNUM, 36), "github_pat_" + pick(ALNUM + "_", 82)):
        items.append(("github-token", "ci/release.sh", f"export GH_TOKEN={token}\n", token))
    glpat = "glpat-" + pick(URLSAFE, 20)
    items.append(("gitlab-token", "docs/ci.md", f"Use `{glpat}` to push.\n", glpat))
    slack = f"xoxb-{pick(string.digits, 12)}-{pick(string.digits, 13)}-{pick(ALNUM, 24)}"
    items.append(("slack-token", "bots/slack.py", f'TOKEN = "{slack}"\n', slack))
    hook = f"https://hooks.slack.com/services/T{pick(UPPER_DIGITS, 8)}/B{pick(UPPER_DIGITS, 10)}/{pick(ALNUM, 24)}"
    items.append(("slack-webhook", "bots/notify.toml", f'url = "{hook}"\n', hook))
    for prefix in ("sk_live_", "rk_live_", "sk_test_"):
        stripe = prefix + pick(ALNUM, 24)
        items.append(("stripe-key", "billing/keys.py", f"STRIPE = '{stripe}'\n", stripe))
    token = jwt()
    items.append(("jwt", "tests/fixtures/session.txt", f"Authorization: Bearer {token}\n", token))
    password = pick(ALNUM, 18)
    items.append(
        ("password-in-url", "src/db.py", f'URL = "postgresql://app:{password}@db.internal:5432/app"\n', password)
    )
    for name, text_of in (
        ("config/app.yaml", lambda v: f"database:\n  password: {v}\n"),
        ("config/app.ini", lambda v: f"[api]\napi_key = {v}\n"),
        ("config/app.json", lambda v: json.dumps({"client_secret": v}) + "\n"),
        ("config/prod.properties", lambda v: f"auth.token={v}\n"),
    ):
        value = pick(ALNUM, 24)
        items.append(("assigned-secret", name, text_of(value), value))
    return items


CORPUS = corpus()


def write_corpus(repo: GitRepo, prefix: str = "") -> None:
    texts: dict[str, str] = {}
    for _, name, text, _ in CORPUS:
        texts[prefix + name] = texts.get(prefix + name, "") + text
    for name, text in texts.items():
        repo.write(name, text)


def test_every_rule_is_in_the_corpus_and_every_secret_is_caught_alone() -> None:
    from scout_diff_cache.git.secrets import RULES

    assert {rule.name for rule in RULES} == {rule for rule, *_ in CORPUS}
    for rule, name, text, value in CORPUS:
        redacted, findings = redact(name, text)
        assert value not in redacted, (rule, name)
        assert [finding.rule for finding in findings] == [rule], (name, findings)
        assert placeholder(rule, value) in redacted


async def test_secrets_in_the_snapshot_and_the_diff_never_reach_the_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo, caplog: pytest.LogCaptureFixture
) -> None:
    write_corpus(git_repo)
    git_repo.commit("the corpus, committed")
    write_corpus(git_repo, prefix="new/")  # and again as untracked files
    client = await make_proxy()
    with caplog.at_level(logging.WARNING):
        snapshot, diff = await injected(client, upstream)
        again, _ = await injected(client, upstream)
    body = upstream.seen[0].raw.decode()
    caught = sum(value not in body for *_, value in CORPUS)
    assert caught == len(CORPUS)  # recall: 100%, in the snapshot and in the diff
    assert snapshot == again  # placeholders are deterministic: the prefix cache still works
    for rule, _, _, value in CORPUS:
        assert placeholder(rule, value) in snapshot
    # the diff screens whole files, so a secret has the same placeholder there as in the snapshot
    assert {rule for rule, *_ in CORPUS} == set(re.findall(r"\[REDACTED:([a-z-]+):[0-9a-f]{8}\]", diff))
    log = caplog.text
    assert "secrets found, redacted" in log and "src/db.py:1 (password-in-url)" in log
    assert not any(value in log for *_, value in CORPUS)


def full_scan(path: str, text: str) -> list[tuple[int, int, int, str]]:
    """Every rule over the whole text, as the scan was before it looked only at anchored lines."""
    config_like, lowered, found = CONFIG_LIKE.search(path) is not None, text.lower(), []
    for rank, rule in enumerate(RULES):
        if (rule.config_only and not config_like) or not any(hint in lowered for hint in rule.hints):
            continue
        for match in rule.pattern.finditer(text):
            value = match.group(rule.group)
            if value and not (rule.group and PLACEHOLDER.match(value)):
                found.append((match.start(rule.group), rank, match.end(rule.group), rule.name))
    return sorted(found)


def test_scanning_only_the_anchored_lines_finds_what_a_full_scan_finds() -> None:
    texts = [text for _, _, text, _ in corpus()]
    url = "postgres://admin:s3cretpass@db.example.com/app"
    texts += [
        url,
        f"x{url}",
        f"\u0130{url} and ghp_{'a' * 36}",
        f"a=https://u:p4ssword1@h/x\nsk_live_{'b' * 20}\r\nAKIA{'C' * 16}x AKIA{'D' * 16}",
        "see ://not-a-url and https://example.org/a:b@c/ and eyJ" + "e" * 20,
        "AIza" + "f" * 35 + "\n" + "AIza" + "g" * 34,
    ]
    key = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/=="
    texts += [
        f"my_aws_secret_access_key = '{key}'",
        f"AWS_SECRET_ACCESS_KEY={key}x",
        f"awsaws sk:\n\n  {key}",
        "db.password: hunter2hunter2\nAPI-KEY = abcdefghijk\ntoken_secret=abcdefgh12345",
        "x.y-z.passwd\n  =  'abcdefghij'\npassword=changeme\nkeykeykey=abcdefghij # k",
    ]
    texts += ["\n".join(texts), "\r\n".join(texts) + "\n", "\u0130 " + "\n".join(texts)]
    for text in texts:
        for path in ("src/app.py", "deploy/app.yaml"):
            assert sorted(matches(path, text)) == full_scan(path, text), text


def test_trying_a_pattern_only_where_a_match_can_start_finds_what_a_full_scan_finds() -> None:
    """Random assignments pieced together from the words the rules look for, their separators and values."""
    words = ["db", "my", "aws", "AWS", "x1", "api", "access", "pass", "word", "secret", "sk", "token", "Key", "PASSWD"]
    values = ["AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/==", "hunter2hunter2", "changeme", "x1", "${VAR}", "s3cr3t-v4lue"]
    rng = random.Random(9)

    def statement() -> str:
        name = "".join(rng.choice(words) + rng.choice(["_", "-", ".", " ", ""]) for _ in range(rng.randint(1, 4)))
        quote, space = rng.choice(["", "'", '"']), rng.choice(["", " ", "\n", "\t  "])
        value, end = rng.choice(values), rng.choice(["", quote, " # c", "\n"])
        return f"{name}{quote}{space}{rng.choice('=:')}{space}{quote}{value}{end}"

    for _ in range(3000):
        text = rng.choice(["", "\u0130 "]) + "\n".join(statement() for _ in range(rng.randint(1, 4)))
        for path in ("src/app.py", "deploy/app.yaml"):
            assert sorted(matches(path, text)) == full_scan(path, text), text


def test_inspect_lists_findings_without_values(tmp_path: Path, git_repo: GitRepo) -> None:
    write_corpus(git_repo)
    git_repo.commit("corpus")
    config = write_config(tmp_path, {"repository": {"path": "repo"}, "context": {"state_dir": "state"}})
    out = run_cli("inspect", "--config", str(config)).stdout
    assert "snapshot  src/db.py:1  password-in-url" in out and "snapshot  config/app.yaml:2  assigned-secret" in out
    assert not any(value in out for *_, value in CORPUS)


async def test_exclude_file_mode_leaves_out_files_that_hold_a_secret(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    write_corpus(git_repo)
    git_repo.commit("corpus")
    git_repo.write("new/leak.py", f"KEY = '{CORPUS[0][3]}'\n")
    snapshot, diff = await injected(await make_proxy(security={"secrets": "exclude-file"}), upstream)
    assert "holds a secret: src/db.py (1 found)" in snapshot and "=== file: src/db.py" not in snapshot
    assert "new/leak.py" in diff and "contents not shown" in diff
    assert not any(value in snapshot + diff for *_, value in CORPUS)


async def test_files_that_are_secrets_by_name_are_left_out_unless_scanning_is_off(
    make_proxy: ProxyFactory, upstream: FakeUpstream, git_repo: GitRepo
) -> None:
    for name in (
        ".env",
        ".env.production",
        "deploy/server.pem",
        "id_rsa",
        "keys/tls.key",
        "credentials-prod.json",
        ".netrc",
    ):
        git_repo.write(name, f"CONTENT-OF {name}\n")
    git_repo.commit("secret files")
    git_repo.write(".env.local", "CONTENT-OF .env.local\n")
    snapshot, diff = await injected(await make_proxy(), upstream)
    assert "CONTENT-OF" not in snapshot + diff
    assert "secret by its name: .env (not read)" in snapshot and "secret by its name: id_rsa (not read)" in snapshot
    assert header_of(diff, ".env.local") == "added, contents not shown: secret by its name (not read)"
    upstream.seen.clear()
    plain, _ = await injected(await make_proxy(security={"secrets": "off"}), upstream)
    assert "CONTENT-OF .env" in plain
