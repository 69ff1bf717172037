#!/usr/bin/env python3
"""Print the rule groups of PrometheusRule manifests as a plain Prometheus rules file.

promtool (`check rules`, `test rules`) only reads plain rules files (`groups:` at the
top), while ferrolm ships its rules as a prometheus-operator PrometheusRule, so tests
run against what this prints.

Usage:
  python3 scripts/prometheus-rules.py k8s/monitoring/prometheusrule.yaml > rules.yaml
  kubectl kustomize k8s/monitoring | python3 scripts/prometheus-rules.py - > rules.yaml
"""
import sys

import yaml


def _str(dumper, s):
    # Multi-line PromQL stays readable (block scalar) in the generated file, so
    # promtool's line numbers point at something a person can follow.
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


yaml.SafeDumper.add_representer(str, _str)

def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path = sys.argv[1]
    with (sys.stdin if path == "-" else open(path, encoding="utf-8")) as f:
        # kustomize output is several documents (ConfigMaps, monitors, rules): only the
        # PrometheusRule ones carry rules.
        docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    groups = []
    for d in docs:
        if d.get("kind") == "PrometheusRule":
            groups.extend((d.get("spec") or {}).get("groups") or [])
    if not groups:
        # An empty rules file would make every test vacuous: fail loudly instead.
        print(f"{path}: no PrometheusRule with spec.groups found", file=sys.stderr)
        return 1
    # Prometheus rejects duplicate group names within one file; say which, rather
    # than leave promtool's less specific error.
    names = [g.get("name") for g in groups]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        print(f"{path}: duplicate rule group names: {', '.join(dups)}", file=sys.stderr)
        return 1
    # width: keep long PromQL expressions on one line, as written in the manifest.
    yaml.safe_dump({"groups": groups}, sys.stdout, sort_keys=False, width=1 << 16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
