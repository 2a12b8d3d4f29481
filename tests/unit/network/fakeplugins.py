"""Fake CNI plugins: scripts that record every call (plugin, CNI_* environment, stdin
config) in ``calls.jsonl`` beside them and answer like a plugin would. No root needed."""

import json
import stat
import sys
from pathlib import Path
from typing import Any

from cri_async.network.cni import CNI

FAKE = f"""#!{sys.executable}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
name = os.path.basename(__file__)
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    f.write(json.dumps({{"plugin": name, "env": env, "conf": conf}}) + "\\n")
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": conf["cniVersion"],
                      "supportedVersions": conf.get("x-versions") or ["0.4.0", "1.0.0"]}}))
    sys.exit(0)
time.sleep(conf.get("sleep", 0))
if cmd in conf.get("fail", []):
    if conf.get("plain"):
        sys.stderr.write("something broke badly\\n")
    else:
        print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 11, "msg": "no luck",
                          "details": "try later"}}))
    sys.exit(1)
if cmd == "ADD":
    res = conf.get("prevResult") or {{"cniVersion": conf["cniVersion"], "interfaces": [],
                                       "ips": []}}
    if "addr" in conf:
        res["interfaces"].append({{"name": env["CNI_IFNAME"], "sandbox": env["CNI_NETNS"]}})
        res["ips"].append({{"interface": len(res["interfaces"]) - 1, "address": conf["addr"]}})
    print(json.dumps(res))
"""


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.conf = tmp / "net.d"
        self.cache = tmp / "cache"
        self.bin.mkdir()
        self.conf.mkdir()
        for name in ("loopback", "fakea", "fakeb"):
            self.add_plugin(name)

    def add_plugin(self, name: str) -> None:
        p = self.bin / name
        p.write_text(FAKE)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)

    def write(self, plugins: list[dict[str, Any]], **top: Any) -> None:
        doc = {"cniVersion": "1.0.0", "name": "fakenet", "plugins": plugins, **top}
        (self.conf / "10-fake.conflist").write_text(json.dumps(doc))

    def cni(self, **kw: Any) -> CNI:
        return CNI([str(self.conf)], [str(self.bin)], str(self.cache), **kw)

    def calls_peek(self) -> list[dict[str, Any]]:
        f = self.bin / "calls.jsonl"
        if not f.exists():
            return []
        return [json.loads(line) for line in f.read_text().splitlines()]

    def calls(self) -> list[dict[str, Any]]:
        f = self.bin / "calls.jsonl"
        if not f.exists():
            return []
        out = [json.loads(line) for line in f.read_text().splitlines()]
        f.unlink()
        return out
