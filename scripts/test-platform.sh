#!/usr/bin/env bash
# The local platform test (issue: the platform works): a real Prometheus (Debian's package)
# scrapes a real `ferrolm serve` with the scrape settings rendered from k8s/monitoring's
# ServiceMonitor and loads the rendered PrometheusRule; after a short load (completions, a
# request the engine fails, requests refused with 429) every recording rule and every KEDA
# trigger query of the kind stack (k8s/stacks/kind: the overlay, k8s/keda and k8s/monitoring in
# namespace ferrolm) returns a non-empty series, scoped to the stack's namespace and model; the
# same query for another model returns nothing.
#
#   scripts/test-platform.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${FERROLM_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/ferrolm/target}/release/ferrolm}}
MODEL=$(./models/fetch-default.sh)
command -v prometheus >/dev/null || { echo "test-platform: prometheus is missing (scripts/ensure-test-tools.sh installs it)" >&2; exit 1; }
TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_SRV=$(port); P_PROM=$(port)

# Rendered as kubectl applies the stack (the KEDA queries' scope is filled in by its
# replacements, so there is no test without kubectl).
command -v kubectl >/dev/null || { echo "test-platform: kubectl is missing (it renders k8s/stacks/kind)" >&2; exit 1; }
kubectl kustomize k8s/stacks/kind >"$TMP/rendered.yaml"
python3 scripts/platform_config.py "$TMP/rendered.yaml" "127.0.0.1:$P_SRV" "$TMP" >"$TMP/scope"
read -r NS SERVED <"$TMP/scope"
promtool check config "$TMP/prometheus.yml" >/dev/null

# One request in four fails in the engine (its seed is 13), and a queue of one makes a burst
# get 429s: the error-rate rules have series to compute.
RUST_BACKTRACE=0 FERROLM_LOG=error FERROLM_FAULT_INJECT=sample:13 "$BIN" serve "$MODEL" --port "$P_SRV" \
  --served-model-name "$SERVED" --max-model-len 512 --kv-cache-memory-bytes $((64 << 20)) --max-num-seqs 2 --max-queue-len 1 &
pids+=($!)
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$P_PROM" --log.level=warn >"$TMP/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$P_SRV/health" >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$P_PROM/-/ready" >/dev/null 2>&1 && break
  sleep 0.1
done

python3 - "$P_SRV" "$P_PROM" "$TMP/checks.json" "$NS" <<'PY'
import json, sys, time, urllib.parse, urllib.request
from concurrent.futures import ThreadPoolExecutor
srv, prom, checks, ns = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4]

def post(body):
    req = urllib.request.Request(f"http://127.0.0.1:{srv}/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=60).status
    except urllib.error.HTTPError as e:
        return e.code

model = json.load(urllib.request.urlopen(f"http://127.0.0.1:{srv}/v1/models"))["data"][0]["id"]
statuses = []
for round_ in range(3):
    with ThreadPoolExecutor(6) as ex:
        statuses += list(ex.map(post, [{"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.5,
                                        "seed": 13 if i == 0 else 100 + i} for i in range(6)]))
    time.sleep(1.5)
assert 200 in statuses and 429 in statuses and 500 in statuses, statuses

def query(q):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    return json.load(urllib.request.urlopen(url))["data"]["result"]

deadline = time.time() + 60
pending = {("record", r): r for r in checks["records"]}
pending.update({("keda", k["trigger"]): k["query"] for k in checks["keda"]})
results = {}
while pending and time.time() < deadline:
    for key, q in list(pending.items()):
        res = query(q)
        if res:
            results[key] = res
            del pending[key]
    time.sleep(1)
assert not pending, f"empty after 60 s: {sorted(pending)}"
for (kind, name), res in results.items():
    for series in res:
        labels = series["metric"]
        # Recording rules keep the namespace (and the model where they aggregate by it).
        if kind == "record":
            assert labels.get("namespace") == ns, (name, labels)
            if "model_name" in labels:
                assert labels["model_name"] == model, (name, labels)
# The KEDA queries select on the stack's namespace and model: the same query for another model
# (or namespace) returns nothing.
for k in checks["keda"]:
    assert f'namespace="{ns}"' in k["query"] and f'model_name="{model}"' in k["query"], k
    for other in (k["query"].replace(f'model_name="{model}"', 'model_name="another-model"'),
                  k["query"].replace(f'namespace="{ns}"', 'namespace="another-namespace"')):
        assert query(other) == [], (other, query(other))
print(f"ok   platform: Prometheus scraped ferrolm with the ServiceMonitor's settings; "
      f"{len(checks['records'])} recording rules and {len(checks['keda'])} KEDA queries return series "
      f"(namespace {ns}, model {model}); statuses {sorted(set(statuses))}")
PY
