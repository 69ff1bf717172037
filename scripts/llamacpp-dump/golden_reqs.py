#!/usr/bin/env python3
"""Writes the goldens' teacher-forcing requests for ./dump: one line per record,
"prompt ids|completion ids (+ the end-of-generation id when it stopped)"."""
import json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
golden = os.path.join(here, "../../crates/engine/tests/fixtures/golden/smollm2_q4_1_greedy.jsonl")
for line in open(golden):
    r = json.loads(line)
    t = list(r["completion_ids"]) + ([r["eog_id"]] if r.get("eog_id") is not None else [])
    sys.stdout.write(" ".join(map(str, r["prompt_ids"])) + "|" + " ".join(map(str, t)) + "\n")
