#!/usr/bin/env bash
# check-k8s-metrics.sh: cross-check the metric names the deployment files use
# against what a ferrolm server really exports on /metrics.
#
#   scripts/check-k8s-metrics.sh METRICS_URL_OR_FILE [K8S_DIR]
#   scripts/check-k8s-metrics.sh --serve BIN MODEL [K8S_DIR]
#
# METRICS_URL_OR_FILE: http(s)://host:port[/metrics] (fetched with curl; a
# bare host:port URL gets /metrics appended), a file holding Prometheus text
# exposition, or - for stdin. K8S_DIR defaults to k8s.
#
# --serve BIN MODEL: start `BIN serve MODEL` on a free local port, wait for
# /health, send one completion (so every family has samples), check, stop it.
#
# Exposed names: every `# TYPE` family, plus _bucket/_sum/_count of
# histograms (_sum/_count of summaries), plus every sample name seen.
# Used names: every vllm:* and ferrolm_* name in
#   - KEDA ScaledObject prometheus trigger queries,
#   - PrometheusRule / rule-file `expr`s (alerts and recording rules),
#   - Grafana dashboards (*.json files, or JSON held in ConfigMap data):
#     panel/target `expr`s and templating queries,
# under K8S_DIR. Names of the form ferrolm:* are recording-rule outputs: not
# looked for in /metrics, but each one used must be recorded by some rule.
# Exits 1 listing what is missing, 0 when everything used is exposed.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

SERVE_PID=""
TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-k8s-metrics.XXXXXX")
cleanup() {
  if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
    kill "$SERVE_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$SERVE_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

[ $# -ge 1 ] || usage
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ "$1" = "--serve" ]; then
  [ $# -ge 3 ] || usage
  BIN=$2 MODEL=$3
  K8S_DIR=${4:-$REPO_ROOT/k8s}
  [ -x "$BIN" ] || { echo "check-k8s-metrics: $BIN is not executable" >&2; exit 2; }
  [ -f "$MODEL" ] || { echo "check-k8s-metrics: model $MODEL not found" >&2; exit 2; }
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  BASE="http://127.0.0.1:$PORT"
  echo "check-k8s-metrics: starting $BIN serve $MODEL on port $PORT"
  "$BIN" serve "$MODEL" --host 127.0.0.1 --port "$PORT" > "$TMP/server.log" 2>&1 &
  SERVE_PID=$!
  up=0
  for _ in $(seq 600); do          # up to 120 s for the model to load
    if curl -sf "$BASE/health" > /dev/null 2>&1; then up=1; break; fi
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.2
  done
  if [ $up != 1 ]; then
    echo "check-k8s-metrics: server did not become healthy; its log:" >&2
    tail -30 "$TMP/server.log" >&2
    exit 1
  fi
  MODEL_ID=$(curl -sf "$BASE/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
  curl -sf "$BASE/v1/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"$MODEL_ID\",\"prompt\":\"hi\",\"max_tokens\":4}" > "$TMP/completion.json" \
    || { echo "check-k8s-metrics: the test completion failed" >&2; tail -30 "$TMP/server.log" >&2; exit 1; }
  SRC="$BASE/metrics"
else
  SRC=$1
  K8S_DIR=${2:-k8s}
fi

[ -d "$K8S_DIR" ] || { echo "check-k8s-metrics: $K8S_DIR is not a directory" >&2; exit 2; }

case "$SRC" in
  http://*|https://*)
    url=$SRC
    # bare http://host:port or http://host:port/ -> /metrics
    if [[ "$url" =~ ^https?://[^/]+/?$ ]]; then url="${url%/}/metrics"; fi
    curl -sfS --max-time 30 "$url" > "$TMP/metrics.txt" \
      || { echo "check-k8s-metrics: cannot fetch $url" >&2; exit 1; }
    ;;
  -) cat > "$TMP/metrics.txt" ;;
  *) [ -f "$SRC" ] || { echo "check-k8s-metrics: $SRC: no such file" >&2; exit 2; }
     cp "$SRC" "$TMP/metrics.txt" ;;
esac

python3 - "$TMP/metrics.txt" "$K8S_DIR" <<'PYEOF'
import json, os, re, sys

metrics_path, k8s_dir = sys.argv[1], sys.argv[2]

# ---- names exposed on /metrics
exposed, families = set(), {}
for line in open(metrics_path, encoding="utf-8", errors="replace"):
    line = line.strip()
    if line.startswith("# TYPE "):
        parts = line.split()
        if len(parts) >= 4:
            name, typ = parts[2], parts[3]
            families[name] = typ
            exposed.add(name)
            if typ == "histogram":
                exposed.update(name + s for s in ("_bucket", "_sum", "_count"))
            elif typ == "summary":
                exposed.update(name + s for s in ("_sum", "_count"))
            elif typ == "counter" and not name.endswith("_total"):
                exposed.add(name + "_total")
    elif line and not line.startswith("#"):
        m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if m:
            exposed.add(m.group(0))
if not families:
    sys.exit(f"check-k8s-metrics: no '# TYPE' lines in the metrics input ({metrics_path}): not Prometheus text format?")

# ---- expressions used under K8S_DIR
try:
    import yaml
except ImportError:
    yaml = None

exprs = []          # (where, expr)
recorded = {}       # ferrolm:* name -> where

def dashboard_exprs(obj, where):
    """Every PromQL string of a Grafana dashboard: targets' expr, templating queries."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("expr", "definition") and isinstance(v, str):
                exprs.append((where, v))
            elif k == "query" and isinstance(v, str) and ("(" in v or "{" in v):
                exprs.append((where, v))
            elif k == "query" and isinstance(v, dict) and isinstance(v.get("query"), str):
                exprs.append((where, v["query"]))
            else:
                dashboard_exprs(v, where)
    elif isinstance(obj, list):
        for v in obj:
            dashboard_exprs(v, where)

def is_dashboard(d):
    return isinstance(d, dict) and isinstance(d.get("panels"), list)

def rule_groups(groups, where):
    for g in groups or []:
        for r in (g or {}).get("rules", []) or []:
            if not isinstance(r, dict):
                continue
            name = r.get("record") or r.get("alert") or "?"
            if "record" in r:
                recorded.setdefault(r["record"], f"{where} group {g.get('name')}")
            if isinstance(r.get("expr"), str):
                kind = "record" if "record" in r else "alert"
                exprs.append((f"{where} {kind} {name}", r["expr"]))

def yaml_doc(d, where):
    if not isinstance(d, dict):
        return
    kind = d.get("kind")
    name = (d.get("metadata") or {}).get("name", "?")
    if kind == "ScaledObject":
        for i, t in enumerate((d.get("spec") or {}).get("triggers", []) or []):
            q = (t.get("metadata") or {}).get("query")
            if t.get("type") == "prometheus" and isinstance(q, str):
                exprs.append((f"{where} ScaledObject/{name} trigger {t.get('name', i)}", q))
    elif kind == "PrometheusRule":
        rule_groups((d.get("spec") or {}).get("groups"), f"{where} PrometheusRule/{name}")
    elif "groups" in d and "apiVersion" not in d:
        rule_groups(d.get("groups"), where)
    elif kind == "ConfigMap":
        for key, val in (d.get("data") or {}).items():
            if isinstance(val, str) and val.lstrip().startswith("{"):
                try:
                    j = json.loads(val)
                except ValueError:
                    continue
                if is_dashboard(j):
                    dashboard_exprs(j, f"{where} ConfigMap/{name}[{key}]")

NAME_RE = re.compile(r"(?<![A-Za-z0-9_:])(vllm:[A-Za-z0-9_:]+|ferrolm_[A-Za-z0-9_]+|ferrolm:[A-Za-z0-9_:]+)")
raw_hits = []       # fallback without PyYAML: (where, name)
nfiles = 0
for root, dirs, files in os.walk(k8s_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for f in sorted(files):
        p = os.path.join(root, f)
        rel = os.path.relpath(p, k8s_dir)
        if f.endswith(".json"):
            try:
                j = json.load(open(p, encoding="utf-8"))
            except ValueError:
                continue
            if is_dashboard(j):
                nfiles += 1
                dashboard_exprs(j, rel)
        elif f.endswith((".yaml", ".yml")):
            nfiles += 1
            text = open(p, encoding="utf-8").read()
            if yaml is not None:
                try:
                    for d in yaml.safe_load_all(text):
                        yaml_doc(d, rel)
                except yaml.YAMLError as e:
                    sys.exit(f"check-k8s-metrics: {rel}: YAML error: {e}")
            else:
                # No PyYAML: scan the text minus comments (coarser, same names).
                for ln in text.splitlines():
                    ln = re.sub(r"(^|\s)#.*$", "", ln)
                    for m in re.finditer(r"record:\s*(ferrolm:[A-Za-z0-9_:]+)", ln):
                        recorded.setdefault(m.group(1), rel)
                    for m in NAME_RE.finditer(ln):
                        raw_hits.append((rel, m.group(1)))

used = {}           # name -> [where...]
for where, e in exprs:
    for m in NAME_RE.finditer(e):
        used.setdefault(m.group(1), []).append(where)
for where, n in raw_hits:
    used.setdefault(n, []).append(where)

if not used:
    sys.exit(f"check-k8s-metrics: no vllm:* / ferrolm_* / ferrolm:* names found under {k8s_dir} "
             f"({nfiles} files, {len(exprs)} expressions): wrong directory?")

missing, undefined = [], []
for n in sorted(used):
    if n.startswith("ferrolm:"):
        if n not in recorded:
            undefined.append(n)
    elif n not in exposed:
        missing.append(n)

raw = sorted(n for n in used if not n.startswith("ferrolm:"))
rec_used = sorted(n for n in used if n.startswith("ferrolm:"))
print(f"check-k8s-metrics: /metrics has {len(families)} families; {len(exprs)} expressions "
      f"under {k8s_dir} use {len(raw)} exported names and {len(rec_used)} recorded ferrolm:* names "
      f"({len(recorded)} recorded by rules)")
for n in raw:
    print(f"  {'ok     ' if n in exposed else 'MISSING'} {n}")
for n in rec_used:
    print(f"  {'rule   ' if n in recorded else 'NO RULE'} {n}")
unused = sorted(f for f in families if not any(u == f or u.startswith(f + "_") for u in raw))
if unused:
    print("  (exposed but unused: " + ", ".join(unused) + ")")

if missing or undefined:
    for n in missing:
        print(f"FAIL  {n} is not exposed on /metrics; used by: " + "; ".join(sorted(set(used[n]))))
    for n in undefined:
        print(f"FAIL  {n} is not recorded by any rule; used by: " + "; ".join(sorted(set(used[n]))))
    sys.exit(1)
print("check-k8s-metrics: OK")
PYEOF
