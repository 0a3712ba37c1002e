"""Each provider export parses into bill rows with the provider's units converted; malformed
input names the file, line / bucket / result and what is wrong."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest

from ownership_ctx.reconcile.bills import BillError
from ownership_ctx.reconcile.importers import parse_bytes, parse_file

from .conftest import FIXTURES, GPT, HAIKU, HAIKU_BEDROCK


def test_openai_costs_dollars_from_json_numbers_exactly() -> None:
    batch = parse_file("openai-costs", FIXTURES / "openai_costs.jsonl")
    assert [(r.scope, r.model, r.line_item, r.cost) for r in batch.rows] == [
        ("proj_a", GPT, f"{GPT}, input", Decimal("0.70")),
        ("proj_a", GPT, f"{GPT}, output", Decimal("0.40")),
        ("proj_b", GPT, f"{GPT}, input", Decimal("0.25")),
    ]
    # Two pages (JSON lines); the second page's empty day-2 bucket still counts as covered.
    assert (batch.period_start, batch.period_end) == ("2026-11-02", "2026-11-04")
    assert len(batch.sha256) == 64


def test_openai_usage_tokens_and_requests() -> None:
    rows = parse_file("openai-usage", FIXTURES / "openai_usage.json").rows
    assert [(r.scope, r.api_key_id, r.input_tokens, r.output_tokens, r.requests) for r in rows] == [
        ("proj_a", "key_app", 1600, 400, 2),
        ("proj_b", "key_dark", 500, 0, 1),
    ]
    assert rows[0].cache_read_tokens == 200 and rows[0].cost is None


def test_anthropic_usage_adds_cache_back_into_input() -> None:
    rows = parse_file("anthropic-usage", FIXTURES / "anthropic_usage.json").rows
    first = rows[0]
    # uncached 1000 + cache read 1000 + cache creation 500 (5m) + 0 (1h)
    assert (first.input_tokens, first.cache_read_tokens, first.cache_write_tokens) == (
        2500,
        1000,
        500,
    )
    assert (first.scope, first.api_key_id, first.model) == ("wrkspc_1", "apikey_1", HAIKU)
    assert rows[1].scope == ""  # the default workspace reports workspace_id null


def test_anthropic_cost_amounts_are_cents() -> None:
    rows = parse_file("anthropic-cost", FIXTURES / "anthropic_cost.json").rows
    assert [r.cost for r in rows] == [Decimal("0.30"), Decimal("0.125")]


def test_bedrock_logs_per_request_with_owner_and_identity() -> None:
    rows = parse_file("bedrock-logs", FIXTURES / "bedrock_logs.jsonl").rows
    assert [r.request_id for r in rows] == ["req-1", "req-2", "req-3"]  # req-4 failed: unbilled
    assert rows[0].owner_team == "search" and rows[0].model == HAIKU_BEDROCK
    assert (rows[1].input_tokens, rows[1].cache_read_tokens) == (100, 20)  # 80 + 20 read
    assert rows[2].identity == "arn:aws:iam::111122223333:user/laptop"
    assert rows[2].scope == "111122223333" and rows[2].region == "us-east-1"


def test_bedrock_logs_gzipped_and_cloudwatch_export(tmp_path: Path) -> None:
    plain = (FIXTURES / "bedrock_logs.jsonl").read_bytes()
    assert len(parse_bytes("bedrock-logs", gzip.compress(plain), "x.gz").rows) == 3
    records = [line for line in plain.decode().splitlines() if line.strip()]
    export = json.dumps({"events": [{"timestamp": 1, "message": m} for m in records]})
    assert len(parse_bytes("bedrock-logs", export.encode(), "cw.json").rows) == 3


def test_cur_keeps_bedrock_usage_only() -> None:
    rows = parse_file("aws-cur", FIXTURES / "cur.csv").rows
    assert [(r.line_item, r.cost, r.scope, r.region) for r in rows] == [
        ("USE1-Claude3Haiku-input-tokens", Decimal("0.06"), "111122223333", "us-east-1"),
        ("USE1-Claude3Haiku-output-tokens", Decimal("0.07"), "111122223333", "us-east-1"),
    ]


def _costs(result: dict[str, object]) -> bytes:
    page = {
        "object": "page",
        "data": [{"start_time": 1793577600, "end_time": 1793664000, "results": [result]}],
        "has_more": False,
    }
    return json.dumps(page).encode()


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"amount": {"value": "x", "currency": "usd"}}, "bucket 1 result 1: 'amount.value'"),
        ({"amount": {"value": 1, "currency": "eur"}}, "currency 'eur' refused"),
        ({"line_item": "gpt-4o"}, "bucket 1 result 1: 'amount' is not a JSON object"),
    ],
)
def test_bad_openai_costs_name_the_place(result: dict[str, object], message: str) -> None:
    with pytest.raises(BillError, match=r"costs\.json: bucket 1 result 1") as caught:
        parse_bytes("openai-costs", _costs(result), "costs.json")
    assert message in str(caught.value)


def test_bad_json_line_names_the_line() -> None:
    data = (FIXTURES / "bedrock_logs.jsonl").read_bytes() + b'{"schemaType": \n'
    with pytest.raises(BillError, match=r"logs.jsonl:6: not JSON"):
        parse_bytes("bedrock-logs", data, "logs.jsonl")


def test_bad_json_says_what_and_where_in_whole_words() -> None:
    with pytest.raises(BillError) as caught:
        parse_bytes("openai-costs", b'{"data": []}\n{bad\n', "costs.jsonl")
    assert str(caught.value) == (
        "costs.jsonl:2: not JSON (Expecting property name enclosed in double quotes at column 2)"
    )


def test_negative_token_count_is_refused() -> None:
    text = (
        (FIXTURES / "anthropic_usage.json")
        .read_text()
        .replace('"output_tokens": 500', '"output_tokens": -5')
    )
    with pytest.raises(BillError, match="bucket 1 result 1: 'output_tokens' is not a whole number"):
        parse_bytes("anthropic-usage", text.encode(), "usage.json")


def test_cur_in_another_currency_is_refused() -> None:
    text = (FIXTURES / "cur.csv").read_text().replace("0.06,USD", "0.06,EUR")
    with pytest.raises(BillError, match=r"cur.csv:2: currency 'EUR' refused"):
        parse_bytes("aws-cur", text.encode(), "cur.csv")


def test_cur_without_its_columns_is_refused() -> None:
    with pytest.raises(BillError, match=r"cur\.csv:1: not a CUR 2\.0 CSV"):
        parse_bytes("aws-cur", b"a,b\n1,2\n", "cur.csv")


def test_empty_file_is_refused() -> None:
    with pytest.raises(BillError, match="empty"):
        parse_bytes("openai-usage", b"  \n", "u.json")


def test_openai_bucket_list_spelled_result_is_read_too() -> None:
    page = {
        "object": "page",
        "data": [
            {
                "start_time": 1793577600,
                "end_time": 1793664000,
                "result": [{"amount": {"value": 1.5, "currency": "usd"}, "line_item": "o3, input"}],
            }
        ],
    }
    (row,) = parse_bytes("openai-costs", json.dumps(page).encode(), "c.json").rows
    assert (row.model, row.cost) == ("o3", Decimal("1.5"))
