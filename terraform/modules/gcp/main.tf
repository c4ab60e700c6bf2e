data "google_project" "this" {
  project_id = var.project_id
}

locals {
  roles = toset(["gateway", "identity", "storage", "tasks", "tunnel", "policy"])
  ports = { gateway = 8088, identity = 8091, storage = 8092, tasks = 8093, tunnel = 8094, policy = 8095 }
  # The gRPC service whose health (database included) each internal role reports.
  grpc_service = {
    identity = "lattice.identity.v1.IdentityService"
    storage  = "lattice.storage.v1.StorageService"
    tasks    = "lattice.tasks.v1.TaskService"
    tunnel   = "lattice.tunnel.v1.TunnelService"
    policy   = "lattice.policy.v1.PolicyService"
  }
  # Roles that seal secrets with the master key; only their service account reads it.
  sealing = toset(["identity", "storage", "tunnel"])
  # Cloud Run's deterministic URLs: known before the services exist, so every role
  # can be told every other's address without a dependency cycle.
  url    = { for r in local.roles : r => "https://${var.name}-${r}-${data.google_project.this.number}.${var.region}.run.app" }
  labels = merge({ "app-kubernetes-io-name" = "lattice", "lattice-deployment" = var.name }, var.labels)
  apis   = toset(["run.googleapis.com", "sqladmin.googleapis.com", "redis.googleapis.com", "secretmanager.googleapis.com", "servicenetworking.googleapis.com", "compute.googleapis.com"])
}

resource "google_project_service" "apis" {
  for_each           = local.apis
  project            = var.project_id
  service            = each.key
  disable_on_destroy = false
}

# ------------------------------------------------------------------ network
# Cloud Run egresses into this subnet (Direct VPC egress, all traffic): Cloud SQL and
# Memorystore are reached by private address, other roles' run.app URLs through
# Private Google Access (so they count as internal traffic), the internet via NAT.

resource "google_compute_subnetwork" "lattice" {
  project                  = var.project_id
  name                     = "${var.name}-run"
  region                   = var.region
  network                  = var.network
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true
  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
  depends_on = [google_project_service.apis]
}

resource "google_compute_router" "lattice" {
  project = var.project_id
  name    = var.name
  region  = var.region
  network = var.network
}

resource "google_compute_router_nat" "lattice" {
  project                            = var.project_id
  name                               = var.name
  router                             = google_compute_router.lattice.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"
  subnetwork {
    name                    = google_compute_subnetwork.lattice.id
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }
  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

resource "google_compute_global_address" "private_services" {
  project       = var.project_id
  name          = "${var.name}-private-services"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = var.private_services_cidr_prefix
  network       = var.network
}

resource "google_service_networking_connection" "lattice" {
  network                 = var.network
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_services.name]
  depends_on              = [google_project_service.apis]
}

# ------------------------------------------------------------------ PostgreSQL (Cloud SQL)

resource "google_sql_database_instance" "lattice" {
  #checkov:skip=CKV_GCP_79:PostgreSQL 16 is the version Lattice is tested against; move on with the project.
  #checkov:skip=CKV_GCP_6:ssl_mode ENCRYPTED_ONLY refuses every connection without TLS, and Lattice verifies the server against the instance's CA; client certificates (TRUSTED_CLIENT_CERTIFICATE_REQUIRED) would add a second credential beside the password without more protection.
  project             = var.project_id
  name                = var.name
  region              = var.region
  database_version    = "POSTGRES_16"
  deletion_protection = var.deletion_protection
  settings {
    tier              = var.db_tier
    edition           = "ENTERPRISE"
    availability_type = var.db_high_availability ? "REGIONAL" : "ZONAL"
    disk_type         = "PD_SSD"
    disk_size         = var.db_disk_size_gb
    disk_autoresize   = true
    user_labels       = local.labels
    ip_configuration {
      ipv4_enabled    = false
      private_network = var.network
      ssl_mode        = "ENCRYPTED_ONLY"
    }
    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "03:00"
      transaction_log_retention_days = 7
      backup_retention_settings {
        retained_backups = 14
      }
    }
    insights_config {
      query_insights_enabled = true
    }
    maintenance_window {
      day          = 7
      hour         = 4
      update_track = "stable"
    }
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_duration"
      value = "on"
    }
    database_flags {
      # -1: statements are not logged with their durations (they carry values).
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "pgaudit.log"
      value = "ddl,role"
    }
  }
  depends_on = [google_service_networking_connection.lattice]
}

resource "google_sql_database" "lattice" {
  project  = var.project_id
  name     = "lattice"
  instance = google_sql_database_instance.lattice.name
}

ephemeral "random_password" "db" {
  length  = 40
  special = false
}

resource "google_sql_user" "lattice" {
  project             = var.project_id
  name                = "lattice"
  instance            = google_sql_database_instance.lattice.name
  password_wo         = ephemeral.random_password.db.result
  password_wo_version = 1
}

# ------------------------------------------------------------------ Redis (Memorystore)

resource "google_redis_instance" "lattice" {
  #checkov:skip=CKV_GCP_95:No AUTH string: it would sit in the Terraform state (the provider exports it). Redis holds only caches and events, is reachable only from the VPC by private services access, and speaks TLS verified against the instance's CA.
  project                 = var.project_id
  name                    = var.name
  region                  = var.region
  tier                    = var.redis_high_availability ? "STANDARD_HA" : "BASIC"
  memory_size_gb          = var.redis_memory_size_gb
  redis_version           = "REDIS_7_2"
  authorized_network      = var.network
  connect_mode            = "PRIVATE_SERVICE_ACCESS"
  transit_encryption_mode = "SERVER_AUTHENTICATION"
  auth_enabled            = false
  labels                  = local.labels
  maintenance_policy {
    weekly_maintenance_window {
      day = "SUNDAY"
      start_time {
        hours = 4
      }
    }
  }
  depends_on = [google_service_networking_connection.lattice]
}

# ------------------------------------------------------------------ secrets
# Generated as ephemeral values and written with write-only arguments: they reach
# Secret Manager and Cloud SQL, never the Terraform state or an output.

ephemeral "random_bytes" "master_key" {
  length = 32
}

ephemeral "random_password" "jwt" {
  length  = 64
  special = false
}

resource "google_secret_manager_secret" "lattice" {
  for_each  = toset(["database-url", "redis-url", "master-key", "jwt-secret", "cloudsql-ca", "redis-ca"])
  project   = var.project_id
  secret_id = "${var.name}-${each.key}"
  labels    = local.labels
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "database_url" {
  secret                 = google_secret_manager_secret.lattice["database-url"].id
  secret_data_wo         = "postgres://lattice:${ephemeral.random_password.db.result}@${google_sql_database_instance.lattice.private_ip_address}:5432/lattice?sslmode=verify-ca&sslrootcert=/etc/lattice/cloudsql/ca.pem"
  secret_data_wo_version = 1
}

resource "google_secret_manager_secret_version" "redis_url" {
  secret                 = google_secret_manager_secret.lattice["redis-url"].id
  secret_data_wo         = "rediss://${google_redis_instance.lattice.host}:${google_redis_instance.lattice.port}/"
  secret_data_wo_version = 1
}

resource "google_secret_manager_secret_version" "master_key" {
  secret                 = google_secret_manager_secret.lattice["master-key"].id
  secret_data_wo         = ephemeral.random_bytes.master_key.hex
  secret_data_wo_version = 1
  # Rotating the master key makes every sealed value unreadable: never replace it.
  lifecycle {
    prevent_destroy = true
  }
}

resource "google_secret_manager_secret_version" "jwt" {
  secret                 = google_secret_manager_secret.lattice["jwt-secret"].id
  secret_data_wo         = ephemeral.random_password.jwt.result
  secret_data_wo_version = 1
}

# The servers' CA certificates (public, not secret), mounted as files: Cloud SQL and
# Memorystore present certificates their own per-instance CAs sign.
resource "google_secret_manager_secret_version" "cloudsql_ca" {
  secret      = google_secret_manager_secret.lattice["cloudsql-ca"].id
  secret_data = google_sql_database_instance.lattice.server_ca_cert[0].cert
}

resource "google_secret_manager_secret_version" "redis_ca" {
  secret      = google_secret_manager_secret.lattice["redis-ca"].id
  secret_data = join("\n", [for c in google_redis_instance.lattice.server_ca_certs : c.cert])
}

# ------------------------------------------------------------------ identities
# Two service accounts: only the roles that seal (identity, storage, tunnel) may read
# the master key.

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${var.name}-runtime"
  display_name = "Lattice gateway, tasks, policy and migrations"
}

resource "google_service_account" "sealing" {
  project      = var.project_id
  account_id   = "${var.name}-sealing"
  display_name = "Lattice identity, storage and tunnel"
}

locals {
  # Which account reads which secret.
  secret_readers = merge(
    { for s in ["database-url", "redis-url", "jwt-secret", "cloudsql-ca", "redis-ca"] : "runtime/${s}" => { secret = s, sa = google_service_account.runtime.email } },
    { for s in ["database-url", "redis-url", "jwt-secret", "cloudsql-ca", "redis-ca", "master-key"] : "sealing/${s}" => { secret = s, sa = google_service_account.sealing.email } },
  )
}

resource "google_secret_manager_secret_iam_member" "readers" {
  for_each  = local.secret_readers
  project   = var.project_id
  secret_id = google_secret_manager_secret.lattice[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${each.value.sa}"
}

# ------------------------------------------------------------------ objects (Cloud Storage)

resource "google_storage_bucket" "objects" {
  #checkov:skip=CKV_GCP_62:Access logs need a log bucket that the operator owns; set logging on that bucket's terms.
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name}-objects"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection
  labels                      = local.labels
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket_iam_member" "objects" {
  bucket = google_storage_bucket.objects.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.sealing.email}"
}

# ------------------------------------------------------------------ Cloud Run

locals {
  secret_env = {
    DATABASE_URL = "database-url"
    REDIS_URL    = "redis-url"
    JWT_SECRET   = "jwt-secret"
  }
  common_env = {
    LATTICE_LOG_FORMAT            = "json"
    LATTICE_DATA_DIR              = "/var/lib/lattice"
    LATTICE_REDIS_CA_FILE         = "/etc/lattice/redis/ca.pem"
    LATTICE_GATEWAY__IDENTITY_URL = local.url.identity
    LATTICE_GATEWAY__STORAGE_URL  = local.url.storage
    LATTICE_TASKS__URL            = local.url.tasks
    LATTICE_TUNNEL__URL           = local.url.tunnel
    LATTICE_POLICY__URL           = local.url.policy
    LATTICE_STORAGE__OBJECTS_URL  = "gs://${google_storage_bucket.objects.name}/objects"
  }
  role_env = {
    gateway = {
      LATTICE_GATEWAY__LISTEN              = "0.0.0.0:8088"
      LATTICE_GATEWAY__TLS                 = "off"
      LATTICE_GATEWAY__PUBLIC_URL          = "https://${var.domain_name}"
      LATTICE_GATEWAY__TRUST_FORWARDED_FOR = "true"
    }
    identity = { LATTICE_IDENTITY__LISTEN = "0.0.0.0:8091" }
    storage  = { LATTICE_STORAGE__LISTEN = "0.0.0.0:8092" }
    tasks    = { LATTICE_TASKS__LISTEN = "0.0.0.0:8093" }
    # One instance (Cloud Run instances cannot reach each other): it advertises the
    # service's URL.
    tunnel = { LATTICE_TUNNEL__LISTEN = "0.0.0.0:8094", LATTICE_TUNNEL__ADVERTISE_URL = local.url.tunnel }
    policy = { LATTICE_POLICY__LISTEN = "0.0.0.0:8095" }
  }
  ca_mounts = { cloudsql-ca = "/etc/lattice/cloudsql", redis-ca = "/etc/lattice/redis" }
}

resource "google_cloud_run_v2_service" "role" {
  for_each             = local.roles
  project              = var.project_id
  name                 = "${var.name}-${each.key}"
  location             = var.region
  ingress              = each.key == "gateway" ? "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER" : "INGRESS_TRAFFIC_INTERNAL_ONLY"
  invoker_iam_disabled = true
  deletion_protection  = var.deletion_protection
  labels               = local.labels

  template {
    service_account                  = contains(local.sealing, each.key) ? google_service_account.sealing.email : google_service_account.runtime.email
    timeout                          = "${var.request_timeout_seconds}s"
    max_instance_request_concurrency = var.roles[each.key].concurrency
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    labels                           = local.labels

    scaling {
      min_instance_count = var.roles[each.key].min_instances
      max_instance_count = var.roles[each.key].max_instances
    }

    vpc_access {
      egress = "ALL_TRAFFIC"
      network_interfaces {
        network    = var.network
        subnetwork = google_compute_subnetwork.lattice.id
      }
    }

    dynamic "volumes" {
      for_each = local.ca_mounts
      content {
        name = volumes.key
        secret {
          secret = google_secret_manager_secret.lattice[volumes.key].secret_id
          items {
            version = "latest"
            path    = "ca.pem"
          }
        }
      }
    }

    containers {
      image = var.image
      args  = ["run"]

      # h2c: HTTP/2 end to end, which gRPC streams need.
      ports {
        name           = "h2c"
        container_port = local.ports[each.key]
      }

      resources {
        limits            = { cpu = var.roles[each.key].cpu, memory = var.roles[each.key].memory }
        cpu_idle          = false
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = merge(local.common_env, local.role_env[each.key], { LATTICE_SERVICES = each.key })
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = merge(local.secret_env, contains(local.sealing, each.key) ? { LATTICE_MASTER_KEY = "master-key" } : {})
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.lattice[env.value].secret_id
              version = "latest"
            }
          }
        }
      }

      dynamic "volume_mounts" {
        for_each = local.ca_mounts
        content {
          name       = volume_mounts.key
          mount_path = volume_mounts.value
        }
      }

      startup_probe {
        initial_delay_seconds = 2
        period_seconds        = 5
        failure_threshold     = 24
        timeout_seconds       = 3
        dynamic "http_get" {
          for_each = each.key == "gateway" ? [1] : []
          content {
            path = "/ready"
            port = local.ports.gateway
          }
        }
        dynamic "grpc" {
          for_each = each.key == "gateway" ? [] : [1]
          content {
            port    = local.ports[each.key]
            service = local.grpc_service[each.key]
          }
        }
      }

      liveness_probe {
        period_seconds    = 15
        failure_threshold = 3
        timeout_seconds   = 5
        dynamic "http_get" {
          for_each = each.key == "gateway" ? [1] : []
          content {
            path = "/health"
            port = local.ports.gateway
          }
        }
        dynamic "grpc" {
          for_each = each.key == "gateway" ? [] : [1]
          content {
            port = local.ports[each.key]
          }
        }
      }
    }
  }

  depends_on = [
    terraform_data.migrate,
    google_secret_manager_secret_iam_member.readers,
    google_secret_manager_secret_version.database_url,
    google_secret_manager_secret_version.redis_url,
    google_secret_manager_secret_version.master_key,
    google_secret_manager_secret_version.jwt,
    google_secret_manager_secret_version.cloudsql_ca,
    google_secret_manager_secret_version.redis_ca,
    google_storage_bucket_iam_member.objects,
  ]
}

# The release step: `lattice-server migrate`, as a Cloud Run job.
resource "google_cloud_run_v2_job" "migrate" {
  project             = var.project_id
  name                = "${var.name}-migrate"
  location            = var.region
  deletion_protection = var.deletion_protection
  labels              = local.labels

  template {
    task_count = 1
    template {
      service_account = google_service_account.runtime.email
      max_retries     = 0
      timeout         = "900s"
      vpc_access {
        egress = "ALL_TRAFFIC"
        network_interfaces {
          network    = var.network
          subnetwork = google_compute_subnetwork.lattice.id
        }
      }
      volumes {
        name = "cloudsql-ca"
        secret {
          secret = google_secret_manager_secret.lattice["cloudsql-ca"].secret_id
          items {
            version = "latest"
            path    = "ca.pem"
          }
        }
      }
      containers {
        image = var.image
        args  = ["migrate"]
        env {
          name  = "LATTICE_DATA_DIR"
          value = "/tmp/lattice"
        }
        env {
          name = "DATABASE_URL"
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.lattice["database-url"].secret_id
              version = "latest"
            }
          }
        }
        volume_mounts {
          name       = "cloudsql-ca"
          mount_path = "/etc/lattice/cloudsql"
        }
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.readers,
    google_secret_manager_secret_version.database_url,
    google_secret_manager_secret_version.cloudsql_ca,
  ]
}

# Runs the migration job, and waits for it, whenever the image changes; every
# service depends on it, so no new revision starts on an unmigrated database.
resource "terraform_data" "migrate" {
  count            = var.run_migrations ? 1 : 0
  triggers_replace = [var.image, google_cloud_run_v2_job.migrate.generation]
  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    command     = "gcloud run jobs execute \"$JOB\" --project \"$PROJECT\" --region \"$REGION\" --wait"
    environment = {
      JOB     = google_cloud_run_v2_job.migrate.name
      PROJECT = var.project_id
      REGION  = var.region
    }
  }
  depends_on = [google_sql_database.lattice, google_sql_user.lattice]
}

# ------------------------------------------------------------------ load balancer
# A global external Application Load Balancer: HTTPS with a Google-managed
# certificate, TLS 1.2 or later, HTTP/2 to clients and on to the gateway's h2c port,
# HTTP redirected to HTTPS. The gateway takes traffic only from it.

resource "google_compute_global_address" "lattice" {
  project = var.project_id
  name    = var.name
}

resource "google_compute_managed_ssl_certificate" "lattice" {
  project = var.project_id
  name    = var.name
  managed {
    domains = [var.domain_name]
  }
}

resource "google_compute_ssl_policy" "lattice" {
  project         = var.project_id
  name            = var.name
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_region_network_endpoint_group" "gateway" {
  project               = var.project_id
  name                  = "${var.name}-gateway"
  region                = var.region
  network_endpoint_type = "SERVERLESS"
  cloud_run {
    service = google_cloud_run_v2_service.role["gateway"].name
  }
}

resource "google_compute_backend_service" "gateway" {
  project               = var.project_id
  name                  = "${var.name}-gateway"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"
  log_config {
    enable      = true
    sample_rate = 1.0
  }
  backend {
    group = google_compute_region_network_endpoint_group.gateway.id
  }
}

resource "google_compute_url_map" "lattice" {
  project         = var.project_id
  name            = var.name
  default_service = google_compute_backend_service.gateway.id
}

resource "google_compute_target_https_proxy" "lattice" {
  project          = var.project_id
  name             = var.name
  url_map          = google_compute_url_map.lattice.id
  ssl_certificates = [google_compute_managed_ssl_certificate.lattice.id]
  ssl_policy       = google_compute_ssl_policy.lattice.id
}

resource "google_compute_global_forwarding_rule" "https" {
  project               = var.project_id
  name                  = "${var.name}-https"
  target                = google_compute_target_https_proxy.lattice.id
  ip_address            = google_compute_global_address.lattice.id
  port_range            = "443"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  labels                = local.labels
}

resource "google_compute_url_map" "redirect" {
  project = var.project_id
  name    = "${var.name}-redirect"
  default_url_redirect {
    https_redirect         = true
    redirect_response_code = "MOVED_PERMANENTLY_DEFAULT"
    strip_query            = false
  }
}

resource "google_compute_target_http_proxy" "redirect" {
  project = var.project_id
  name    = "${var.name}-redirect"
  url_map = google_compute_url_map.redirect.id
}

resource "google_compute_global_forwarding_rule" "http" {
  project               = var.project_id
  name                  = "${var.name}-http"
  target                = google_compute_target_http_proxy.redirect.id
  ip_address            = google_compute_global_address.lattice.id
  port_range            = "80"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  labels                = local.labels
}
