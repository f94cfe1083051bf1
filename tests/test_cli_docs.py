"""The man pages and the bash completion agree with the code."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest

from jobqueue.cli.exitcodes import ExitCode
from jobqueue.cli.parser import COMMANDS, build_parser
from tests import fake_luxi as fake
from tests.cli_samples import JOBS
from tests.fake_luxi import REPO_ROOT, FakeLuxi, JobTable

luxi = fake.luxi  # fixtures shared with the other CLI tests
short_dir = fake.short_dir
DOC = os.path.join(REPO_ROOT, "doc")


def read(*parts: str) -> str:
    with open(os.path.join(DOC, *parts), encoding="utf-8") as handle:
        return handle.read()


def exit_table(text: str) -> dict[int, str]:
    """Code -> first words of its meaning, from the EXIT STATUS table."""
    section = text.split("EXIT STATUS\n===========\n", 1)[1].split("\nENVIRONMENT\n", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^(\d+) +(\S.*)$", section, re.MULTILINE)}


class TestManPages:
    def test_jobctl_documents_every_command_and_exit_code(self) -> None:
        text = read("jobctl.rst")
        for name in COMMANDS:
            assert f"\n``{name}``" in text, name
        assert set(exit_table(text)) == {int(code) for code in ExitCode}

    def test_jobctl_documents_every_option(self) -> None:
        text = read("jobctl.rst")
        for name, options in command_options().items():
            for option in options:
                assert f"``{option}``" in text, (name, option)

    def test_cleaner_page(self) -> None:
        text = read("jobqueue-cleaner.rst")
        for option in ("--state-dir", "--socket", "--job-age", "--archive-age", "--log-file"):
            assert f"``{option}``" in text
        assert set(exit_table(text)) == {0, 1, 2}
        assert "JOBQUEUE_STATE_DIR" in text

    def test_service_unit(self) -> None:
        text = read("examples", "jobqueue-masterd.service")
        for line in (
            "Type=simple",
            "ExecStart=/usr/local/bin/jobqueue-masterd --state-dir /var/lib/jobqueue",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=90",
            "KillMode=mixed",  # SIGTERM to the daemon alone, so --shutdown-timeout applies
            "StateDirectoryMode=0711",  # the socket group can reach run/, and only that
            "LimitNOFILE=65536",
        ):
            assert f"\n{line}\n" in text


def command_options() -> dict[str, list[str]]:
    """The long options of each command, as its parser defines them."""
    options = {}
    for name in COMMANDS:
        parser = build_parser(name)
        (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sub = commands.choices[name]
        options[name] = [
            string
            for action in sub._actions
            for string in action.option_strings
            if string.startswith("--")
            and string not in ("--help", "--socket", "--state-dir", "--debug")
        ]
    return options


class TestBashCompletion:
    def complete(self, *words: str) -> list[str]:
        script = os.path.join(DOC, "examples", "jobctl.bash-completion")
        program = (
            f"source {script}\n"
            'COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
            '_jobctl; printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        env = {
            **os.environ,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        }
        result = subprocess.run(
            ["bash", "-c", program, "bash", "jobctl", *words],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        return result.stdout.split()

    @pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
    def test_every_option_completes(self) -> None:
        for name, options in command_options().items():
            assert sorted(set(self.complete(name, "--")) & set(options)) == sorted(options), name

    @pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
    def test_commands_options_and_job_ids(self, luxi: FakeLuxi) -> None:
        if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "jobctl")):
            pytest.skip("the jobctl console script is not installed")
        JobTable(JOBS).install(luxi)
        assert self.complete("ch") == ["change-priority"]
        assert self.complete("list", "--fin") == ["--finished"]
        assert self.complete("queue", "") == [
            "info",
            "drain",
            "undrain",
            "pause",
            "continue",
            "set-workers",
        ]
        assert self.complete("filter", "--action", "") == ["ACCEPT", "PAUSE", "REJECT", "CONTINUE"]
        assert self.complete("wait", "--no") == ["--no-children"]
        assert self.complete("watch", "--output", "") == ["text", "json"]
        assert self.complete("locks", "--output", "") == ["table", "json"]
        assert self.complete("--ver") == ["--version"]
        assert self.complete("--socket", luxi.path, "cancel", "") == ["12"]
        assert self.complete("--socket", luxi.path, "watch", "") == ["2", "12"]
        assert luxi.args_of("Query")[0][1] == ["id"]
