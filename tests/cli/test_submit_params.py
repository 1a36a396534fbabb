"""`diffq submit --param`: what the CLI refuses itself, as a usage error (exit 2), before any request."""

import pytest
from typer.testing import CliRunner

from cli.main import _parse_params, app

runner = CliRunner()
# Nothing listens there: a command that got as far as sending would fail with exit 1, not 2.
NO_API = "http://127.0.0.1:9"


def submit(*params: str, prompt: str | None = "x"):
    args = ["submit", "--model", "tiny-sd", "--api-url", NO_API]
    args += ["--prompt", prompt] if prompt is not None else []
    for param in params:
        args += ["--param", param]
    return runner.invoke(app, args)


@pytest.mark.parametrize("pair", ["=5", " =5", "width", "="])
def test_a_param_without_a_key_is_a_usage_error(pair: str) -> None:
    result = submit(pair)
    assert result.exit_code == 2, result.output
    assert "--param takes key=value" in result.output and repr(pair) in result.output


def test_a_repeated_param_is_a_usage_error_naming_it() -> None:
    result = submit("width=64", "height=64", "width=128")
    assert result.exit_code == 2, result.output
    assert "'width' is given twice" in result.output


def test_prompt_given_twice_is_a_usage_error() -> None:
    result = submit("prompt=y")
    assert result.exit_code == 2, result.output
    assert "'prompt' is given twice (--prompt and --param prompt=...)" in result.output


def test_params_parse_json_values_and_keep_text() -> None:
    assert _parse_params(["width=64", "prompt=a cat", "x=[1, 2]"]) == {
        "width": 64,
        "prompt": "a cat",
        "x": [1, 2],
    }
    assert _parse_params(["prompt=y"], None) == {"prompt": "y"}
    assert _parse_params(["seed=1"], "x") == {"prompt": "x", "seed": 1}
