#!/usr/bin/env python3
"""Time to first token of a short request sent while a long prompt is being prefilled
(issue 18, item 8): ferrolm with prompts sharing a step's prompt tokens (the default) beside
the same binary with one partial prefill at a time (--max-num-partial-prefills 1: the old
first-come-first-served order), alternating, in one run.

Usage: benches/short-behind-long.py [BIN] [ROUNDS]   (BIN: target/release/ferrolm, ROUNDS: 3)
Prints one line per run and the medians."""

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return time.monotonic() - t0, out


def run(bin_path, extra):
    port = free_port()
    server = subprocess.Popen(
        [bin_path, "serve", "--port", str(port), "--max-model-len", "4096", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except Exception:
                time.sleep(0.1)
        # ~2,000 tokens of prompt (one token per word), one generated token each.
        long_prompt = " ".join(f"w{i % 97}" for i in range(1000))
        result = {}

        def long_request():
            result["long"] = post(port, {"prompt": long_prompt, "max_tokens": 1, "temperature": 0})

        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(2.0)
        short_secs, _ = post(port, {"prompt": "Hi there", "max_tokens": 1, "temperature": 0})
        t.join()
        long_secs, out = result["long"]
        return short_secs, long_secs, out["usage"]["prompt_tokens"]
    finally:
        server.terminate()
        server.wait()


def main():
    bin_path = sys.argv[1] if len(sys.argv) > 1 else "target/release/ferrolm"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    modes = {"shared (default)": [], "one at a time": ["--max-num-partial-prefills", "1"]}
    got = {m: [] for m in modes}
    for r in range(rounds):
        for mode, extra in modes.items():
            short, long_, n = run(bin_path, extra)
            got[mode].append((short, long_))
            print(f"round {r + 1} {mode}: short request {short:.2f} s, long ({n} prompt tokens) {long_:.2f} s", flush=True)
    for mode, runs in got.items():
        print(
            f"median {mode}: short request {statistics.median(s for s, _ in runs):.2f} s, "
            f"long {statistics.median(l for _, l in runs):.2f} s"
        )


if __name__ == "__main__":
    main()
