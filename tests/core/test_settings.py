import pytest

from lamina.core import settings as cfg
from lamina.core.errors import InvalidSpec


def test_environment_then_flags():
    env = {"LAMINA_PORT": "9000", "LAMINA_FEDERATE_METRICS": "yes", "LAMINA_HOST": "0.0.0.0"}
    loaded = cfg.load(cfg.GatewaySettings, env, host="127.0.0.2")
    assert (loaded.port, loaded.federate_metrics, loaded.host) == (9000, True, "127.0.0.2")


def test_a_bad_value_names_the_key_and_the_value():
    with pytest.raises(InvalidSpec, match="LAMINA_PORT='eighty'"):
        cfg.load(cfg.GatewaySettings, {"LAMINA_PORT": "eighty"})
    with pytest.raises(InvalidSpec, match="LAMINA_MIGRATE='maybe'"):
        cfg.load(cfg.ControllerSettings, {"LAMINA_MIGRATE": "maybe"})


def test_every_setting_is_documented():
    for cls in (cfg.ControllerSettings, cfg.GatewaySettings, cfg.InvokerSettings):
        for name, doc in cfg.describe(cls):
            assert doc.startswith(f"{name}:"), f"{cls.__name__}.{name} lacks a docstring naming its variable"


def test_sqlite_is_the_default_store(tmp_path):
    settings = cfg.load(cfg.ControllerSettings, {}, data_dir=tmp_path)
    assert cfg.database_url(settings) == f"sqlite:///{tmp_path / 'lamina.db'}"
