#!/usr/bin/env bash
# test-alert-rules.sh: promtool unit tests of ferrolm's alerts
# (tests/platform/alerts_test.yaml) against the rules of a PrometheusRule.
#
#   scripts/test-alert-rules.sh [PROMETHEUSRULE_YAML]
#
# PROMETHEUSRULE_YAML defaults to k8s/monitoring/prometheusrule.yaml; - reads
# stdin (e.g. `kubectl kustomize k8s/monitoring | scripts/test-alert-rules.sh -`).
# Also fails when an alert in the rules has no test that shows it firing and
# no test that expects it quiet, so a new alert cannot go untested.
# Prints "ok   promtool test rules (N alerts)" on success.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${1:-$ROOT/k8s/monitoring/prometheusrule.yaml}
TEST=$ROOT/tests/platform/alerts_test.yaml

command -v promtool >/dev/null 2>&1 || {
  echo "promtool not found (scripts/ensure-test-tools.sh installs it)" >&2; exit 1; }

# The test file names its rules file relative to itself: run a copy next to a
# freshly generated one in a private directory, so nothing stale in the tree
# is tested and parallel runs do not collide.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/test-alert-rules.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 "$ROOT/scripts/prometheus-rules.py" "$SRC" >"$TMP/.rules.gen.yaml"
cp "$TEST" "$TMP/alerts_test.yaml"

if ! out=$(cd "$TMP" && promtool test rules alerts_test.yaml 2>&1); then
  printf '%s\n' "$out" >&2
  echo "FAIL promtool test rules ($TEST)" >&2
  exit 1
fi

n=$(python3 - "$TMP/.rules.gen.yaml" "$TEST" <<'EOF'
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
tests = yaml.safe_load(open(sys.argv[2]))
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
fires, quiet = set(), set()
for t in tests.get("tests") or []:
    for a in t.get("alert_rule_test") or []:
        (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
missing = [f"{a} ({', '.join(k for k, s in (('firing', fires), ('quiet', quiet)) if a not in s)})"
           for a in alerts if a not in fires or a not in quiet]
if missing:
    sys.exit("alerts without a firing and a quiet test: " + "; ".join(missing))
print(len(alerts))
EOF
) || { echo "FAIL promtool test rules: coverage ($TEST)" >&2; exit 1; }

echo "ok   promtool test rules ($n alerts)"
