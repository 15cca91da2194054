"""Pure unit tests: targets, ids, statuses, events, routing, cursors, slugs, tokens, settings.

Nothing here touches a database, Redis or the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from runs.domain import events as ev
from runs.domain.errors import InvalidRequest
from runs.domain.projects import TOKEN_PREFIX, check_slug, hash_token, new_token_secret
from runs.domain.runs import (
    ACTIVE_STATUSES,
    RUN_ID_PATTERN,
    TERMINAL_STATUSES,
    Outcome,
    RunError,
    RunKind,
    RunStatus,
    check_run_id,
    check_target_matches_kind,
    new_run_id,
    parse_target,
)
from runs.messaging.routing import Router
from runs.persistence.cursors import decode_cursor, encode_cursor
from runs.settings import Settings

# -- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kind", "definition_id"),
    [
        ("task:echo", RunKind.TASK, "echo"),
        ("task:sync-data", RunKind.TASK, "sync-data"),
        ("task:a.b_c-d/e", RunKind.TASK, "a.b_c-d/e"),
        ("workflow:etl/daily", RunKind.WORKFLOW, "etl/daily"),
        ("eval:quality", RunKind.EVAL, "quality"),
        ("task:" + "x" * 200, RunKind.TASK, "x" * 200),
    ],
)
def test_a_good_target_splits_into_its_kind_and_definition_id(
    target: str, kind: RunKind, definition_id: str
) -> None:
    assert parse_target(target) == (kind, definition_id)


@pytest.mark.parametrize(
    "target",
    [
        "",
        "echo",
        "task",
        "task:",
        ":echo",
        "job:echo",
        "TASK:echo",
        "Task:echo",
        "task: echo",
        "task:echo now",
        "task:/echo",
        "task:-echo",
        "task:ü",
        "task:" + "x" * 201,
    ],
)
def test_a_malformed_target_is_refused_naming_the_field(target: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_target(target)
    assert caught.value.field == "request.target"
    assert "task:<id>" in caught.value.detail


def test_an_agent_target_is_refused_even_though_agent_is_a_kind() -> None:
    with pytest.raises(InvalidRequest):
        parse_target("agent:assistant")
    with pytest.raises(InvalidRequest):
        check_target_matches_kind(RunKind.AGENT, "agent:assistant")


@pytest.mark.parametrize(
    ("kind", "target", "definition_id"),
    [
        (RunKind.TASK, "task:echo", "echo"),
        (RunKind.WORKFLOW, "workflow:etl", "etl"),
        (RunKind.EVAL, "eval:quality", "quality"),
    ],
)
def test_a_target_that_agrees_with_its_kind_gives_back_the_definition_id(
    kind: RunKind, target: str, definition_id: str
) -> None:
    assert check_target_matches_kind(kind, target) == definition_id


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        (RunKind.TASK, "workflow:etl"),
        (RunKind.WORKFLOW, "task:echo"),
        (RunKind.TASK, "eval:quality"),
        (RunKind.EVAL, "task:echo"),
    ],
)
def test_a_wrong_kind_and_target_pair_is_refused_with_the_prefix_to_use(
    kind: RunKind, target: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_target_matches_kind(kind, target)
    assert caught.value.field == "request.target"
    assert f"'{kind.value}:'" in caught.value.detail


def test_a_malformed_target_is_refused_before_its_kind_is_compared() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_target_matches_kind(RunKind.TASK, "task:")
    assert "is not of the form" in caught.value.detail


def test_a_target_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        parse_target("task:echo\n")


# -- run ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_id",
    ["a", "7", "run_123", "run_0b8f0a52-6a57-4a52-9a0e-3f1f0c4b8a1e", "x:y.z-1_2", "r" * 128],
)
def test_a_safe_run_id_is_accepted_unchanged(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id",
    ["", "_run", "-run", ".run", ":run", "run/1", "run 1", "run?1", "rün", "r" * 129, "run\t"],
)
def test_an_unsafe_run_id_is_refused_naming_public_id(run_id: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_run_id(run_id)
    assert caught.value.field == "public_id"


def test_new_run_ids_are_unique_and_pass_their_own_check() -> None:
    ids = {new_run_id() for _ in range(100)}
    assert len(ids) == 100
    for run_id in ids:
        assert run_id.startswith("run_") and check_run_id(run_id) == run_id


def test_a_run_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        check_run_id("run_1\n")


# -- statuses and outcomes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (RunStatus.PENDING, False),
        (RunStatus.RUNNING, False),
        (RunStatus.WAITING, False),
        (RunStatus.COMPLETED, True),
        (RunStatus.FAILED, True),
        (RunStatus.CANCELLED, True),
    ],
)
def test_only_completed_failed_and_cancelled_are_terminal(
    status: RunStatus, terminal: bool
) -> None:
    assert status.is_terminal is terminal


def test_every_status_is_either_active_or_terminal_never_both() -> None:
    assert set(RunStatus) == ACTIVE_STATUSES | TERMINAL_STATUSES
    assert not ACTIVE_STATUSES & TERMINAL_STATUSES


def test_statuses_and_kinds_compare_equal_to_their_wire_strings() -> None:
    assert RunStatus("cancelled") is RunStatus.CANCELLED
    assert str(RunStatus.CANCELLED) == "cancelled" and RunStatus.CANCELLED.value == "cancelled"
    assert RunKind("workflow") is RunKind.WORKFLOW


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING])
def test_an_outcome_must_be_terminal(status: RunStatus) -> None:
    with pytest.raises(ValueError, match="terminal"):
        Outcome(status)


def test_a_run_error_leaves_out_what_it_does_not_know() -> None:
    assert RunError("boom").to_json() == {"message": "boom"}
    assert RunError("boom", code="E1", detail={"line": 3}).to_json() == {
        "message": "boom",
        "code": "E1",
        "detail": {"line": 3},
    }


# -- events vocabulary ---------------------------------------------------------------------


def test_a_completed_run_ends_with_run_finished() -> None:
    event = ev.terminal_event("completed")
    assert event.event_type == ev.RUN_FINISHED
    assert event.payload == {"type": "RUN_FINISHED", "status": "completed"}


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_failed_or_cancelled_run_ends_with_one_run_error(status: str) -> None:
    event = ev.terminal_event(status, "it broke")
    assert event.event_type == ev.RUN_ERROR
    assert event.payload == {"type": "RUN_ERROR", "status": status, "message": "it broke"}


def test_a_run_error_without_a_message_says_the_status() -> None:
    assert ev.terminal_event("cancelled").payload["message"] == "cancelled"


def test_a_run_starts_with_run_started_then_step_started_for_its_target() -> None:
    started = ev.started_events("task:echo")
    assert [e.event_type for e in started] == [ev.RUN_STARTED, ev.STEP_STARTED]
    assert started[1].payload == {
        "type": "STEP_STARTED",
        "stepName": "task:echo",
        "status": "running",
    }


def test_log_lines_and_step_ends_carry_their_type_in_the_payload() -> None:
    assert ev.log_event("hello").payload == {"type": "RUN_LOG_CAPTURED", "logs": "hello"}
    finished = ev.step_finished_event("task:echo", "failed")
    assert finished.payload == {
        "type": "STEP_FINISHED",
        "stepName": "task:echo",
        "status": "failed",
    }


def test_event_types_are_upper_snake_case_and_payload_types_agree() -> None:
    for event_type in ev.LIFECYCLE_EVENT_TYPES:
        assert event_type == event_type.upper() and " " not in event_type
    samples = [
        *ev.started_events("s"),
        ev.log_event("l"),
        ev.step_finished_event("s", "completed"),
        ev.terminal_event("completed"),
        ev.terminal_event("failed"),
    ]
    for sample in samples:
        assert sample.payload["type"] == sample.event_type
        assert sample.event_type in ev.LIFECYCLE_EVENT_TYPES


# -- routing -------------------------------------------------------------------------------


def test_a_target_goes_to_the_queue_of_the_first_matching_pattern() -> None:
    router = Router([("task:report-*", "reports"), ("task:*", "tasks")], "runs")
    assert router.queue_for("task:report-daily") == "reports"
    assert router.queue_for("task:echo") == "tasks"


def test_an_unmatched_target_goes_to_the_default_queue() -> None:
    router = Router([("task:report-*", "reports")], "runs")
    assert router.queue_for("workflow:report-daily") == "runs"
    assert router.default_queue == "runs"
    assert Router([], "fallback").queue_for("task:anything") == "fallback"


def test_patterns_are_fnmatch_globs_and_case_sensitive() -> None:
    router = Router([("task:v?", "short"), ("workflow:[ab]*", "ab"), ("*:gpu-*", "gpu")], "runs")
    assert router.queue_for("task:v1") == "short"
    assert router.queue_for("task:v10") == "runs"
    assert router.queue_for("workflow:alpha") == "ab"
    assert router.queue_for("workflow:gamma") == "runs"
    assert router.queue_for("eval:gpu-big") == "gpu"
    assert router.queue_for("TASK:v1") == "runs"


def test_the_same_target_always_goes_to_the_same_queue() -> None:
    router = Router([("task:a*", "a")], "runs")
    assert [router.queue_for("task:abc") for _ in range(3)] == ["a", "a", "a"]
    assert [router.queue_for("task:xyz") for _ in range(3)] == ["runs", "runs", "runs"]


def test_queues_lists_the_default_first_then_each_routed_queue_once_in_table_order() -> None:
    router = Router(
        [("task:a*", "alpha"), ("task:b*", "runs"), ("task:c*", "beta"), ("task:d*", "alpha")],
        "runs",
    )
    assert router.queues() == ["runs", "alpha", "beta"]
    assert Router([], "only").queues() == ["only"]


# -- list cursors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_a_cursor_round_trips_the_position_of_a_run(created_at: datetime) -> None:
    cursor = encode_cursor(created_at, "run_a:b.c-1")
    moment, run_id = decode_cursor(cursor)
    assert (moment, run_id) == (created_at, "run_a:b.c-1")
    assert moment.utcoffset() == created_at.utcoffset()


def test_a_cursor_is_url_safe_and_unpadded() -> None:
    cursor = encode_cursor(datetime(2026, 1, 1, tzinfo=UTC), "run_?&/=+" * 3)
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!!",
        "a",
        "not a cursor",
        _b64(b"not json"),
        _b64(b"null"),
        _b64(b"42"),
        _b64(b"[]"),
        _b64(b'{"a": 1}'),
        _b64(b'["2026-01-01T00:00:00+00:00"]'),
        _b64(b'["2026-01-01T00:00:00+00:00", "r", "extra"]'),
        _b64(b'["2026-01-01T00:00:00", "run_1"]'),  # naive
        _b64(b'["yesterday", "run_1"]'),
        _b64(b'[20260101, "run_1"]'),
        _b64(b'["2026-01-01T00:00:00+00:00", 7]'),
        _b64(b'["2026-01-01T00:00:00+00:00", null]'),
        _b64(b"\xff\xfe\xfd"),
        _b64(b"[" * 500),
    ],
)
def test_a_garbage_cursor_is_an_invalid_request_naming_the_cursor(cursor: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_cursor(cursor, key_pattern=RUN_ID_PATTERN)
    assert caught.value.field == "cursor"


def test_a_deeply_nested_garbage_cursor_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        decode_cursor(_b64(b"[" * 1000))


# -- projects and tokens -------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["a", "7", "acme", "my-project", "a1-b2-c3", "a" * 100])
def test_a_good_slug_is_accepted(slug: str) -> None:
    assert check_slug(slug) == slug


@pytest.mark.parametrize(
    "slug", ["", "-a", "a-", "Acme", "a_b", "a b", "a.b", "ü", "a" * 101, "a/b"]
)
def test_a_bad_slug_is_refused_naming_the_field(slug: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_slug(slug)
    assert caught.value.field == "slug"


def test_a_slug_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        check_slug("acme\n")


def test_a_token_is_stored_as_a_sha256_digest_not_in_clear() -> None:
    secret = new_token_secret()
    digest = hash_token(secret)
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert secret not in digest and secret.removeprefix(TOKEN_PREFIX) not in digest


def test_hashing_is_deterministic_and_tells_tokens_apart() -> None:
    secret = new_token_secret()
    assert hash_token(secret) == hash_token(secret)
    assert hash_token(secret) != hash_token(secret + "x")


def test_new_token_secrets_are_prefixed_and_unguessable() -> None:
    secrets_ = {new_token_secret() for _ in range(50)}
    assert len(secrets_) == 50
    for secret in secrets_:
        assert secret.startswith(TOKEN_PREFIX)
        assert len(secret) - len(TOKEN_PREFIX) >= 43  # 32 random bytes, base64url


# -- settings ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No RUNS_* variable of the developer's shell leaks into a settings test."""
    for name in list(os.environ):
        if name.upper().startswith("RUNS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)


def test_settings_have_working_defaults_without_any_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    loaded = settings()
    assert loaded.database_url.startswith("sqlite:///")
    assert loaded.default_queue == "runs" and loaded.route_table == []
    assert loaded.effective_broker_url == loaded.redis_url


def test_settings_are_read_from_runs_prefixed_variables_only(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("RUNS_DATABASE_URL", "postgresql://db/runs")
    clean_env.setenv("RUNS_API_PORT", "9001")
    clean_env.setenv("RUNS_DEFINITIONS", '["app.tasks", "app.flows"]')
    clean_env.setenv("DEFAULT_QUEUE", "not-mine")
    loaded = settings()
    assert loaded.database_url == "postgresql://db/runs"
    assert loaded.api_port == 9001
    assert loaded.definitions == ["app.tasks", "app.flows"]
    assert loaded.default_queue == "runs"


def test_the_broker_defaults_to_the_redis_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RUNS_REDIS_URL", "redis://cache:6379/3")
    loaded = settings()
    assert loaded.broker_url is None
    assert loaded.effective_broker_url == "redis://cache:6379/3"


def test_an_explicit_broker_url_wins_over_the_redis_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RUNS_REDIS_URL", "redis://cache:6379/3")
    clean_env.setenv("RUNS_BROKER_URL", "amqp://broker//")
    assert settings().effective_broker_url == "amqp://broker//"


def test_routes_come_from_a_json_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RUNS_ROUTES", '{"task:report-*": "reports"}')
    assert settings().route_table == [("task:report-*", "reports")]


def test_the_routing_file_is_matched_before_routes(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.toml"
    routing.write_text('[routes]\n"task:report-*" = "reports"\n"task:gpu-*" = "gpu"\n')
    clean_env.setenv("RUNS_ROUTING_FILE", str(routing))
    clean_env.setenv("RUNS_ROUTES", json.dumps({"task:*": "tasks", "task:gpu-*": "ignored"}))
    loaded = settings()
    assert loaded.routing_file == routing
    assert loaded.route_table == [
        ("task:report-*", "reports"),
        ("task:gpu-*", "gpu"),
        ("task:*", "tasks"),
        ("task:gpu-*", "ignored"),
    ]
    router = Router(loaded.route_table, loaded.default_queue)
    assert router.queue_for("task:gpu-train") == "gpu"
    assert router.queue_for("task:echo") == "tasks"
    assert router.queue_for("workflow:etl") == "runs"


def test_a_routing_file_without_routes_adds_nothing(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.toml"
    routing.write_text("# nothing routed yet\n")
    loaded = settings(routing_file=routing, routes={"task:*": "tasks"})
    assert loaded.route_table == [("task:*", "tasks")]


@pytest.mark.parametrize(
    "overrides",
    [
        {"default_page_size": 50, "max_page_size": 10},
        {"api_port": 70000},
        {"database_pool_size": 0},
        {"stream_ttl_seconds": 1},
    ],
)
def test_inconsistent_or_out_of_range_settings_are_refused(
    clean_env: pytest.MonkeyPatch, overrides: dict[str, object]
) -> None:
    with pytest.raises(ValidationError):
        settings(**overrides)


def test_settings_ignore_unknown_runs_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RUNS_SOMETHING_ELSE", "x")
    assert settings().default_queue == "runs"
