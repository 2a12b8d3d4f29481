"""The spec's process: args, env, cwd, user, limits, and the exec process."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cri_async.core.model import Capabilities, Image, ProfileType, Resources, SecurityProfile
from cri_async.oci import ResolvedUser, SpecError, exec_process
from cri_async.oci.defaults import DEFAULT_PATH_ENV
from cri_async.oci.process import merge_env

from .builders import HOST, IMAGE, build, container, sandbox

EP = ("/entrypoint.sh",)
CMD = ("serve", "--port=80")


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "command", "args", "expected"),
    [
        # Image only.
        (EP, CMD, (), (), ["/entrypoint.sh", "serve", "--port=80"]),
        ((), CMD, (), (), ["serve", "--port=80"]),
        (EP, (), (), (), ["/entrypoint.sh"]),
        # args replace CMD, keep ENTRYPOINT.
        (EP, CMD, (), ("debug",), ["/entrypoint.sh", "debug"]),
        ((), CMD, (), ("/bin/true",), ["/bin/true"]),
        # command replaces ENTRYPOINT and drops CMD.
        (EP, CMD, ("/bin/sh",), (), ["/bin/sh"]),
        (EP, CMD, ("/bin/sh", "-c"), ("echo hi",), ["/bin/sh", "-c", "echo hi"]),
        ((), (), ("/pause",), (), ["/pause"]),
        # ENTRYPOINT [""] means no entrypoint.
        (("",), CMD, (), (), ["serve", "--port=80"]),
    ],
)
def test_args_merge_table(
    entrypoint: tuple[str, ...],
    cmd: tuple[str, ...],
    command: tuple[str, ...],
    args: tuple[str, ...],
    expected: list[str],
) -> None:
    image = replace(IMAGE, entrypoint=entrypoint, cmd=cmd)
    spec = build(container(command=command, args=args), image=image)
    assert spec["process"]["args"] == expected


def test_no_command_at_all_is_an_error() -> None:
    with pytest.raises(SpecError, match="no command specified"):
        build(container(), image=replace(IMAGE, entrypoint=(), cmd=()))


def env_of(**changes: object) -> list[str]:
    image = changes.pop("image", IMAGE)
    assert isinstance(image, Image)
    return list(build(container(**changes), image=image)["process"]["env"])


def test_env_order_path_hostname_image_then_config() -> None:
    image = replace(IMAGE, env=("LANG=C", "A=image"))
    env = env_of(image=image, envs=(("B", "1"), ("A", "config")))
    assert env == [
        DEFAULT_PATH_ENV,
        "HOSTNAME=web-0",
        "LANG=C",
        "A=config",  # later wins, keeps the first position
        "B=1",
        "HOME=/root",
    ]


def test_image_path_replaces_the_default() -> None:
    env = env_of(image=replace(IMAGE, env=("PATH=/opt/bin",)))
    assert env[0] == "PATH=/opt/bin"
    assert sum(e.startswith("PATH=") for e in env) == 1


def test_config_can_override_hostname_and_home() -> None:
    env = env_of(envs=(("HOSTNAME", "x"), ("HOME", "/data")))
    assert "HOSTNAME=x" in env and "HOME=/data" in env
    assert "HOSTNAME=web-0" not in env and "HOME=/root" not in env


def test_env_values_may_contain_equals_signs_and_be_empty() -> None:
    env = env_of(envs=(("OPTS", "a=b=c"), ("EMPTY", "")))
    assert "OPTS=a=b=c" in env and "EMPTY=" in env


def test_home_comes_from_the_resolved_user() -> None:
    user = ResolvedUser(1000, 1000, (1000,), "/home/app")
    env = build(container(), user=user)["process"]["env"]
    assert env[-1] == "HOME=/home/app"


def test_merge_env_keeps_first_position_and_last_value() -> None:
    assert merge_env(["A=1", "B=2"], ["A=3", "C"], ["B=4"]) == ["A=3", "B=4", "C"]


@pytest.mark.parametrize(
    ("config_dir", "image_dir", "expected"),
    [("/work", "/app", "/work"), ("", "/app", "/app"), ("", "", "/"), ("", "app/", "/app")],
)
def test_cwd(config_dir: str, image_dir: str, expected: str) -> None:
    spec = build(container(working_dir=config_dir), image=replace(IMAGE, working_dir=image_dir))
    assert spec["process"]["cwd"] == expected


@pytest.mark.parametrize("tty", [True, False])
def test_terminal_follows_tty(tty: bool) -> None:
    assert build(container(tty=tty))["process"]["terminal"] is tty


def test_user_from_resolved_user() -> None:
    user = ResolvedUser(1000, 3000, (3000, 4000, 5000))
    assert build(container(), user=user)["process"]["user"] == {
        "uid": 1000,
        "gid": 3000,
        "additionalGids": [3000, 4000, 5000],
    }


@pytest.mark.parametrize("nnp", [True, False])
def test_no_new_privileges(nnp: bool) -> None:
    spec = build(container(security={"no_new_privs": nnp}))
    assert spec["process"]["noNewPrivileges"] is nnp


@pytest.mark.parametrize(
    ("requested", "ours", "expected"),
    [
        (-998, -999, -998),  # kubelet's guaranteed pods: allowed, we are lower
        (-999, -500, -500),  # clamped up to our own value
        (1000, -999, 1000),
        (0, 0, 0),
        (-1000, -1000, -1000),
    ],
)
def test_oom_score_adj_is_clamped_to_our_own(requested: int, ours: int, expected: int) -> None:
    spec = build(
        container(resources=Resources(oom_score_adj=requested)),
        host=replace(HOST, min_oom_score_adj=ours),
    )
    assert spec["process"]["oomScoreAdj"] == expected


def test_oom_score_adj_without_resources() -> None:
    def adj(ours: int) -> int:
        return int(
            build(container(), host=replace(HOST, min_oom_score_adj=ours))["process"]["oomScoreAdj"]
        )

    assert adj(-100) == 0
    assert adj(500) == 500


def test_current_resources_win_over_the_creation_config() -> None:
    ctr = replace(
        container(resources=Resources(oom_score_adj=10)), resources=Resources(oom_score_adj=20)
    )
    assert build(ctr)["process"]["oomScoreAdj"] == 20


@pytest.mark.parametrize(
    ("hard", "expected"), [(1048576, 1048576), (65536, 65536), (2**30, 1048576)]
)
def test_nofile_rlimit_clamped_to_what_we_hold(hard: int, expected: int) -> None:
    spec = build(host=replace(HOST, nofile_hard=hard))
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": expected, "soft": expected}
    ]


def test_hostname_env_falls_back_to_sandbox_config() -> None:
    from .builders import POD

    env = build(pod=replace(POD, hostname=""))["process"]["env"]
    assert "HOSTNAME=web-0" in env  # sandbox config hostname


def test_exec_process_shares_the_container_identity() -> None:
    ctr = container(
        tty=False,
        working_dir="/srv",
        envs=(("A", "1"),),
        security={
            "no_new_privs": True,
            "capabilities": Capabilities(add=("NET_ADMIN",)),
        },
    )
    user = ResolvedUser(1000, 1000, (1000,), "/home/app")
    full = build(ctr, user=user)["process"]
    proc = exec_process(
        ctr, IMAGE, ["sh", "-c", "id"], tty=True, user=user, host=HOST, hostname="web-0"
    )
    assert proc["args"] == ["sh", "-c", "id"]
    assert proc["terminal"] is True
    for key in ("user", "env", "cwd", "capabilities", "noNewPrivileges", "rlimits"):
        assert proc[key] == full[key], key
    assert "oomScoreAdj" not in proc


def test_exec_process_needs_a_command() -> None:
    with pytest.raises(SpecError, match="no command"):
        exec_process(container(), IMAGE, [], tty=False, user=ResolvedUser(0, 0, (0,)), host=HOST)


def test_exec_process_of_privileged_container_has_all_caps() -> None:
    ctr = container(security={"privileged": True})
    proc = exec_process(ctr, IMAGE, ["ls"], tty=False, user=ResolvedUser(0, 0, (0,)), host=HOST)
    assert len(proc["capabilities"]["bounding"]) == len(HOST.bounding_caps)


def test_apparmor_profile_on_exec_process() -> None:
    host = replace(HOST, apparmor=True)
    ctr = container(
        security={"apparmor": SecurityProfile(ProfileType.LOCALHOST, "localhost/my-prof")}
    )
    proc = exec_process(ctr, IMAGE, ["ls"], tty=False, user=ResolvedUser(0, 0, (0,)), host=host)
    assert proc["apparmorProfile"] == "my-prof"


def test_privileged_container_needs_privileged_sandbox() -> None:
    with pytest.raises(SpecError, match="privileged"):
        build(container(security={"privileged": True}), sb=sandbox(privileged=False))
