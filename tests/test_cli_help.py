"""The CLI surface against the typer that pip resolves: common options before or after every command, --help
that reads like pip's (no metavar on flags, real choices, readable metavars), and the choices shown in --help
tied to the library's own lists (cli.py spells them so that --help loads no heavy module)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mmcorpus import cli
from mmcorpus.core.imaging import CHECKS
from mmcorpus.fetch.urllist.executors import ENGINES, EXECUTORS
from mmcorpus.fetch.urllist.img2dataset import DISTRIBUTORS
from mmcorpus.registry import builtin_config_dir
from mmcorpus.stage.prepare import FORMATS

COMMANDS = ["list", "info", "fetch", "prepare", "status", "verify", "demo"]
REPORTING = ["list", "info", "fetch", "prepare", "status", "verify"]
ENV = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
ENV.pop("MMCORPUS_CONFIG_DIR", None)


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcorpus", *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=120)


def help_text(*command: str) -> str:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def option_line(text: str, option: str) -> str:
    lines = [line for line in text.splitlines() if re.search(rf"(^|[\s│]){re.escape(option)}(\s|,|$)", line)]
    assert lines, f"{option} not in help:\n{text}"
    return lines[0]


def choices(metavar: str) -> list[str]:
    assert metavar.startswith("[") and metavar.endswith("]"), metavar
    return metavar[1:-1].split("|")


def test_choices_in_help_are_the_librarys():
    assert choices(cli.IMAGE_CHECKS) == list(CHECKS)
    assert choices(cli.ENGINES) == list(ENGINES)
    assert choices(cli.EXECUTORS) == list(dict.fromkeys([*EXECUTORS, *DISTRIBUTORS]))
    assert choices(cli.FORMATS) == list(FORMATS)
    assert sorted(choices(cli.STAGES)) == sorted(p.stem for p in (builtin_config_dir() / "stages").glob("*.yaml"))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_type_placeholders_and_every_common_option(command):
    text = help_text(command)
    # typer renders untyped values as <bool>, <int>, <list[str]>, <path>: none may reach the user.
    assert not re.search(r"<(bool|int|float|str|path|list\[[^\]]*\]|text|integer)>", text, re.I), text
    for option in ["--root", "--config-dir", "--quiet", "--verbose", "--log-file", "--help"]:
        option_line(text, option)
    assert ("--json" in text) == (command in REPORTING)


def test_help_flags_have_no_metavar_and_values_have_readable_ones():
    text = help_text("fetch")
    for flag in ["--no-images", "--dry-run", "--retry-failed", "--wait", "--help", "--quiet", "--json"]:
        line = option_line(text, flag)
        words = line.replace("│", " ").split()
        # the flag, maybe its short form, then straight into the help sentence (capitalised)
        after = [w for w in words if w not in (flag, "-q", "-h", "-v")]
        assert after and after[0][0].isupper(), line
    for option, metavar in [("--root", "DIR"), ("--mirror", "FROM=TO"), ("--shard", "I/N"),
                            ("--timeout", "SECONDS"), ("--resize", "SIZE|none"), ("--engine", cli.ENGINES),
                            ("--executor", cli.EXECUTORS), ("--image-check", cli.IMAGE_CHECKS)]:
        assert metavar in option_line(text, option), option
    assert "[default: native]" in option_line(text, "--engine")
    prepare = help_text("prepare")
    assert cli.STAGES in option_line(prepare, "--stage") and cli.FORMATS in option_line(prepare, "--format")


@pytest.mark.parametrize("command", ["list", "status", "verify", "info cc3m"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_common_options_before_or_after_every_command(tmp_path, command, where):
    common = ["--root", str(tmp_path / "root"), "-q", "-v", "--log-file", str(tmp_path / "log")]
    words = command.split()
    args = [*common, *words] if where == "before" else [*words, *common]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "No such option" not in result.stderr


def test_json_after_the_command(tmp_path):
    result = run("status", "--json", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.lstrip().startswith("{")


def test_an_option_the_engine_cannot_honour_is_refused(tmp_path):
    result = run("fetch", "cc3m", "--engine", "img2dataset", "--image-check", "structure", "--dry-run",
                 "--root", str(tmp_path))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--image-check" in errors[0] and "img2dataset" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_resize_is_judged_by_one_rule(tmp_path):
    too_small = run("fetch", "cc3m", "--resize", "8", "--dry-run", "--root", str(tmp_path))
    assert too_small.returncode == 2 and "--resize" in too_small.stderr and ">= 16" in too_small.stderr
    from mmcorpus.errors import UsageError
    from mmcorpus.fetch.urllist.plan import UrlListOptions

    with pytest.raises(UsageError, match=">= 16"):
        UrlListOptions(resize=8).check()
