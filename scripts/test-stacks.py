#!/usr/bin/env python3
"""The stacks (k8s/stacks/*) render to deployments that stay apart: each stack's KEDA queries
select its own namespace and served model, its ScaledObject and InterceptorRoute point at its
own Deployment and Service, its selectors pick only its own pods (with a second model in the
same namespace, k8s/stacks/second-model beside k8s/stacks/gke), and changing the one
`namespace:` line of a stack moves every name that depends on it.

    python3 scripts/test-stacks.py        (needs kubectl for `kubectl kustomize`)
"""
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def render(path):
    out = subprocess.run(["kubectl", "kustomize", path], check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs, kind, prefix="ferrolm"):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, (kind, [d["metadata"]["name"] for d in found])
    return found[0]


def check_stack(name, docs):
    """One stack's internal references; returns (namespace, model, pod labels, selector)."""
    config = one(docs, "ConfigMap", "ferrolm-config")
    ns, model = config["metadata"]["namespace"], config["data"]["SERVED_MODEL_NAME"]
    cluster_wide = {"ComputeClass", "NodePool", "EC2NodeClass", "GCENodeClass"}
    for d in docs:
        if d["kind"] not in cluster_wide:
            assert d["metadata"].get("namespace") == ns, (name, d["kind"], d["metadata"])
    deploy = one(docs, "Deployment")
    service = one(docs, "Service")
    so = one(docs, "ScaledObject")
    route = one(docs, "InterceptorRoute")
    svc, dep = service["metadata"]["name"], deploy["metadata"]["name"]
    assert so["spec"]["scaleTargetRef"]["name"] == dep, (name, so["spec"]["scaleTargetRef"])
    triggers = {t["name"]: t for t in so["spec"]["triggers"]}
    assert triggers["ferrolm-http"]["metadata"]["interceptorRoute"] == route["metadata"]["name"], name
    for t in triggers.values():
        if t["type"] == "prometheus":
            q = t["metadata"]["query"]
            assert f'namespace="{ns}"' in q and f'model_name="{model}"' in q, (name, q)
    assert route["spec"]["target"]["service"] == svc, (name, route["spec"]["target"])
    assert route["spec"]["rules"][0]["hosts"][0] == f"{svc}.{ns}.svc.cluster.local", (name, route)
    selector = deploy["spec"]["selector"]["matchLabels"]
    pods = deploy["spec"]["template"]["metadata"]["labels"]
    assert "app.kubernetes.io/instance" in selector, (name, selector)
    assert selector.items() <= pods.items(), (name, selector, pods)
    assert service["spec"]["selector"] == selector, (name, service["spec"]["selector"], selector)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector, (name, pdb["spec"]["selector"])
    return ns, model, pods, selector


def main():
    stacks = sorted(os.listdir(os.path.join(ROOT, "k8s/stacks")))
    rendered = {s: render(os.path.join(ROOT, "k8s/stacks", s)) for s in stacks}
    seen = {s: check_stack(s, docs) for s, docs in rendered.items()}

    # Two models in one namespace: distinct names, distinct models, and neither's selector
    # matches the other's pods.
    a, b = seen["gke"], seen["second-model"]
    assert a[0] == b[0] and a[1] != b[1], (a[:2], b[:2])
    assert not a[3].items() <= b[2].items() and not b[3].items() <= a[2].items(), (a[3], b[3])
    ids = lambda docs: {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
    clash = ids(rendered["gke"]) & ids(rendered["second-model"])
    shared = {"ComputeClass", "NodePool", "EC2NodeClass", "GCENodeClass"}
    assert all(k in shared for k, _, _ in clash), sorted(clash)

    # The namespace is one line: move the gke stack to team-a and every scoped name follows.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(ROOT, "k8s"), os.path.join(tmp, "k8s"))
        path = os.path.join(tmp, "k8s/stacks/gke/kustomization.yaml")
        text = open(path).read()
        assert text.count("\nnamespace: ferrolm\n") == 1
        open(path, "w").write(text.replace("\nnamespace: ferrolm\n", "\nnamespace: team-a\n"))
        ns, model, _, _ = check_stack("gke in team-a", render(os.path.dirname(path)))
        assert ns == "team-a", ns

    # Traces: the observability component sends ferrolm's spans to its Jaeger Service.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(ROOT, "k8s"), os.path.join(tmp, "k8s"))
        path = os.path.join(tmp, "k8s/stacks/gke/kustomization.yaml")
        with open(path, "a") as f:
            f.write("components:\n  - ../../observability\n")
        docs = render(os.path.dirname(path))
        check_stack("gke with traces", docs)
        args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        url = args[args.index("--otlp-traces-endpoint") + 1]
        jaeger = one(docs, "Service", "jaeger")
        port = {p["name"]: p["port"] for p in jaeger["spec"]["ports"]}["otlp-http"]
        assert url == f"http://{jaeger['metadata']['name']}:{port}", (url, jaeger)
        assert args[args.index("--log-format") + 1] == "json", args

    # GKE Autopilot: no node objects of ours, the accelerator asked for by nodeSelector, and
    # requests inside Autopilot's ranges for one L4 (CPU <= 31, memory <= 115 GiB, memory
    # limit = request).
    docs = render(os.path.join(ROOT, "k8s/overlays/gke-autopilot"))
    assert not [d for d in docs if d["kind"] in ("ComputeClass", "NodePool")], "Autopilot has none"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"], pod["nodeSelector"]
    res = pod["containers"][0]["resources"]
    gib = lambda q: float(q[:-2]) if q.endswith("Gi") else float(q) / 2**30
    assert float(res["requests"]["cpu"]) <= 31 and gib(res["requests"]["memory"]) <= 115, res
    assert res["limits"]["memory"] == res["requests"]["memory"], res
    print("ok   gke-autopilot: accelerator by nodeSelector, requests within Autopilot's L4 ranges")

    for s in stacks:
        print(f"ok   stack {s}: namespace {seen[s][0]}, model {seen[s][1]}, "
              f"instance {seen[s][3]['app.kubernetes.io/instance']}")
    print("ok   stacks: two models in one namespace stay apart; a stack's namespace moves with one line")


if __name__ == "__main__":
    sys.exit(main())
