import pytest

from lamina.core.errors import InvalidSpec
from lamina.core.functions import FunctionSpec, validate_name, validate_spec

DIGEST = "a" * 64


def spec(**changes):
    return FunctionSpec(**{"name": "hello", "code_sha256": DIGEST, **changes})


@pytest.mark.parametrize("name", ["a", "hello-world_2", "X" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "dot.name", "slash/name", "ünïcode", "../etc"])
def test_invalid_names_are_refused_with_the_name(name):
    with pytest.raises(InvalidSpec, match="invalid function name"):
        validate_name(name)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"runtime": "cobol85"}, "unknown runtime 'cobol85'"),
        ({"handler": "nodot"}, "invalid handler 'nodot'"),
        ({"handler": "app.handler()"}, "invalid handler"),
        ({"handler": "../app.handler"}, "invalid handler"),
        ({"memory_mb": 127}, "memory 127 MB is out of range 128..10240"),
        ({"memory_mb": 10241}, "memory 10241 MB is out of range"),
        ({"timeout_s": 0}, "timeout 0 s is out of range 1..900"),
        ({"timeout_s": 901}, "timeout 901 s is out of range"),
        ({"environment": {"BAD-KEY": "x"}}, "invalid environment variable name 'BAD-KEY'"),
        ({"environment": {"AWS_LAMBDA_FUNCTION_NAME": "x"}}, "reserved"),
        ({"environment": {"LAMINA_DATA_DIR": "x"}}, "reserved"),
        ({"environment": {"BIG": "x" * 4094}}, "over the limit of 4096 bytes"),
        ({"code_sha256": "nothex"}, "invalid code digest"),
        ({"egress": "intranet"}, "unknown egress 'intranet'"),
        ({"max_scale": 0}, "max_scale 0 is out of range 1..1000"),
        ({"max_scale": 1001}, "max_scale 1001 is out of range"),
        ({"min_scale": -1}, "min_scale -1 is out of range 0..max_scale (100)"),
        ({"min_scale": 3, "max_scale": 2}, "min_scale 3 is out of range 0..max_scale (2)"),
        ({"concurrency": -1}, "concurrency -1 is out of range 0..10000"),
        ({"min_scale": 5, "concurrency": 2}, "min_scale 5 is more than the reserved concurrency 2"),
        ({"keep_alive_s": -1}, "keep_alive -1 s is out of range 0..86400"),
        ({"keep_alive_s": 86401}, "keep_alive 86401 s is out of range"),
        ({"max_retries": 3}, "max_retries 3 is out of range 0..2"),
        ({"max_retries": -1}, "max_retries -1 is out of range"),
        ({"retry_delay_s": -0.5}, "retry_delay -0.5 s is out of range 0..3600 s"),
    ],
)
def test_each_bad_field_is_named(changes, message):
    with pytest.raises(InvalidSpec, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_spec(spec(**changes))


def test_a_valid_spec_passes_and_code_may_come_later():
    good = spec(handler="src/app.handler", memory_mb=10240, timeout_s=900, environment={"K": "v" * 4000}, egress="none",
                min_scale=2, max_scale=1000, concurrency=2, keep_alive_s=86400, max_retries=0, retry_delay_s=3600)
    assert validate_spec(spec(runtime="nodejs20", handler="index.handler")).runtime == "nodejs20"
    assert validate_spec(good) is good
    assert validate_spec(spec(code_sha256=""), require_code=False).name == "hello"
