"""The worker's own check before the first step: diffusers' scheduler decides, the message is the API's,
and any failure to build or set up a scheduler is `bad_input`."""

from pathlib import Path
from types import SimpleNamespace

import diffusers
import pytest

from core.errors import BadInput
from core.model_configs import scheduler_config
from core.scheduler_limits import steps_problem
from core.schedulers import SCHEDULERS, make_scheduler
from workers.pipelines import check_steps


@pytest.mark.parametrize(
    ("model", "name"), [("tiny-sd", None), ("tiny-sd", "ddim"), ("tiny-ddpm", "dpmpp_2m")]
)
def test_worker_refuses_with_the_api_message(models_dir: Path, model: str, name: str | None) -> None:
    config = scheduler_config(model, models_dir)
    assert config is not None
    base = getattr(diffusers, config["_class_name"]).from_config(config)
    choice = SCHEDULERS.get(name) if name else None
    class_name = choice.class_name if choice else config["_class_name"]
    api_message = steps_problem(model, name, class_name, config, choice.overrides if choice else {}, 1000)
    assert api_message is not None
    with pytest.raises(BadInput) as raised:
        check_steps(model, name, make_scheduler(name, base), 1000)
    assert raised.value.message == api_message
    assert raised.value.code == "bad_input"
    check_steps(model, name, make_scheduler(name, base), 999)


def test_scheduler_that_cannot_be_built_is_bad_input() -> None:
    # A model's hand-edited scheduler config, as the worker reads it from the folder.
    base = SimpleNamespace(config={"num_train_timesteps": 1000, "beta_schedule": "no-such-schedule"})
    with pytest.raises(BadInput) as raised:
        make_scheduler("dpmpp_2m", base)
    assert raised.value.code == "bad_input"
    assert "no-such-schedule" in raised.value.message
