#!/usr/bin/env python3
"""The golden test's comparison (crates/engine/tests/golden.rs) on a logits file written by
./dump over golden_reqs.py's requests: usage score.py LOGITS.bin"""
import json, os, sys
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
golden = os.path.join(here, "../../crates/engine/tests/fixtures/golden/smollm2_q4_1_greedy.jsonl")
logits = np.fromfile(sys.argv[1], dtype=np.float32).reshape(-1, 49152)
i, chosen, top5, argmax_fails = 0, [], [], 0
for line in open(golden):
    for st in json.loads(line)["steps"]:
        x = logits[i].astype(np.float64)
        i += 1
        lp = x - x.max()
        lp -= np.log(np.exp(lp).sum())
        chosen.append(abs(lp[st["id"]] - st["logprob"]))
        argmax_fails += st["margin"] >= 0.3 and int(np.argmax(x)) != st["id"]
        top5 += [abs(lp[e[0]] - e[2]) for e in st["top5"]]
assert i == len(logits), (i, len(logits))
chosen = np.array(chosen)
print(f"{len(chosen)} steps: chosen-token |d logprob| <= 0.15 at {100 * (chosen <= 0.15).mean():.2f}%, "
      f"top-5 median {np.median(top5):.4f}, max chosen {chosen.max():.4f}, "
      f"argmax changes at margin >= 0.3: {argmax_fails}")
