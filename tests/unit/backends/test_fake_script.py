import math
import signal

import pytest

from cri_async.backends.fake.script import NotFound, Output, parse_script, simulate


def test_echo_and_exit_code() -> None:
    tl = simulate(["sh", "-c", "echo hello; echo err >&2; exit 3"], {})
    assert tl.outputs == (Output(0, "stdout", b"hello\n"), Output(0, "stderr", b"err\n"))
    assert (tl.exit_at, tl.exit_code) == (0, 3)


def test_sleep_moves_time_and_infinity_runs_forever() -> None:
    tl = simulate(["sh", "-c", "echo a; sleep 1.5; echo b; sleep 2"], {})
    assert [o.at for o in tl.outputs] == [0, 1.5]
    assert tl.exit_at == 3.5
    assert simulate(["sleep", "infinity"], {}).runs_forever
    assert simulate(["top"], {}).runs_forever


def test_and_or_connectors_follow_status() -> None:
    assert simulate(["sh", "-c", "false && echo no || echo yes"], {}).outputs == (
        Output(0, "stdout", b"yes\n"),
    )
    assert simulate(["sh", "-c", "true && exit 4"], {}).exit_code == 4
    assert simulate(["false"], {}).exit_code == 1


def test_trap_ignores_signals() -> None:
    tl = simulate(["sh", "-c", "trap '' TERM INT; sleep infinity"], {})
    assert tl.ignored_signals == {signal.SIGTERM, signal.SIGINT}


def test_env_hostname_pwd() -> None:
    tl = simulate(["sh", "-c", "env; hostname; pwd"], {"A": "1"}, hostname="pod", workdir="/w")
    assert b"".join(o.data for o in tl.outputs) == b"A=1\npod\n/w\n"


def test_unknown_program_top_level_is_not_found_but_in_shell_is_127() -> None:
    with pytest.raises(NotFound, match="executable file not found"):
        simulate(["/usr/bin/nonexistent"], {})
    tl = simulate(["sh", "-c", "nonexistent"], {})
    assert tl.exit_code == 127
    assert tl.outputs[0].stream == "stderr"


def test_syntax_error_is_reported_not_raised() -> None:
    tl = simulate(["sh", "-c", "echo 'unterminated"], {})
    assert tl.exit_code == 2


def test_after_resumes_a_timeline() -> None:
    tl = simulate(["sh", "-c", "echo a; sleep 2; echo b; sleep 2; exit 5"], {})
    rest = tl.after(1.0)
    assert rest.outputs == (Output(1.0, "stdout", b"b\n"),)
    assert (rest.exit_at, rest.exit_code) == (3.0, 5)
    assert math.isinf(simulate(["sleep", "infinity"], {}).after(100).exit_at)


def test_parse_script_connectors() -> None:
    assert parse_script("a 1; b && c || d\ne") == [
        (";", ["a", "1"]),
        (";", ["b"]),
        ("&&", ["c"]),
        ("||", ["d"]),
        (";", ["e"]),
    ]
