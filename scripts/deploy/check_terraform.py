"""Offline checks of terraform/ (no provider downloads here): every file parses
(python-hcl2), and each module and example has the expected shape.

Run: python3 check_terraform.py [terraform]
"""

import re
import sys
from pathlib import Path

import hcl2

# The resources each cloud's module must have: the roles' services, the managed
# Postgres and Redis, the secret store, logs and the public HTTPS entry.
REQUIRED = {
    "aws": [
        "aws_ecs_cluster", "aws_ecs_service", "aws_ecs_task_definition", "aws_db_instance",
        "aws_elasticache_replication_group", "aws_secretsmanager_secret",
        "aws_cloudwatch_log_group", "aws_lb", "aws_lb_listener", "aws_lb_target_group",
        "aws_appautoscaling_target", "aws_kms_key",
    ],
    "azure": [
        "azurerm_container_app", "azurerm_container_app_environment", "azurerm_container_app_job",
        "azurerm_postgresql_flexible_server", "azurerm_redis_cache", "azurerm_key_vault",
        "azurerm_key_vault_secret", "azurerm_log_analytics_workspace", "azurerm_private_endpoint",
        "azurerm_user_assigned_identity", "azurerm_storage_account",
    ],
    "gcp": [
        "google_cloud_run_v2_service", "google_cloud_run_v2_job", "google_sql_database_instance",
        "google_sql_user", "google_redis_instance", "google_secret_manager_secret",
        "google_secret_manager_secret_version", "google_compute_backend_service",
        "google_compute_managed_ssl_certificate", "google_compute_target_https_proxy",
        "google_compute_global_forwarding_rule", "google_service_networking_connection",
        "google_storage_bucket",
    ],
}
SECRET_NAMES = re.compile(r"(password|secret|token|master_key|private_key)", re.I)
errors = []


def fail(where, what):
    errors.append(f"{where}: {what}")


def parse(path):
    try:
        with path.open() as f:
            return hcl2.load(f)
    except Exception as e:  # noqa: BLE001 - any parse failure is reported
        fail(path, f"does not parse: {e}")
        return {}


def one(value):
    """python-hcl2 wraps attribute values and nested blocks in one-element lists."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def blocks(doc, kind):
    for item in doc.get(kind, []):
        yield from item.items()


def walk(value, path=""):
    """Every (attribute path, value) pair under a parsed block."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, value


def is_literal(value):
    """A plain string, not an expression (`${...}` or a reference)."""
    return isinstance(value, str) and "${" not in value and value not in ("", "true", "false")


def check_dir(d, kind):
    files = sorted(d.glob("*.tf"))
    names = {f.name for f in files}
    for need in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        if need not in names:
            fail(d, f"has no {need}")
    readme = d / "README.md"
    if not readme.exists():
        fail(d, "has no README.md")
    elif kind == "module":
        text = readme.read_text()
        for section in ("## Inputs", "## Outputs"):
            if section not in text:
                fail(readme, f"has no {section!r} section")
    resources = set()
    for f in files:
        doc = parse(f)
        for name, body in blocks(doc, "variable"):
            if "type" not in body:
                fail(f, f"variable {name!r} has no type")
            if not body.get("description"):
                fail(f, f"variable {name!r} has no description")
            if SECRET_NAMES.search(name) and "default" in body and body["default"]:
                fail(f, f"variable {name!r} looks secret and has a default")
        for name, body in blocks(doc, "output"):
            if not body.get("description"):
                fail(f, f"output {name!r} has no description")
            text = str(body.get("value", ""))
            if "ephemeral." in text or "secret_string" in text or "random_password" in text:
                fail(f, f"output {name!r} exposes a secret")
        for rtype, named in blocks(doc, "resource"):
            resources.add(rtype)
            for rname, body in named.items():
                for attr, value in walk(body):
                    leaf = re.sub(r"(\[\d+\])+$", "", attr.split(".")[-1])
                    if SECRET_NAMES.search(leaf) and not leaf.endswith(("_version", "_id", "_arn", "_name")) and is_literal(value):
                        fail(f, f"{rtype}.{rname}: {attr} is a literal secret")
        for tf in doc.get("terraform", []):
            if f.name == "versions.tf":
                if "required_version" not in tf:
                    fail(f, "no required_version")
                for providers in tf.get("required_providers", []):
                    for pname, spec in providers.items():
                        spec = one(spec)
                        if pname.startswith("__"):
                            continue
                        if not isinstance(spec, dict) or not spec.get("version"):
                            fail(f, f"provider {pname!r} has no version constraint")
    return resources


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "terraform")
    for cloud, required in REQUIRED.items():
        module = root / "modules" / cloud
        example = root / "examples" / cloud
        if not module.is_dir():
            fail(module, "is missing")
            continue
        have = check_dir(module, "module")
        for r in required:
            if r not in have:
                fail(module, f"has no {r}")
        if not example.is_dir():
            fail(example, "is missing")
        else:
            check_dir(example, "example")
            main_tf = parse(example / "main.tf")
            sources = [one(b.get("source")) for _, b in blocks(main_tf, "module")]
            if f"../../modules/{cloud}" not in sources:
                fail(example, f"does not use ../../modules/{cloud}")
    if errors:
        print("\n".join(str(e) for e in errors), file=sys.stderr)
        sys.exit(1)
    print(f"terraform: ok ({', '.join(REQUIRED)})")


if __name__ == "__main__":
    main()
