"""Tests for cli.py: python -m pytest -q tests/test_cli.py"""
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from cli import command_options, setting


@dataclass
class Settings:
    name: str = setting("", "who runs it")
    steps: int = setting(3, "how many steps")
    rate: float = setting(0.5, "a ratio")
    limit: float | None = setting(None, "unset = no limit")
    files: list = setting([], "repeatable")
    dry_run: bool = setting(False, "do nothing")


def command():
    @click.command()
    @command_options(Settings, required=("name",))
    def run(**settings):
        click.echo(repr(Settings(**settings)))
    return run


def test_every_field_becomes_a_typed_option_with_its_default_and_help():
    res = CliRunner().invoke(command(), ["--name", "x", "--steps", "4", "--limit", "2.5", "--files", "a", "--files",
                                         "b", "--dry-run"])
    assert res.exit_code == 0, res.output
    # a repeated option arrives as a tuple
    assert res.output.strip() == repr(Settings(name="x", steps=4, rate=0.5, limit=2.5, files=("a", "b"), dry_run=True))
    res = CliRunner().invoke(command(), ["--name", "x"])
    assert res.output.strip() == repr(Settings(name="x", files=()))
    assert Settings().files is not Settings().files  # a list default is copied per instance
    help_text = CliRunner().invoke(command(), ["--help"]).output
    for flag, text in [("--name", "who runs it"), ("--steps INTEGER", "how many steps"),
                       ("--rate FLOAT", "a ratio"), ("--limit FLOAT", "unset = no limit"),
                       ("--files TEXT", "repeatable"), ("--dry-run", "do nothing")]:
        assert flag in help_text and text in help_text


@pytest.mark.parametrize("args", [[], ["--name", "x", "--steps", "many"]])
def test_a_missing_required_option_or_a_wrong_type_is_a_usage_error(args):
    assert CliRunner().invoke(command(), args).exit_code == 2
