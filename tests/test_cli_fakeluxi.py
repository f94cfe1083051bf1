"""Tests of the scripted LUXI server the CLI and cleaner tests use (tests/fake_luxi.py)."""

from __future__ import annotations

import pytest

from jobqueue import errors
from jobqueue.luxi.client import Client
from tests import fake_luxi as fake
from tests.fake_luxi import FakeLuxi, in_order

luxi = fake.luxi  # the fake's fixtures
short_dir = fake.short_dir


class TestFakeLuxi:
    def test_answers_records_and_encodes_errors(self, luxi: FakeLuxi) -> None:
        luxi.answers["SubmitJob"] = in_order(5, errors.JobQueueDrainError("drained"))
        with Client(luxi.path) as client:
            assert client.submit_job([{"OP_ID": "OP_TEST_DELAY"}]) == 5
            with pytest.raises(errors.JobQueueDrainError):
                client.submit_job([])
            with pytest.raises(errors.GenericError, match="Unknown method"):
                client.set_drain_flag(True)
        assert luxi.methods() == ["SubmitJob", "SubmitJob", "SetDrainFlag"]
        assert luxi.args_of("SetDrainFlag") == [[True]]

    def test_serves_several_connections(self, luxi: FakeLuxi) -> None:
        luxi.answers["QueryConfigValues"] = lambda fields: [False] * len(fields)
        for _ in range(3):
            with Client(luxi.path) as client:
                assert client.query_config_values(["drain_flag"]) == [False]
        assert len(luxi.calls) == 3
