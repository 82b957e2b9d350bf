"""Settings from flags, environment and .env; ``--help``; configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.cli import FLAGS, build_parser, env_names, settings_from_args
from node_agent.main import main
from node_agent.settings import RENAMED, AgentSettings
from shared.enums import WorkUnitKind


def from_argv(*argv: str) -> AgentSettings:
    return settings_from_args(build_parser().parse_args(list(argv)))


def test_every_documented_variable_sets_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KRAKO_CONTROL_PLANE_URL": "http://cp:9000",
        "KRAKO_NODE_JOIN_TOKEN": "jt",
        "KRAKO_NODE_ID": "node-7",
        "KRAKO_AGENT_KINDS": "cpu",
        "KRAKO_REGION": "us-east",
        "KRAKO_MAX_CONCURRENCY": "16",
        "KRAKO_LLM_PROVIDER": "openai",
        "KRAKO_POLLS": "6",
        "KRAKO_POLL_WAIT_S": "2.5",
        "KRAKO_OPENAI_BASE_URL": "http://vllm:8000/v1",
        "KRAKO_OPENAI_API_KEY": "sk-x",
        "KRAKO_OPENAI_MODEL": "llama-3",
        "KRAKO_AGENT_HANDLERS": "a=mod:fa, b=mod.sub:fb",
        "KRAKO_AGENT_LABELS": "rack=r1,gpu=none",
        "KRAKO_SHUTDOWN_GRACE_S": "7",
        "KRAKO_LOG_FORMAT": "json",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = from_argv()
    assert s.control_plane_url == "http://cp:9000"
    assert s.node_join_token is not None and s.node_join_token.get_secret_value() == "jt"
    assert s.node_id == "node-7" and s.region == "us-east"
    assert s.agent_kinds == [WorkUnitKind.CPU]
    assert s.max_concurrency == 16 and s.polls == 6 and s.poll_wait_s == 2.5
    assert s.llm_provider == "openai" and s.llm_model == "llama-3"
    assert s.openai_base_url == "http://vllm:8000/v1"
    assert s.openai_api_key is not None and s.openai_api_key.get_secret_value() == "sk-x"
    assert s.handler_specs() == [("a", "mod:fa"), ("b", "mod.sub:fb")]
    assert s.agent_labels == {"rack": "r1", "gpu": "none"}
    assert s.shutdown_grace_s == 7 and s.log_format == "json"


def test_agent_only_settings_have_agent_names_and_keep_their_old_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert set(RENAMED) <= set(AgentSettings.model_fields)
    for field, old in RENAMED.items():
        assert env_names(field) == [f"KRAKO_AGENT_{field.upper()}", old]
    new_names = {
        "KRAKO_AGENT_CLAIM_MODE": "explicit",
        "KRAKO_AGENT_UNIT_TIMEOUT_S": "11",
        "KRAKO_AGENT_SHUTDOWN_GRACE_S": "12",
        "KRAKO_AGENT_REPORT_GRACE_S": "13",
        "KRAKO_AGENT_BACKOFF_INITIAL_S": "0.25",
        "KRAKO_AGENT_BACKOFF_MAX_S": "14",
        "KRAKO_AGENT_HTTP_TIMEOUT_S": "15",
        "KRAKO_AGENT_POLL_TIMEOUT_MARGIN_S": "16",
        "KRAKO_AGENT_LOG_LEVEL": "warning",
        "KRAKO_AGENT_LOG_FORMAT": "json",
    }
    assert set(new_names) == {f"KRAKO_AGENT_{f.upper()}" for f in RENAMED}
    with monkeypatch.context() as m:
        for name, value in new_names.items():
            m.setenv(name, value)
        s = from_argv()
    assert s.claim_mode == "explicit" and s.unit_timeout_s == 11
    assert (s.shutdown_grace_s, s.report_grace_s) == (12, 13)
    assert (s.backoff_initial_s, s.backoff_max_s) == (0.25, 14)
    assert (s.http_timeout_s, s.poll_timeout_margin_s) == (15, 16)
    assert (s.log_level, s.log_format) == ("WARNING", "json")

    # both set: the agent's name wins, in the environment and in .env alike
    monkeypatch.setenv("KRAKO_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("KRAKO_AGENT_LOG_LEVEL", "DEBUG")
    assert from_argv().log_level == "DEBUG"
    monkeypatch.delenv("KRAKO_AGENT_LOG_LEVEL")
    assert from_argv().log_level == "ERROR"  # the old name alone still works
    monkeypatch.delenv("KRAKO_LOG_LEVEL")
    (tmp_path / ".env").write_text("KRAKO_HTTP_TIMEOUT_S=3\nKRAKO_AGENT_HTTP_TIMEOUT_S=4\n")
    assert AgentSettings().http_timeout_s == 4  # the fixture chdir'ed into tmp_path
    # a flag still beats both
    assert from_argv("--http-timeout", "5").http_timeout_s == 5


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRAKO_MAX_CONCURRENCY", "16")
    monkeypatch.setenv("KRAKO_AGENT_KINDS", "cpu")
    s = from_argv(
        "--max-concurrency",
        "2",
        "--kinds",
        "llm_pod,cpu",
        "--control-plane",
        "http://x",
        "--join-token",
        "t",
        "--handler",
        "a=m:f",
        "--handler",
        "b=m:g",
        "--polls",
        "3",
        "--poll-wait",
        "0",
        "--llm-provider",
        "stub",
        "--llm-prices",
        '{"m": ["1", "2"]}',
    )
    assert s.max_concurrency == 2
    assert s.agent_kinds == [WorkUnitKind.LLM_POD, WorkUnitKind.CPU]
    assert s.agent_handlers == ["a=m:f", "b=m:g"]
    assert s.polls == 3 and s.poll_wait_s == 0
    assert s.llm_prices == {"m": ("1", "2")}


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KRAKO_REGION=from-dotenv\nKRAKO_DATABASE_URL=ignored\n")
    assert AgentSettings().region == "from-dotenv"  # the fixture chdir'ed into tmp_path


def test_help_documents_every_flag_and_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in FLAGS:
        assert flag.flags[0] in text
    for field in AgentSettings.model_fields:
        for env in env_names(field):
            assert env in text, f"{env} is not in --help"
    for old in RENAMED.values():
        assert f"(alias {old})" in text
    for required in (
        "--control-plane",
        "--join-token",
        "--node-id",
        "--kinds",
        "--region",
        "--max-concurrency",
        "--llm-provider",
        "--polls",
        "--poll-wait",
        "--handler",
        "--grace-period",
        "--log-level",
        "--state-dir",
    ):
        assert required in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--kinds", "gpu"],
        ["--poll-wait", "31"],
        ["--max-concurrency", "0"],
        ["--handler", "no-colon=module"],
        ["--labels", "novalue"],
        ["--node-id", "bad id!"],
        ["--log-level", "chatty"],
        ["--backoff-initial", "5", "--backoff-max", "1"],
    ],
)
def test_bad_settings_exit_with_code_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--join-token", "t", *argv]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_missing_join_token_exits_with_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--control-plane", "http://127.0.0.1:9"]) == 2
    assert "KRAKO_NODE_JOIN_TOKEN" in capsys.readouterr().err


def test_bad_handler_module_exits_with_code_2(tmp_path: Path) -> None:
    code = main(
        [
            "--join-token",
            "t",
            "--handler",
            "x=no_such_module_abc:f",
            "--state-dir",
            str(tmp_path / "s"),
        ]
    )
    assert code == 2
