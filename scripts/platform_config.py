"""The local platform test's Prometheus, from the rendered manifests: the scrape job the
ServiceMonitor makes prometheus-operator write (job = the Service's name, its path, scheme and
timeout; the labels the operator adds), the PrometheusRule's groups as a rules file, and the
KEDA ScaledObject's Prometheus trigger queries.

    python3 scripts/platform_config.py RENDERED.yaml TARGET OUTDIR

RENDERED.yaml: `kubectl kustomize` of a stack (k8s/stacks/kind). TARGET: host:port of the
running server. Prints the stack's namespace and served model name (the ferrolm-config
ConfigMap's), which the scrape labels and the server then use. The intervals are shortened to 1 s (the manifests say 15 s scrapes and
30 s rule groups) so that the test takes seconds; everything else is the manifests' own.
"""
import json
import os
import sys

import yaml

rendered, target, out = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
kinds = {}
for d in docs:
    kinds.setdefault(d["kind"], []).append(d)

(config,) = [c for c in kinds["ConfigMap"] if c["metadata"]["name"].startswith("ferrolm-config")]
namespace = config["metadata"]["namespace"]
served = config["data"]["SERVED_MODEL_NAME"]
(monitor,) = kinds["ServiceMonitor"]
(endpoint,) = monitor["spec"]["endpoints"]
# prometheus-operator names the job after the Service the monitor selects (ours: ferrolm).
service = "ferrolm"
scrape = {
    "job_name": service,
    "metrics_path": endpoint.get("path", "/metrics"),
    "scheme": endpoint.get("scheme", "http"),
    "scrape_interval": "1s",
    "scrape_timeout": "1s",
    "static_configs": [
        {
            "targets": [target],
            # What the operator's relabelling adds to every series of the Service's pods.
            "labels": {"namespace": namespace, "service": service, "pod": f"{service}-0",
                       "endpoint": endpoint["port"], "container": "ferrolm"},
        }
    ],
}
groups = []
for rule in kinds["PrometheusRule"]:
    for g in rule["spec"]["groups"]:
        g = dict(g, interval="1s")
        groups.append(g)
with open(os.path.join(out, "rules.yml"), "w") as f:
    yaml.safe_dump({"groups": groups}, f, sort_keys=False)
with open(os.path.join(out, "prometheus.yml"), "w") as f:
    yaml.safe_dump({"global": {"evaluation_interval": "1s"}, "rule_files": ["rules.yml"],
                    "scrape_configs": [scrape]}, f, sort_keys=False)
queries = []
for so in kinds.get("ScaledObject", []):
    for t in so["spec"]["triggers"]:
        if t["type"] == "prometheus":
            queries.append({"trigger": t["name"], "query": t["metadata"]["query"]})
# ferrolm.cost needs OpenCost's series (none here): promtool unit-tests it
# (tests/platform/alerts_test.yaml).
records = [r["record"] for g in groups if g["name"] != "ferrolm.cost" for r in g["rules"] if "record" in r]
with open(os.path.join(out, "checks.json"), "w") as f:
    json.dump({"records": records, "keda": queries}, f, indent=1)
print(f"{len(records)} recording rules, {len(queries)} KEDA queries", file=sys.stderr)
print(namespace, served)
