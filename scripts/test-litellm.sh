#!/usr/bin/env bash
# The real LiteLLM proxy (pip litellm[proxy], pinned, in a venv this script makes) started with
# the shipped k8s/litellm config, only the interceptor's address changed, in front of a real
# `ferrolm serve`: a chat and a streamed chat through it with the openai client, the master key
# enforced, the proxy's Prometheus metrics served. Between the two runs a stand-in for the KEDA
# HTTP add-on's interceptor (scripts/interceptor_standin.py: it routes by the Host header as
# the InterceptorRoute of the rendered kind stack says, 404 otherwise), since the interceptor
# itself needs a cluster.
#
#   scripts/test-litellm.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
LITELLM_VERSION=1.108.7
VENV="${FERROLM_LITELLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/venv-litellm-$LITELLM_VERSION}"
BIN=${1:-${FERROLM_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/ferrolm/target}/release/ferrolm}}
MODEL=$(./models/fetch-default.sh)
PROMETHEUS_CLIENT_VERSION=0.26.0
if [ ! -x "$VENV/bin/litellm" ] || ! "$VENV/bin/python" -c 'import prometheus_client' 2>/dev/null; then
  python3 -m venv "$VENV"
  # prometheus_client: the proxy's Prometheus callback needs it (LiteLLM's image has it).
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" \
    "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
fi

TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_SRV=$(port); P_ICP=$(port); P_LLM=$(port)
# Waits for URL while process PID lives.
wait_for() {
  for _ in $(seq 1 1500); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.2
  done
  echo "no answer from $1" >&2; tail -n 30 "$TMP"/*.log >&2 || true; return 1
}

# What the cluster would have: the kind stack's InterceptorRoute host and served model name,
# and the shipped LiteLLM config with the interceptor at a local port.
kubectl kustomize k8s/stacks/kind >"$TMP/stack.yaml"
kubectl kustomize k8s/litellm >"$TMP/litellm.yaml"
read -r HOST SERVED < <(python3 - "$TMP/stack.yaml" "$TMP/litellm.yaml" "$TMP/config.yaml" "$P_ICP" <<'PY'
import sys, yaml
stack = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
(route,) = [d for d in stack if d["kind"] == "InterceptorRoute"]
(cfg,) = [d for d in stack if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ferrolm-config")]
(lite,) = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d and d["kind"] == "ConfigMap"]
text = lite["data"]["config.yaml"]
shipped = "http://keda-add-ons-http-interceptor-proxy.keda:8080/v1"
assert shipped in text, "the shipped config no longer routes through the interceptor"
open(sys.argv[3], "w").write(text.replace(shipped, f"http://127.0.0.1:{sys.argv[4]}/v1"))
print(route["spec"]["rules"][0]["hosts"][0], cfg["data"]["SERVED_MODEL_NAME"])
PY
)

# ferrolm with an API key, as the stacks run it (Secret ferrolm-api-key): LiteLLM must send it.
FERROLM_KEY="fk-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
FERROLM_LOG=warn "$BIN" serve "$MODEL" --port "$P_SRV" --served-model-name "$SERVED" --api-key "$FERROLM_KEY" \
  --max-model-len 1024 --kv-cache-memory-bytes $((64 << 20)) >"$TMP/ferrolm.log" 2>&1 &
pids+=($!)
python3 scripts/interceptor_standin.py "$P_ICP" "$HOST" "127.0.0.1:$P_SRV" >"$TMP/interceptor.log" 2>&1 &
pids+=($!)
MASTER="sk-test-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
( cd "$TMP" && unset PROMETHEUS_MULTIPROC_DIR && LITELLM_MASTER_KEY="$MASTER" FERROLM_API_KEY="$FERROLM_KEY" \
    LITELLM_LOG=ERROR NO_DOCS=True "$VENV/bin/litellm" --config "$TMP/config.yaml" \
    --host 127.0.0.1 --port "$P_LLM" >"$TMP/litellm.log" 2>&1 ) &
pids+=($!)
wait_for "http://127.0.0.1:$P_SRV/health" "${pids[0]}"
wait_for "http://127.0.0.1:$P_LLM/health/liveliness" "${pids[2]}"

"$VENV/bin/python" - "$P_LLM" "$MASTER" "$P_ICP" "$SERVED" "$HOST" <<'PY'
import json, sys, urllib.request
import openai
port, master, icp, served, host = sys.argv[1:6]
base = f"http://127.0.0.1:{port}"
# LiteLLM's public name for the kind stack's model (config.yaml's model_name).
name = "smollm2-135m-instruct"
client = openai.OpenAI(base_url=f"{base}/v1", api_key=master, max_retries=0)
msgs = [{"role": "user", "content": "Name three colors."}]
r = client.chat.completions.create(model=name, messages=msgs, max_tokens=16, temperature=0)
text = r.choices[0].message.content
assert text and r.usage.completion_tokens > 0, r
parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model=name, messages=msgs, max_tokens=16, temperature=0, stream=True) if c.choices]
assert "".join(parts) == text, (parts, text)
# The master key is enforced: another key is refused (401; without a key database LiteLLM
# answers 400 "No connected db" for a key that is not the master key).
bad = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-wrong", max_retries=0)
try:
    bad.chat.completions.create(model=name, messages=msgs, max_tokens=4)
    raise SystemExit("a wrong key was accepted")
except openai.APIStatusError as e:
    assert e.status_code in (400, 401), e
    refused = e.status_code
# Both chats went through the interceptor with the InterceptorRoute's host. (The routes of
# models this stack does not deploy are refused: LiteLLM asks each for its models at start.)
seen = json.load(urllib.request.urlopen(f"http://127.0.0.1:{icp}/_standin/routed"))
assert seen["routed"] >= 2 and not any(host in h for h in seen["refused_hosts"]), seen
# The proxy's Prometheus callback counts the requests.
req = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {master}"})
metrics = urllib.request.urlopen(req).read().decode()
assert "litellm_" in metrics, metrics[:500]
print(f"ok   litellm: the shipped config through the interceptor's host routing to ferrolm "
      f"({served}): chat {text!r}, the same streamed, wrong key {refused}, litellm_* metrics; "
      f"interceptor: {seen['routed']} routed to {host}")
PY
