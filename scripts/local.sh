#!/usr/bin/env bash
# `make local`: the platform on a local kind cluster, in one command. It first renders and
# validates everything it would apply (the kind stack, LiteLLM; scripts/test-stacks.py, and the
# offline validator where it is on the machine); then, where kind, helm, kubectl and a container
# engine (docker or podman, answering) exist, it builds the CPU image with the default model
# baked in, creates the kind cluster `ferrolm`, loads the image, installs kube-prometheus-stack,
# KEDA and its HTTP add-on at the versions docs/deploy.md pins, applies k8s/stacks/kind and
# k8s/litellm, and prints how to reach the API, LiteLLM and Grafana. Where something is missing
# it stops after the rendering, naming what is missing (exit status 3).
#
#   scripts/local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${FERROLM_KIND_CLUSTER:-ferrolm}
IMAGE=ghcr.io/ferrolm/ferrolm:0.1.0-cpu
KEDA_VERSION=2.17.2
HTTP_ADDON_VERSION=0.15.0
NS=ferrolm

# 1. What would be applied, rendered and checked.
command -v kubectl >/dev/null || { echo "make local: stopping; missing: kubectl (it renders the manifests)" >&2; exit 3; }
python3 -c 'import yaml' 2>/dev/null || { echo "make local: stopping; missing: python3 with PyYAML (it checks the rendered stacks)" >&2; exit 3; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
kubectl kustomize k8s/stacks/kind >"$OUT/stack.yaml"
kubectl kustomize k8s/litellm >"$OUT/litellm.yaml"
python3 scripts/test-stacks.py >/dev/null
VALIDATE=$(ls ../shared/k8s-validate/validate.sh /work/shared/k8s-validate/validate.sh 2>/dev/null | head -1 || true)
if [ -n "$VALIDATE" ]; then
  SKIP_INSTALL=${SKIP_INSTALL:-1} TOOLS_VENV=${K8S_TOOLS_VENV:-/tmp/k8s-validate-venv} "$VALIDATE" k8s >"$OUT/validate.log" 2>&1 \
    || { cat "$OUT/validate.log" >&2; echo "make local: the manifests do not validate" >&2; exit 1; }
  how="rendered and validated"
else
  how="rendered (the offline validator is not on this machine)"
fi
echo "make local: k8s/stacks/kind ($(grep -c '^kind:' "$OUT/stack.yaml") objects) and k8s/litellm ($(grep -c '^kind:' "$OUT/litellm.yaml") objects) $how"

# 2. The tools the cluster needs.
engine=""
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then engine=podman; fi
missing=()
command -v kind >/dev/null || missing+=("kind (https://kind.sigs.k8s.io)")
command -v helm >/dev/null || missing+=("helm")
[ -n "$engine" ] || missing+=("a container engine that answers (docker info / podman info)")
command -v openssl >/dev/null || missing+=("openssl (it makes the keys)")
if [ ${#missing[@]} -gt 0 ]; then
  list=$(printf '%s; ' "${missing[@]}")
  echo "make local: stopping before the cluster; missing: ${list%; }" >&2
  exit 3
fi

# 3. Cluster, image, platform, ferrolm.
[ "$engine" = podman ] && export KIND_EXPERIMENTAL_PROVIDER=podman
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
kubectl config use-context "kind-$CLUSTER" >/dev/null
$engine build --target cpu --build-arg BAKE_DEFAULT_MODEL=1 -t "$IMAGE" .
if [ "$engine" = docker ]; then
  kind load docker-image "$IMAGE" --name "$CLUSTER"
else
  podman save -o "$OUT/image.tar" "$IMAGE" && kind load image-archive "$OUT/image.tar" --name "$CLUSTER"
fi
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm repo add kedacore https://kedacore.github.io/charts >/dev/null
helm repo update >/dev/null
helm upgrade --install kps prometheus-community/kube-prometheus-stack -n monitoring --create-namespace --wait
helm upgrade --install keda kedacore/keda -n keda --create-namespace --version "$KEDA_VERSION" --wait
helm upgrade --install http-add-on kedacore/keda-add-ons-http -n keda --version "$HTTP_ADDON_VERSION" --wait
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl get secret ferrolm-api-key -n "$NS" >/dev/null 2>&1 \
  || kubectl create secret generic ferrolm-api-key -n "$NS" --from-literal=api-key="$(openssl rand -hex 16)"
kubectl get secret litellm-master-key -n "$NS" >/dev/null 2>&1 \
  || kubectl create secret generic litellm-master-key -n "$NS" --from-literal=master-key="sk-$(openssl rand -hex 16)"
kubectl apply -f "$OUT/stack.yaml"
kubectl apply -f "$OUT/litellm.yaml"
kubectl rollout status deploy/ferrolm -n "$NS" --timeout 10m
kubectl rollout status deploy/litellm -n "$NS" --timeout 10m

cat <<EOF
make local: ready (kind cluster $CLUSTER, namespace $NS).
  API:      kubectl port-forward -n $NS svc/ferrolm 8000:8000      -> http://localhost:8000/v1
            key: kubectl get secret -n $NS ferrolm-api-key -o jsonpath='{.data.api-key}' | base64 -d
  LiteLLM:  kubectl port-forward -n $NS svc/litellm 4000:4000      -> http://localhost:4000/v1
            key: kubectl get secret -n $NS litellm-master-key -o jsonpath='{.data.master-key}' | base64 -d
  Grafana:  kubectl port-forward -n monitoring svc/kps-grafana 3000:80  (dashboard "ferrolm";
            admin password: kubectl get secret -n monitoring kps-grafana -o jsonpath='{.data.admin-password}' | base64 -d)
  Remove:   kind delete cluster --name $CLUSTER
EOF
