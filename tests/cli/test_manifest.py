import pytest

from lamina.cli.functions import read_manifest
from lamina.core.errors import InvalidSpec


def test_manifest_keys_map_to_spec_fields(tmp_path):
    (tmp_path / "lamina.yaml").write_text(
        "name: hi\nhandler: main.run\nmemory: 256\ntimeout: 5\nenvironment:\n  A: 1\n"
        "min_scale: 1\nmax_scale: 8\nconcurrency: 4\nkeep_alive: 30\n"
    )
    assert read_manifest(tmp_path) == {
        "name": "hi", "handler": "main.run", "memory_mb": 256, "timeout_s": 5, "environment": {"A": "1"},
        "min_scale": 1, "max_scale": 8, "concurrency": 4, "keep_alive_s": 30,
    }


def test_unknown_keys_and_bad_yaml_are_refused(tmp_path):
    (tmp_path / "lamina.yaml").write_text("name: hi\nmemroy: 256\n")
    with pytest.raises(InvalidSpec, match="unknown keys memroy"):
        read_manifest(tmp_path)
    (tmp_path / "lamina.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InvalidSpec, match="not valid YAML"):
        read_manifest(tmp_path)


def test_no_manifest_means_no_settings(tmp_path):
    assert read_manifest(tmp_path) == {}
