"""The kind overlay's memory limit against the server it runs (issue: the platform works,
acceptance 2): the server started with the flags the rendered overlay gives it (its ConfigMap
expanded into the container's args; the model path, host and port local), its resident set
measured idle after load and at its peak under a load that fills every sequence slot to the
context length; the limit must exceed the peak by MARGIN.

    python3 scripts/test-overlay-memory.py BIN MODEL [OVERLAY]
"""
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import yaml

MARGIN = 1.25  # the limit is at least 25% above the measured peak
BIN, MODEL = sys.argv[1], sys.argv[2]
OVERLAY = sys.argv[3] if len(sys.argv) > 3 else "k8s/overlays/kind-cpu"

docs = [d for d in yaml.safe_load_all(subprocess.check_output(["kubectl", "kustomize", OVERLAY])) if d]
(config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ferrolm-config")]
(deploy,) = [d for d in docs if d["kind"] == "Deployment"]
(container,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "ferrolm"]
env = dict(config["data"])
port = socket.socket()
port.bind(("127.0.0.1", 0))
port = port.getsockname()[1]
env.update(MODEL_PATH=MODEL)
args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
    args[args.index(flag) + 1] = value
limit = container["resources"]["limits"]["memory"]
units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
limit_bytes = int(limit[:-2]) * units[limit[-2:]]

proc = subprocess.Popen([BIN, "serve", *args], env={"FERROLM_LOG": "warn", "PATH": "/usr/bin:/bin"})


def status(key):
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


try:
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    time.sleep(1)
    idle = status("VmRSS")
    seqs, ctx = int(env["MAX_NUM_SEQS"]), int(env["MAX_MODEL_LEN"])

    def one(i):
        # Prompts near the context length, and outputs to its end: every slot's cache full.
        body = {"prompt": [100 + (i * 7 + j) % 4000 for j in range(ctx - 160)], "max_tokens": 150,
                "ignore_eos": True, "temperature": 0.0}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
        return json.load(urllib.request.urlopen(req, timeout=600))["usage"]["completion_tokens"]

    with ThreadPoolExecutor(seqs) as ex:
        done = list(ex.map(one, range(seqs)))
    assert all(d == 150 for d in done), done
    peak = status("VmHWM")
finally:
    proc.terminate()
    proc.wait()
def mib(b):
    return f"{b / (1 << 20):.0f} MiB"


assert limit_bytes >= MARGIN * peak, f"{OVERLAY}: limit {limit} is under {MARGIN} x the peak {mib(peak)} (idle {mib(idle)})"
print(f"ok   {OVERLAY}: memory limit {limit}; the server with its flags: idle {mib(idle)}, peak {mib(peak)} "
      f"under {seqs} full sequences of {ctx} tokens (limit/peak {limit_bytes / peak:.2f}, at least {MARGIN})")
