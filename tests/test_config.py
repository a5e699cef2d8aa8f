"""config.py: the settings table, README's Configuration table agreeing with it, the files read at load time."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

import config
from config import SETTINGS, ConfigError, Settings, load_settings
from tests.conftest import ROOT


def readme_rows() -> dict[str, tuple[str, str]]:
    """README's "## Configuration" table: variable -> (default, meaning); a row may name several variables."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| (.+?) \| (.+?) \| (.+) \|", line.strip())
        if match is None or match.group(1) in ("variable", "---"):
            continue
        names = [name.strip() for name in match.group(1).split(",")]
        defaults = [value.strip().replace("`", "") for value in match.group(2).split(", ")]
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), f"README row {line!r}: give one default, or one per variable"
        for name, default in zip(names, defaults, strict=True):
            assert name not in rows, f"README's Configuration table has two rows for {name}"
            rows[name] = (default, match.group(3).strip())
    return rows


def test_the_readme_table_and_the_settings_table_name_the_same_variables() -> None:
    documented = set(readme_rows())
    known = set(config.ENV_VARIABLES)
    assert not known - documented, f"variables config.py reads without a row in README's table: {sorted(known - documented)}"
    assert not documented - known, f"rows of README's table that config.py does not read: {sorted(documented - known)}"


def test_the_readme_table_shows_each_settings_default_and_meaning() -> None:
    rows = readme_rows()
    for row in SETTINGS:
        default, meaning = rows[row.env]
        assert default == row.shown_default, f"{row.env}: README's default is {default!r}, config.py's {row.shown_default!r}"
        assert meaning == row.doc, f"{row.env}: README's meaning differs from config.py's:\n  {meaning}\n  {row.doc}"


def test_env_variables_is_the_settings_table() -> None:
    assert config.ENV_VARIABLES == tuple(row.env for row in SETTINGS)
    assert len(set(config.ENV_VARIABLES)) == len(config.ENV_VARIABLES), "a variable has two rows"
    providers = {var for row in config.PROVIDERS.values() for var in (row.url_var, row.key_var)}
    assert providers | {"ENV_FILE"} <= set(config.ENV_VARIABLES)
    text = (ROOT / "config.py").read_text()
    assert text.count("config.get(") == 1, "config.py reads a variable outside its settings table"


def test_every_table_row_of_settings_is_one_of_its_fields_with_the_same_default() -> None:
    defaults = Settings()
    fields = {f.name for f in dataclasses.fields(Settings)}
    attributes = [row.attr for row in SETTINGS if row.attr]
    assert len(set(attributes)) == len(attributes)
    for row in SETTINGS:
        if row.attr:
            assert row.attr in fields
            assert getattr(defaults, row.attr) == row.default
            assert config.env_name(row.attr) == row.env
    derived = {"providers", "supported_models", "model_fallbacks", "provider_limits", "model_aliases", "prices"}
    assert set(fields) - set(attributes) == derived


# -- loading ------------------------------------------------------------------------------------------------


def test_defaults_when_nothing_is_set(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    for row in SETTINGS:
        if row.attr:
            assert getattr(settings, row.attr) == row.default, row.env
    assert settings.providers["openai"].base_url == "https://api.openai.com/v1"
    assert settings.providers["ollama"].api_key == ""
    assert "openai/gpt-4o" in settings.supported_models
    assert settings.model_fallbacks == {}


def test_empty_values_that_mean_the_default(clean_env: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "VERSION", "SUPPORTED_MODELS_FILE", "VERIFY_DEFAULT_MODEL", "CORS_ORIGINS"):
        clean_env.setenv(name, " ")
    clean_env.setenv("CORS_ORIGINS", ",")
    clean_env.setenv("TRAFFIC_WEIGHT", "")
    settings = load_settings()
    assert (settings.host, settings.version, settings.verify_default_model) == ("0.0.0.0", "0.0.0", "mira/llama3.1")
    assert settings.supported_models_file == str(config.DEFAULT_MODELS_FILE)
    assert settings.cors_origins == ("*",)
    assert settings.traffic_weight is None
    clean_env.setenv("PORT", "")
    with pytest.raises(ConfigError, match="PORT=''"):
        load_settings()


def test_workers_0_is_one_per_cpu(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WORKERS", "0")
    assert load_settings().workers == (os.cpu_count() or 1)


def test_the_cross_variable_checks(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ROUTER_BASE_URL", "http://router.example")
    with pytest.raises(ConfigError, match="ROUTER_BASE_URL is set but neither"):
        load_settings()
    clean_env.setenv("MACHINE_API_TOKEN", "mk-1")
    assert load_settings().router_base_url == "http://router.example"
    clean_env.setenv("LIVENESS_INTERVAL", "12")
    with pytest.raises(ConfigError, match=r"LIVENESS_INTERVAL=12: must be below 12 seconds"):
        load_settings()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_models_file_is_read_and_checked_at_load_time(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("SUPPORTED_MODELS_FILE", write(tmp_path, "models.json", '["openai/a", "groq/b", "openai/a"]'))
    assert load_settings().supported_models == ("openai/a", "groq/b")
    for text, message in (("[1]", "must be a JSON array of model id strings"), ('{"a": 1}', "must be a JSON array"),
                          ("[", "not JSON at line 1, column 2: Expecting value")):
        path = write(tmp_path, "bad.json", text)
        clean_env.setenv("SUPPORTED_MODELS_FILE", path)
        with pytest.raises(ConfigError, match=re.escape(f"SUPPORTED_MODELS_FILE={path!r}: {message}")):
            load_settings()
    clean_env.setenv("SUPPORTED_MODELS_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="SUPPORTED_MODELS_FILE=.*: not found"):
        load_settings()


def test_the_fallbacks_file_is_read_and_checked_at_load_time(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("MODEL_FALLBACKS_FILE", write(tmp_path, "fallbacks.json", '{"openai/a": ["groq/b", "openrouter/x/y"]}'))
    table = load_settings().model_fallbacks
    expected = [("groq", "b", "groq/b"), ("openrouter", "x/y", "openrouter/x/y")]
    assert [(f.provider, f.name, f.id) for f in table["openai/a"]] == expected
    for text, message in (
        ("[]", "must be a JSON object of model id -> list of model ids"),
        ('{"openai/a": "groq/b"}', "the value of 'openai/a' must be a list of model ids"),
        ('{"openai/a": ["nobody/b"]}', "'openai/a': Unknown provider 'nobody'"),
        ("{", "not JSON at line 1, column 2: Expecting property name"),
    ):
        path = write(tmp_path, "bad.json", text)
        clean_env.setenv("MODEL_FALLBACKS_FILE", path)
        with pytest.raises(ConfigError, match=re.escape(f"MODEL_FALLBACKS_FILE={path!r}: {message}")):
            load_settings()
    clean_env.setenv("MODEL_FALLBACKS_FILE", write(tmp_path, "other.json", '{"openai/a": ["nobody/b"]}'))
    clean_env.setenv("DEFAULT_PROVIDER", "openrouter")  # a model without a provider prefix goes to it whole
    assert [f.id for f in load_settings().model_fallbacks["openai/a"]] == ["openrouter/nobody/b"]  # X-Mira-Model: the target
    assert load_settings().model_fallbacks["openai/a"][0].provider == "openrouter"


@pytest.mark.parametrize("variable, text", [("SUPPORTED_MODELS_FILE", "[1]"), ("MODEL_FALLBACKS_FILE", "[]")])
def test_a_bad_file_stops_start_up_naming_its_variable(spawn_node, tmp_path: Path, variable: str, text: str) -> None:
    node = spawn_node({variable: write(tmp_path, "bad.json", text)}, ready=False)
    assert node.wait() == 2
    assert f"{variable}=" in node.output
    assert "Traceback" not in node.output
