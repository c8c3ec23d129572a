"""The command lines offer what the registries hold: every choice is a registry's, read when the command runs."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from glimpse.choices import RegistryChoice
from glimpse.cli import main as glimpse_main
from glimpse.extract.backbones import BACKBONES
from glimpse.extract.cli import main as extract_main
from glimpse.train.cli import SWEEP_FIELDS
from glimpse.train.cli import main as train_main
from glimpse.train.config import TrainConfig
from glimpse.train.models import MODELS
from glimpse.train.options import OPTION_HELP
from glimpse.train.sampling import POLICIES, Windows


def _commands(command: click.Command, path: str = ""):
    yield path or command.name, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}".strip())


#: Choices that are no registry: which of a run's two checkpoints (best, last) evaluation loads.
FIXED = {("evaluate", "which"), ("evaluate compare", "which")}


def test_every_choice_of_every_command_line_is_a_registry():
    loose = [f"{path} {param.name}" for root in (glimpse_main, extract_main, train_main)
             for path, command in _commands(root) for param in command.params
             if isinstance(param.type, click.Choice) and not isinstance(param.type, RegistryChoice)
             and (path, param.name) not in FIXED]
    assert not loose, loose


@dataclasses.dataclass(frozen=True)
class EveryOtherWindow(Windows):
    """Every second window (a lab's own policy, registered at run time)."""

    name = "every_other"


def test_a_clip_policy_registered_at_run_time_is_offered_and_taken(monkeypatch):
    monkeypatch.setitem(POLICIES, "every_other", EveryOtherWindow)
    shown = CliRunner().invoke(train_main, ["--help"], terminal_width=400)
    assert shown.exit_code == 0 and "every_other" in shown.output
    with train_main.make_context("train", ["--model", "softattn", "--sampling", "every_other"]) as ctx:
        assert ctx.params["sampling"] == "every_other"
    monkeypatch.delitem(POLICIES, "every_other")
    refused = CliRunner().invoke(train_main, ["--model", "softattn", "--sampling", "every_other"])
    assert refused.exit_code == 2 and "every_other" in refused.output


def test_a_backbone_registered_at_run_time_is_offered(monkeypatch):
    monkeypatch.setitem(BACKBONES, "toynet", BACKBONES["googlenet"])
    shown = CliRunner().invoke(extract_main, ["--help"], terminal_width=400)
    assert "toynet" in shown.output


@pytest.mark.parametrize("name", sorted(OPTION_HELP))
def test_each_training_option_is_a_field_of_the_config_with_its_default(name):
    """train and sweep declare their training options once, from TrainConfig's fields."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert name in fields
    option = next(p for p in train_main.params if p.name == name)
    assert option.default is None and option.help  # left to TrainConfig's or the model's default, which help shows
    default = fields[name].default
    if default is None and name in ("batch_size", "lr"):
        assert all(f"{getattr(spec, name):g}" in option.help for spec in MODELS.values())
    elif default is not None:
        assert str(default) in option.help


def test_the_sweep_shares_the_train_options():
    sweep = train_main.commands["sweep"]
    for name in SWEEP_FIELDS:
        ours = next(p for p in sweep.params if p.name == name)
        theirs = next(p for p in train_main.params if p.name == name)
        assert (ours.help, type(ours.type)) == (theirs.help, type(theirs.type)), name
