import json
import logging

import pytest

from cri_async import logsetup


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.setup("debug", "json")
    logging.getLogger("cri_async.rpc").debug("rpc %s took %.3f ms", "Version", 0.5)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("cri_async.core").exception("failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["msg"] == "rpc Version took 0.500 ms"
    assert (lines[0]["level"], lines[0]["logger"]) == ("debug", "cri_async.rpc")
    assert lines[1]["level"] == "error" and "ValueError: boom" in lines[1]["error"]
    assert lines[0]["time"].endswith("Z")


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.setup("warning", "text")
    logging.getLogger("cri_async").info("hidden")
    logging.getLogger("cri_async").warning("shown")
    err = capsys.readouterr().err
    assert "shown" in err and "hidden" not in err
    logsetup.setup("info", "text")
