"""Budget files: what they describe, and a clear error naming the line when they are wrong."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ownership_ctx import Keys
from ownership_ctx.budgets import BudgetConfigError, Budgets, MemoryCounters, load, loads
from ownership_ctx.hashing import hash_identifier

KEY = b"budget-tests-hash-key-0123456789"

GOOD = """\
[settings]
fail = "closed"
refresh = 0.5
edge = "observe"

[[budget]]
name = "support-monthly"
team = "support"
period = "month"
limit = "500.00"
soft = 400
webhook = "https://hooks.example.com/budget"

[[budget]]
name = "acme-daily"
tenant = "acme-corp"
period = "day"
limit = 5

[[budget]]
name = "per-tenant"
team = "search"
each = ["tenant"]
period = "week"
limit = "2.5"
"""


def test_a_file_describes_budgets_and_where_they_are_enforced() -> None:
    config = loads(GOOD, keys=Keys(hash_key=KEY))
    monthly, acme, per_tenant = config.budgets
    assert (monthly.name, monthly.period, monthly.limit, monthly.soft) == (
        "support-monthly",
        "month",
        Decimal("500.00"),
        Decimal("400"),
    )
    assert monthly.match == {"owner_team": "support"}
    assert acme.match == {"tenant": hash_identifier("acme-corp", KEY)}  # raw ids are hashed
    assert per_tenant.each == ("tenant",)
    built = config.build()
    assert isinstance(built, Budgets) and isinstance(built.counters, MemoryCounters)
    assert built.fail == "closed" and built.refresh == 0.5
    assert built.enforcement == {"edge": "observe", "queue": "enforce", "metering": "enforce"}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[[budget]]\nname = "a"\nlimit = 5 5\n', 3, "not valid TOML"),
        (
            '[[budget]]\nname = "a"\nlimit = 1\n\n[[budget]]\nname = "b"\nperiod = "year"\n'
            "limit = 1\n",
            7,
            "period must be day, week or month",
        ),
        ('[[budget]]\nname = "a"\nlimit = "ten"\n', 3, "limit is not a number"),
        ('[[budget]]\nname = "a"\nlimit = 1\nsoft = 2\n', 4, "soft must not exceed limit"),
        ('[[budget]]\nname = "a"\nlimit = 1\nteams = "x"\n', 4, "unknown key 'teams'"),
        ('[[budget]]\nname = "a"\nteam = "no spaces"\nlimit = 1\n', 3, "team"),
        ('[[budget]]\nname = "a"\nlimit = 1\n[[budget]]\nname = "a"\nlimit = 2\n', 5, "used twice"),
        ('[settings]\nfail = "maybe"\n', 2, 'fail must be "open" or "closed"'),
        ('[settings]\nbackend = "memory"\nrefresh = 0\n', 3, "refresh"),
        ("[[budget]]\nlimit = 1\n", 1, "needs a name"),
        ('[[budget]]\nname = "a"\nlimit = 1\nwebhook = "ftp://x"\n', 4, "webhook"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(BudgetConfigError) as caught:
        loads(text, path="budgets.toml", keys=Keys(hash_key=KEY))
    message = str(caught.value)
    assert message.startswith(f"budgets.toml:{line}: "), message
    assert words in message


def test_a_raw_tenant_without_a_hash_key_is_refused_at_startup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OWNERSHIP_CTX_HASH_KEY", raising=False)
    with pytest.raises(BudgetConfigError, match="OWNERSHIP_CTX_HASH_KEY") as caught:
        loads('[[budget]]\nname = "a"\ntenant = "acme"\nlimit = 1\n', path="b.toml")
    assert str(caught.value).startswith("b.toml:3: ")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("backend = 5", 'backend must be "memory" or a redis://, rediss:// or unix:// URL'),
        ('backend = "memcached://x"', 'backend must be "memory" or a redis://'),
        ("prefix = 3", "prefix must be a non-empty string"),
        ('store = ""', "store must be a non-empty string"),
    ],
)
def test_settings_of_the_wrong_kind_name_their_line(line: str, message: str) -> None:
    text = f'# budgets\n[settings]\n{line}\n\n[[budget]]\nname = "all"\nlimit = 1\n'
    with pytest.raises(BudgetConfigError) as caught:
        loads(text, path="b.toml")
    assert str(caught.value).startswith(f"b.toml:3: {message}")


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BudgetConfigError, match="cannot read"):
        load(tmp_path / "nope.toml")


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_bytes(b'[[budget]]\nname = "caf\xe9"\n')
    with pytest.raises(BudgetConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 22)"


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[[budget]]\nname = "all"\nlimit = "10"\n')
    (budget,) = load(path).budgets
    assert budget.match == {} and budget.period == "month"
