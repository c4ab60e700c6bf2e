"""Structural checks of deploy/compose (no container engine runs in CI).

Each check names the file and service at fault. Run: python3 check_compose.py DIR
"""

import re
import sys
from pathlib import Path

import yaml

ROLES = {"gateway": 8088, "identity": 8091, "storage": 8092, "tasks": 8093, "tunnel": 8094, "policy": 8095}
SECRETS = ("JWT_SECRET", "LATTICE_MASTER_KEY", "POSTGRES_PASSWORD", "MFA_TOKEN_SECRET")
errors = []


def fail(where, what):
    errors.append(f"{where}: {what}")


def hardened(where, svc):
    if svc.get("user") != "65532:65532":
        fail(where, "must run as the image's non-root user 65532:65532")
    if svc.get("read_only") is not True:
        fail(where, "must have a read-only root file system (read_only: true)")
    if "ALL" not in (svc.get("cap_drop") or []):
        fail(where, "must drop every capability (cap_drop: [ALL])")
    if "no-new-privileges:true" not in (svc.get("security_opt") or []):
        fail(where, "must set no-new-privileges:true")


def no_secret_literals(where, env):
    for key, value in (env or {}).items():
        value = str(value)
        if any(s in key for s in SECRETS) and not re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", value):
            fail(where, f"{key} must come from the environment (${{...}}), not a literal")
        if key == "DATABASE_URL" and not re.search(r":\$\{POSTGRES_PASSWORD", value):
            fail(where, "DATABASE_URL must take its password from ${POSTGRES_PASSWORD}")


def check_split(path):
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services") or {}
    for name in ["postgres", "redis", "migrate", *ROLES]:
        if name not in services:
            fail(path.name, f"no service {name!r}")
    migrate = services.get("migrate", {})
    if migrate.get("command") != ["migrate"]:
        fail(f"{path.name}/migrate", "must run `migrate`")
    if (migrate.get("depends_on") or {}).get("postgres", {}).get("condition") != "service_healthy":
        fail(f"{path.name}/migrate", "must wait for a healthy postgres")
    hardened(f"{path.name}/migrate", migrate)
    published = [n for n, s in services.items() if s.get("ports")]
    if published != ["gateway"]:
        fail(path.name, f"only the gateway may publish a port, not {published}")
    for role, port in ROLES.items():
        where = f"{path.name}/{role}"
        svc = services.get(role, {})
        env = svc.get("environment") or {}
        if env.get("LATTICE_SERVICES") != role:
            fail(where, f"LATTICE_SERVICES must be {role!r}")
        dep = (svc.get("depends_on") or {}).get("migrate", {})
        if dep.get("condition") != "service_completed_successfully":
            fail(where, "must start only after migrate completed successfully")
        hardened(where, svc)
        no_secret_literals(where, env)
        listen = env.get(f"LATTICE_{role.upper()}__LISTEN")
        if listen != f"0.0.0.0:{port}":
            fail(where, f"must listen on 0.0.0.0:{port}, not {listen}")
        if (svc.get("healthcheck") or {}).get("test") != ["CMD", "/usr/local/bin/lattice-server", "healthcheck"]:
            fail(where, "must be checked with `lattice-server healthcheck`")
        if "internal" not in (svc.get("networks") or []):
            fail(where, "must be on the internal network")
        # Every URL a role is given names another role at its listen port.
        for key, value in env.items():
            m = re.fullmatch(r"http://([a-z]+):(\d+)", str(value))
            if key.endswith("_URL") and m and ROLES.get(m.group(1)) != int(m.group(2)):
                fail(where, f"{key}={value} does not match the {m.group(1)} role's port")
    for role in ("identity", "storage", "tunnel"):
        if "LATTICE_MASTER_KEY" not in (services.get(role, {}).get("environment") or {}):
            fail(f"{path.name}/{role}", "needs LATTICE_MASTER_KEY (it seals secrets)")
    for name, net in (doc.get("networks") or {}).items():
        if name == "internal" and not (net or {}).get("internal"):
            fail(path.name, "the internal network must be `internal: true`")
    no_secret_literals(f"{path.name}/postgres", services.get("postgres", {}).get("environment"))


def check_embedded(path):
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services") or {}
    if list(services) != ["lattice"]:
        fail(path.name, "must be one service, `lattice`")
        return
    svc = services["lattice"]
    hardened(f"{path.name}/lattice", svc)
    if (svc.get("environment") or {}).get("LATTICE_SERVICES") != "all":
        fail(path.name, "must run every role (LATTICE_SERVICES: all)")
    if not any(str(v).endswith(":/var/lib/lattice") for v in svc.get("volumes") or []):
        fail(path.name, "must keep /var/lib/lattice in a volume")


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/compose")
    check_split(root / "compose.yaml")
    check_embedded(root / "compose.embedded.yaml")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print("compose: ok (split and embedded)")


if __name__ == "__main__":
    main()
