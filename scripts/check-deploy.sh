#!/usr/bin/env bash
# Offline checks of deploy/ (a few seconds once the tools are installed):
#
#   1. Kubernetes: every overlay under deploy/kubernetes/overlays renders with
#      `kubectl kustomize` (kubectl 1.37, scripts/kubectl.sh), and every
#      resulting manifest validates against the Kubernetes 1.33 schemas,
#      strictly (unknown fields are errors), with kubernetes-validate: pinned,
#      in its own venv, its schemas bundled in the package. Rendering and
#      validation run in a network namespace of their own (no network at all)
#      when unshare allows it, so "offline" is checked, not assumed.
#   2. Compose: deploy/compose/compose.yaml against the Compose schema and
#      its variables, with `docker-compose config` (Debian's docker-compose,
#      installed with apt when missing; the `docker compose` plugin instead
#      when the engine has it); and it must refuse to start without tokens.
#   3. Server configs: the image's default, the compose config and the
#      Kubernetes configs (their [kubernetes] section and kubernetes pools;
#      ha's [cluster] with peer discovery, given the replica name and peer
#      token its pods get from the environment) pass the server's
#      --check-config.
#
# Usage: scripts/check-deploy.sh
# Environment: KUBERNETES_VALIDATE_VENV (default ~/.cache/sandpool/kubernetes-validate-VERSION).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KV_VERSION=1.37.0          # kubernetes-validate; bundles schemas 1.25 to 1.37
K8S_VERSION=1.33.0         # the Kubernetes version the manifests target (as k8s-openapi's v1_33)
KV_VENV=${KUBERNETES_VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sandpool/kubernetes-validate-$KV_VERSION}
T0=$(date +%s)
fail() { echo "check-deploy: FAIL: $*" >&2; exit 1; }
TMP=$(mktemp -d /tmp/sandpool-check-deploy.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------- tools
KUBECTL=$(scripts/kubectl.sh --path)
if [ ! -x "$KV_VENV/bin/kubernetes-validate" ] || [ "$(cat "$KV_VENV/.version" 2>/dev/null)" != "$KV_VERSION" ]; then
  echo "check-deploy: installing kubernetes-validate==$KV_VERSION into $KV_VENV" >&2
  rm -rf "$KV_VENV"
  python3 -m venv "$KV_VENV"
  "$KV_VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  echo "$KV_VERSION" >"$KV_VENV/.version"
fi
[ -d "$(echo "$KV_VENV"/lib/python3*/site-packages/kubernetes_validate/kubernetes-json-schema/v${K8S_VERSION}-local-strict)" ] \
  || fail "kubernetes-validate $KV_VERSION bundles no strict schemas for $K8S_VERSION"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  if ! command -v docker-compose >/dev/null; then
    echo "check-deploy: installing Debian's docker-compose" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null; }
  fi
  COMPOSE=(docker-compose)
fi
SERVER=""
for b in target/debug/sandpool-server target/release/sandpool-server; do
  if [ -x "$b" ]; then SERVER=$b; break; fi
done
[ -n "$SERVER" ] || { cargo build -p sandpool-server; SERVER=target/debug/sandpool-server; }

# ---------------------------------------------------------------- 1. kustomize + schemas
# Everything below needs no network: run it where there is none, if we can.
OFFLINE=()
if unshare -n true 2>/dev/null; then OFFLINE=(unshare -n); fi
overlays=(deploy/kubernetes/overlays/*/)
[ ${#overlays[@]} -ge 2 ] || fail "expected overlays under deploy/kubernetes/overlays"
for o in "${overlays[@]}"; do
  o=${o%/}; name=$(basename "$o")
  "${OFFLINE[@]}" "$KUBECTL" kustomize "$o" >"$TMP/$name.yaml" || fail "kubectl kustomize $o"
  out=$("${OFFLINE[@]}" "$KV_VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$TMP/$name.yaml" 2>&1) \
    || fail "$o does not validate against Kubernetes $K8S_VERSION:"$'\n'"$out"
  n=$(grep -c '^kind:' "$TMP/$name.yaml")
  ok=$(grep -c ' passed for resource ' <<<"$out" || true)
  [ "$ok" = "$n" ] || fail "$o: $n manifests, $ok validated:"$'\n'"$out"
  echo "check-deploy: $o: $n manifests valid for Kubernetes $K8S_VERSION (strict)"
done
# What the overlays promise, in the rendered output.
python3 - "$TMP/single.yaml" "$TMP/ha.yaml" "$TMP/namespaces.yaml" <<'EOF' || fail "rendered overlays do not say what the README says"
import re, sys
def docs(path):
    text = open(path).read()
    return [d for d in re.split(r"^---$", text, flags=re.M) if d.strip()]
def find(path, kind, name):
    for d in docs(path):
        if re.search(rf"^kind: {kind}$", d, re.M) and re.search(rf"^  name: {name}(-[a-z0-9]+)?$", d, re.M):
            return d
    sys.exit(f"{path}: no {kind} {name}")
def find_in(path, kind, name, namespace):
    for d in docs(path):
        if (re.search(rf"^kind: {kind}$", d, re.M) and re.search(rf"^  name: {name}$", d, re.M)
                and re.search(rf"^  namespace: {namespace}$", d, re.M)):
            return d
    sys.exit(f"{path}: no {kind} {name} in namespace {namespace}")
single, ha, namespaces = sys.argv[1:]
for path, replicas in ((single, 1), (ha, 3), (namespaces, 1)):
    dep = find(path, "Deployment", "sandpool")
    assert f"replicas: {replicas}\n" in dep, f"{path}: replicas is not {replicas}"
    assert "readOnlyRootFilesystem: true" in dep and "runAsNonRoot: true" in dep and "- ALL" in dep
    for kind, name in (("Namespace", "sandpool-sandboxes"), ("Role", "sandpool-sandboxes"),
                       ("Service", "sandpool-peers"), ("PodDisruptionBudget", "sandpool"),
                       ("NetworkPolicy", "sandpool-sandboxes-deny-all"), ("ConfigMap", "sandpool-config"),
                       ("Secret", "sandpool-tokens")):
        find(path, kind, name)
    assert "clusterIP: None" in find(path, "Service", "sandpool-peers")
    np = find_in(path, "NetworkPolicy", "sandpool-sandboxes-deny-all", "sandpool-sandboxes")
    assert "namespace: sandpool-sandboxes" in np and "- Ingress" in np and "- Egress" in np
    assert "ingress:" not in np and "egress:" not in np, "the sandbox NetworkPolicy must allow nothing"
assert "grpc:\n            port: 50051" in find(single, "Deployment", "sandpool"), "single: native gRPC probes"
dep = find(ha, "Deployment", "sandpool")
assert "SANDPOOL_TLS_CERT" in dep and "secretName: sandpool-tls" in dep and "sandpool-healthcheck" in dep
assert "grpc:\n" not in dep, "ha: the kubelet's gRPC probe speaks no TLS"
# ha: the replicas find each other through sandpool-peers' EndpointSlices,
# each named after its pod, with the peer token from a Secret.
assert re.search(r"- name: SANDPOOL_REPLICA\n +valueFrom:\n +fieldRef:\n +fieldPath: metadata.name", dep), "ha: replica from the pod name"
assert re.search(r"- name: SANDPOOL_PEER_TOKEN\n +valueFrom:\n +secretKeyRef:", dep), "ha: peer token from a Secret"
find(ha, "Secret", "sandpool-peer-token")
config = find(ha, "ConfigMap", "sandpool-config")
assert "[cluster.kubernetes]" in config and 'service = "sandpool-peers"' in config, "ha: [cluster.kubernetes]"
for path in (single, ha, namespaces):
    role = find_in(path, "Role", "sandpool-server", "sandpool")
    assert re.search(r"- discovery.k8s.io\n +resources:\n +- endpointslices\n +verbs:\n +- get\n +- list\n +- watch\n", role), f"{path}: endpointslices get, list, watch"
    assert "- endpoints\n" not in role, f"{path}: no more than discovery reads"
# The second sandbox namespace: listed in the config, with the sandbox Role
# bound there, its deny-all policy and Pod Security baseline.
assert 'namespaces = [\\"llm-sandbox\\"]' in find(namespaces, "ConfigMap", "sandpool-config") \
    or 'namespaces = ["llm-sandbox"]' in find(namespaces, "ConfigMap", "sandpool-config"), "namespaces: config"
assert "enforce: baseline" in find(namespaces, "Namespace", "llm-sandbox")
role = find_in(namespaces, "Role", "sandpool-sandboxes", "llm-sandbox")
sandbox_role = find_in(namespaces, "Role", "sandpool-sandboxes", "sandpool-sandboxes")
assert role.split("rules:")[1] == sandbox_role.split("rules:")[1], "llm-sandbox: the sandbox Role's rules"
assert "name: sandpool\n" in find_in(namespaces, "RoleBinding", "sandpool-sandboxes", "llm-sandbox")
np = find_in(namespaces, "NetworkPolicy", "sandpool-sandboxes-deny-all", "llm-sandbox")
assert "ingress:" not in np and "egress:" not in np
EOF

# ---------------------------------------------------------------- 2. compose
COMPOSE_FILE=deploy/compose/compose.yaml
SANDPOOL_TOKENS=check-token DOCKER_GID=0 "${COMPOSE[@]}" -f "$COMPOSE_FILE" config >"$TMP/compose.yaml" \
  || fail "${COMPOSE[*]} config refuses $COMPOSE_FILE"
for want in "group_add" "/var/run/docker.sock:/var/run/docker.sock" "SANDPOOL_TOKENS: check-token" \
            "sandpool.toml:/etc/sandpool/sandpool.toml:ro" "127.0.0.1:9464:9464" "read_only: true"; do
  grep -qF -- "$want" "$TMP/compose.yaml" || fail "$COMPOSE_FILE: rendered without '$want'"
done
if env -u SANDPOOL_TOKENS DOCKER_GID=0 "${COMPOSE[@]}" -f "$COMPOSE_FILE" config >/dev/null 2>&1; then
  fail "$COMPOSE_FILE renders without SANDPOOL_TOKENS"
fi
grep -q '^metrics_listen = "0.0.0.0:9464"' deploy/compose/sandpool.toml || fail "compose config: metrics_listen not set"
echo "check-deploy: $COMPOSE_FILE valid (${COMPOSE[*]} $("${COMPOSE[@]}" version --short 2>/dev/null || true))"

# ---------------------------------------------------------------- 3. server configs
for c in deploy/server/sandpool.toml deploy/compose/sandpool.toml; do
  out=$(env -u SANDPOOL_CONFIG "$SERVER" --config "$c" --check-config 2>&1) || fail "$c:"$'\n'"$out"
done
for K8S_CONF in deploy/kubernetes/base/sandpool.toml deploy/kubernetes/overlays/namespaces/sandpool.toml; do
  out=$(env -u SANDPOOL_CONFIG "$SERVER" --config "$K8S_CONF" --check-config 2>&1) \
    || fail "$K8S_CONF (the Kubernetes backend must accept it):"$'\n'"$out"
done
# ha's replicas get their name and the peer token from the environment.
HA_CONF=deploy/kubernetes/overlays/ha/sandpool.toml
out=$(env -u SANDPOOL_CONFIG SANDPOOL_REPLICA=sandpool-5d8f7c9b6-x2x4q SANDPOOL_PEER_TOKEN=check-peer-token-0123456789 \
  "$SERVER" --config "$HA_CONF" --check-config 2>&1) || fail "$HA_CONF:"$'\n'"$out"
grep -q "peers from the EndpointSlices of Service sandpool-peers" <<<"$out" || fail "$HA_CONF: no peer discovery:"$'\n'"$out"
if env -u SANDPOOL_CONFIG -u SANDPOOL_PEER_TOKEN SANDPOOL_REPLICA=sandpool-0 "$SERVER" --config "$HA_CONF" --check-config >/dev/null 2>&1; then
  fail "$HA_CONF passes without a peer token"
fi
echo "check-deploy: server configs check ($K8S_CONF with its Kubernetes pools)"
echo "check-deploy: ok in $(( $(date +%s) - T0 ))s"
