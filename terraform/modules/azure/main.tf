data "azurerm_client_config" "current" {}

locals {
  roles = toset(["gateway", "identity", "storage", "tasks", "tunnel", "policy"])
  ports = { gateway = 8443, identity = 8091, storage = 8092, tasks = 8093, tunnel = 8094, policy = 8095 }
  # Roles that seal secrets with the master key; only their identity reads it.
  sealing = toset(["identity", "storage", "tunnel"])
  app     = { for r in local.roles : r => "${var.name}-${r}" }
  # Apps in one environment reach each other's TCP ingress by app name and port.
  url     = { for r, p in local.ports : r => "http://${var.name}-${r}:${p}" }
  subnets = cidrsubnets(var.address_space, 7, 8, 8)
  suffix  = random_string.suffix.result
  tags    = merge({ "app.kubernetes.io/name" = "lattice", "lattice/deployment" = var.name }, var.tags)
}

# Key Vault and storage account names are global: a random suffix keeps them unique.
resource "random_string" "suffix" {
  length  = 6
  special = false
  upper   = false
}

# ------------------------------------------------------------------ logs

resource "azurerm_log_analytics_workspace" "lattice" {
  name                = var.name
  location            = var.location
  resource_group_name = var.resource_group_name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

# ------------------------------------------------------------------ network

resource "azurerm_virtual_network" "lattice" {
  name                = var.name
  location            = var.location
  resource_group_name = var.resource_group_name
  address_space       = [var.address_space]
  tags                = local.tags
}

resource "azurerm_subnet" "apps" {
  name                 = "apps"
  resource_group_name  = var.resource_group_name
  virtual_network_name = azurerm_virtual_network.lattice.name
  address_prefixes     = [local.subnets[0]]
  delegation {
    name = "container-apps"
    service_delegation {
      name    = "Microsoft.App/environments"
      actions = ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    }
  }
}

resource "azurerm_subnet" "postgres" {
  name                 = "postgres"
  resource_group_name  = var.resource_group_name
  virtual_network_name = azurerm_virtual_network.lattice.name
  address_prefixes     = [local.subnets[1]]
  delegation {
    name = "postgres"
    service_delegation {
      name    = "Microsoft.DBforPostgreSQL/flexibleServers"
      actions = ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    }
  }
}

resource "azurerm_subnet" "endpoints" {
  name                              = "endpoints"
  resource_group_name               = var.resource_group_name
  virtual_network_name              = azurerm_virtual_network.lattice.name
  address_prefixes                  = [local.subnets[2]]
  private_endpoint_network_policies = "Enabled"
}

# The default rules let the virtual network in and everything else not; the apps'
# subnet also takes the public port.
resource "azurerm_network_security_group" "lattice" {
  for_each            = toset(["apps", "postgres", "endpoints"])
  name                = "${var.name}-${each.key}"
  location            = var.location
  resource_group_name = var.resource_group_name
  tags                = local.tags
}

resource "azurerm_network_security_rule" "public_port" {
  name                        = "lattice-gateway"
  priority                    = 100
  direction                   = "Inbound"
  access                      = "Allow"
  protocol                    = "Tcp"
  source_port_range           = "*"
  destination_port_range      = tostring(var.public_port)
  source_address_prefix       = "Internet"
  destination_address_prefix  = "*"
  resource_group_name         = var.resource_group_name
  network_security_group_name = azurerm_network_security_group.lattice["apps"].name
}

resource "azurerm_subnet_network_security_group_association" "lattice" {
  for_each                  = { apps = azurerm_subnet.apps.id, postgres = azurerm_subnet.postgres.id, endpoints = azurerm_subnet.endpoints.id }
  subnet_id                 = each.value
  network_security_group_id = azurerm_network_security_group.lattice[each.key].id
}

resource "azurerm_private_dns_zone" "lattice" {
  for_each = {
    postgres = "${var.name}.private.postgres.database.azure.com"
    redis    = "privatelink.redis.cache.windows.net"
    vault    = "privatelink.vaultcore.azure.net"
    blob     = "privatelink.blob.core.windows.net"
  }
  name                = each.value
  resource_group_name = var.resource_group_name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "lattice" {
  for_each              = azurerm_private_dns_zone.lattice
  name                  = "${var.name}-${each.key}"
  resource_group_name   = var.resource_group_name
  private_dns_zone_name = each.value.name
  virtual_network_id    = azurerm_virtual_network.lattice.id
  tags                  = local.tags
}

# ------------------------------------------------------------------ identities
# Two user-assigned identities: only the roles that seal (identity, storage, tunnel)
# may read the master key.

resource "azurerm_user_assigned_identity" "lattice" {
  for_each            = toset(["runtime", "sealing"])
  name                = "${var.name}-${each.key}"
  location            = var.location
  resource_group_name = var.resource_group_name
  tags                = local.tags
}

locals {
  identity_of = { for r in local.roles : r => contains(local.sealing, r) ? "sealing" : "runtime" }
}

resource "azurerm_role_assignment" "acr_pull" {
  for_each             = var.acr_id == null ? {} : azurerm_user_assigned_identity.lattice
  scope                = var.acr_id
  role_definition_name = "AcrPull"
  principal_id         = each.value.principal_id
}

# ------------------------------------------------------------------ secrets (Key Vault)

resource "azurerm_key_vault" "lattice" {
  #checkov:skip=CKV_AZURE_189:Public network access stays on only for admin_ip_ranges (network_acls deny everything else): Terraform writes the secrets from there; the apps read them through the private endpoint.
  name                          = "${var.name}-kv-${local.suffix}"
  location                      = var.location
  resource_group_name           = var.resource_group_name
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "standard"
  enable_rbac_authorization     = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = 90
  public_network_access_enabled = true
  network_acls {
    default_action = "Deny"
    bypass         = "AzureServices"
    ip_rules       = var.admin_ip_ranges
  }
  tags = local.tags
}

resource "azurerm_role_assignment" "terraform_secrets" {
  scope                = azurerm_key_vault.lattice.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_private_endpoint" "vault" {
  name                = "${var.name}-vault"
  location            = var.location
  resource_group_name = var.resource_group_name
  subnet_id           = azurerm_subnet.endpoints.id
  private_service_connection {
    name                           = "vault"
    private_connection_resource_id = azurerm_key_vault.lattice.id
    subresource_names              = ["vault"]
    is_manual_connection           = false
  }
  private_dns_zone_group {
    name                 = "vault"
    private_dns_zone_ids = [azurerm_private_dns_zone.lattice["vault"].id]
  }
  tags = local.tags
}

# Generated as ephemeral values and written with write-only arguments: they reach Key
# Vault and PostgreSQL, never the Terraform state or an output.

ephemeral "random_password" "db" {
  length  = 40
  special = false
}

ephemeral "random_bytes" "master_key" {
  length = 32
}

ephemeral "random_password" "jwt" {
  length  = 64
  special = false
}

locals {
  secret_values = {
    database-url = "postgres://lattice:${ephemeral.random_password.db.result}@${azurerm_postgresql_flexible_server.lattice.fqdn}:5432/lattice?sslmode=verify-full"
    # The access key: azurerm reads it into the state with the cache (sensitive).
    redis-url  = "rediss://:${azurerm_redis_cache.lattice.primary_access_key}@${azurerm_redis_cache.lattice.hostname}:${azurerm_redis_cache.lattice.ssl_port}/"
    master-key = ephemeral.random_bytes.master_key.hex
    jwt-secret = ephemeral.random_password.jwt.result
  }
}

resource "azurerm_key_vault_secret" "lattice" {
  #checkov:skip=CKV_AZURE_41:No expiry: these change only with a rolling restart of every role, and the master key never (a new one makes every sealed value unreadable).
  for_each         = toset(["database-url", "redis-url", "master-key", "jwt-secret"])
  name             = each.key
  key_vault_id     = azurerm_key_vault.lattice.id
  value_wo         = local.secret_values[each.key]
  value_wo_version = 1
  content_type     = "text/plain"
  tags             = local.tags
  depends_on       = [azurerm_role_assignment.terraform_secrets]
}

locals {
  # Which identity reads which secret (the gateway's certificate: runtime, which the
  # gateway uses).
  secret_readers = merge(
    { for s in ["database-url", "redis-url", "jwt-secret"] : "runtime/${s}" => { id = "runtime", scope = "${azurerm_key_vault.lattice.id}/secrets/${s}" } },
    { for s in ["database-url", "redis-url", "jwt-secret", "master-key"] : "sealing/${s}" => { id = "sealing", scope = "${azurerm_key_vault.lattice.id}/secrets/${s}" } },
    { "runtime/tls" = { id = "runtime", scope = "${var.tls_certificate_key_vault_id}/secrets/${element(split("/", var.tls_certificate_secret_id), 4)}" } },
  )
}

resource "azurerm_role_assignment" "secret_readers" {
  for_each             = local.secret_readers
  scope                = each.value.scope
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.lattice[each.value.id].principal_id
  depends_on           = [azurerm_key_vault_secret.lattice]
}

# ------------------------------------------------------------------ PostgreSQL

resource "azurerm_postgresql_flexible_server" "lattice" {
  #checkov:skip=CKV2_AZURE_57:The server is injected into its own delegated subnet (private access, no public endpoint), which takes the place of a private endpoint.
  name                              = "${var.name}-${local.suffix}"
  location                          = var.location
  resource_group_name               = var.resource_group_name
  version                           = "16"
  sku_name                          = var.db_sku_name
  storage_mb                        = var.db_storage_mb
  auto_grow_enabled                 = true
  delegated_subnet_id               = azurerm_subnet.postgres.id
  private_dns_zone_id               = azurerm_private_dns_zone.lattice["postgres"].id
  public_network_access_enabled     = false
  administrator_login               = "lattice"
  administrator_password_wo         = ephemeral.random_password.db.result
  administrator_password_wo_version = 1
  backup_retention_days             = 14
  geo_redundant_backup_enabled      = true
  zone                              = "1"
  authentication {
    password_auth_enabled         = true
    active_directory_auth_enabled = false
  }
  dynamic "high_availability" {
    for_each = var.db_high_availability ? [1] : []
    content {
      mode = "ZoneRedundant"
    }
  }
  lifecycle {
    # Azure moves the primary between zones on failover.
    ignore_changes = [zone, high_availability[0].standby_availability_zone]
  }
  tags       = local.tags
  depends_on = [azurerm_private_dns_zone_virtual_network_link.lattice]
}

resource "azurerm_postgresql_flexible_server_database" "lattice" {
  name      = "lattice"
  server_id = azurerm_postgresql_flexible_server.lattice.id
  charset   = "UTF8"
  collation = "en_US.utf8"
}

resource "azurerm_postgresql_flexible_server_configuration" "lattice" {
  for_each = {
    require_secure_transport = "on"
    ssl_min_protocol_version = "TLSv1.2"
    log_checkpoints          = "on"
    log_connections          = "on"
    log_disconnections       = "on"
    connection_throttling    = "on"
  }
  name      = each.key
  server_id = azurerm_postgresql_flexible_server.lattice.id
  value     = each.value
}

# ------------------------------------------------------------------ Redis

resource "azurerm_redis_cache" "lattice" {
  name                          = "${var.name}-${local.suffix}"
  location                      = var.location
  resource_group_name           = var.resource_group_name
  sku_name                      = var.redis_sku
  family                        = var.redis_sku == "Premium" ? "P" : "C"
  capacity                      = var.redis_capacity
  non_ssl_port_enabled          = false
  minimum_tls_version           = "1.2"
  public_network_access_enabled = false
  redis_version                 = "6"
  redis_configuration {}
  tags = local.tags
}

resource "azurerm_private_endpoint" "redis" {
  name                = "${var.name}-redis"
  location            = var.location
  resource_group_name = var.resource_group_name
  subnet_id           = azurerm_subnet.endpoints.id
  private_service_connection {
    name                           = "redis"
    private_connection_resource_id = azurerm_redis_cache.lattice.id
    subresource_names              = ["redisCache"]
    is_manual_connection           = false
  }
  private_dns_zone_group {
    name                 = "redis"
    private_dns_zone_ids = [azurerm_private_dns_zone.lattice["redis"].id]
  }
  tags = local.tags
}

# ------------------------------------------------------------------ objects (Blob Storage)

resource "azurerm_storage_account" "objects" {
  #checkov:skip=CKV2_AZURE_1:Encrypted with Microsoft-managed keys; a customer-managed key is the operator's choice (it needs a key and an identity of their own).
  #checkov:skip=CKV_AZURE_33:Queue logging: the account has no queues.
  name                            = "${var.name}${local.suffix}"
  location                        = var.location
  resource_group_name             = var.resource_group_name
  account_kind                    = "StorageV2"
  account_tier                    = "Standard"
  account_replication_type        = "GZRS"
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  shared_access_key_enabled       = false
  default_to_oauth_authentication = true
  public_network_access_enabled   = false
  local_user_enabled              = false
  blob_properties {
    versioning_enabled = true
    delete_retention_policy {
      days = 30
    }
    container_delete_retention_policy {
      days = 30
    }
  }
  sas_policy {
    expiration_period = "01.00:00:00"
  }
  network_rules {
    default_action = "Deny"
    bypass         = ["AzureServices"]
  }
  tags = local.tags
}

resource "azurerm_storage_container" "objects" {
  #checkov:skip=CKV2_AZURE_21:Blob reads are logged by the diagnostic setting below; the storage-insights resource this check looks for needs the account key, which is disabled.
  name                  = "objects"
  storage_account_id    = azurerm_storage_account.objects.id
  container_access_type = "private"
}

# Blob reads, writes and deletes, logged to Log Analytics.
resource "azurerm_monitor_diagnostic_setting" "blob" {
  name                       = "${var.name}-blob"
  target_resource_id         = "${azurerm_storage_account.objects.id}/blobServices/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.lattice.id
  enabled_log {
    category = "StorageRead"
  }
  enabled_log {
    category = "StorageWrite"
  }
  enabled_log {
    category = "StorageDelete"
  }
}

resource "azurerm_private_endpoint" "blob" {
  name                = "${var.name}-blob"
  location            = var.location
  resource_group_name = var.resource_group_name
  subnet_id           = azurerm_subnet.endpoints.id
  private_service_connection {
    name                           = "blob"
    private_connection_resource_id = azurerm_storage_account.objects.id
    subresource_names              = ["blob"]
    is_manual_connection           = false
  }
  private_dns_zone_group {
    name                 = "blob"
    private_dns_zone_ids = [azurerm_private_dns_zone.lattice["blob"].id]
  }
  tags = local.tags
}

resource "azurerm_role_assignment" "objects" {
  scope                = azurerm_storage_container.objects.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.lattice["sealing"].principal_id
}

# ------------------------------------------------------------------ Container Apps

resource "azurerm_container_app_environment" "lattice" {
  name                           = var.name
  location                       = var.location
  resource_group_name            = var.resource_group_name
  log_analytics_workspace_id     = azurerm_log_analytics_workspace.lattice.id
  infrastructure_subnet_id       = azurerm_subnet.apps.id
  internal_load_balancer_enabled = false
  zone_redundancy_enabled        = true
  workload_profile {
    name                  = "Consumption"
    workload_profile_type = "Consumption"
  }
  tags       = local.tags
  depends_on = [azurerm_subnet_network_security_group_association.lattice]
}

locals {
  secret_env = {
    DATABASE_URL = "database-url"
    REDIS_URL    = "redis-url"
    JWT_SECRET   = "jwt-secret"
  }
  common_env = {
    LATTICE_LOG_FORMAT            = "json"
    LATTICE_DATA_DIR              = "/var/lib/lattice"
    LATTICE_OPS_LISTEN            = "0.0.0.0:9464"
    LATTICE_GATEWAY__IDENTITY_URL = local.url.identity
    LATTICE_GATEWAY__STORAGE_URL  = local.url.storage
    LATTICE_TASKS__URL            = local.url.tasks
    LATTICE_TUNNEL__URL           = local.url.tunnel
    LATTICE_POLICY__URL           = local.url.policy
    LATTICE_STORAGE__OBJECTS_URL  = "az://${azurerm_storage_container.objects.name}/objects"
    AZURE_STORAGE_ACCOUNT_NAME    = azurerm_storage_account.objects.name
  }
  role_env = {
    # The gateway terminates TLS itself: TCP ingress passes connections through.
    gateway = {
      LATTICE_GATEWAY__LISTEN        = "0.0.0.0:8443"
      LATTICE_GATEWAY__TLS           = "files"
      LATTICE_GATEWAY__TLS_CERT_FILE = "/etc/lattice/tls/gateway-tls"
      LATTICE_GATEWAY__TLS_KEY_FILE  = "/etc/lattice/tls/gateway-tls"
      LATTICE_GATEWAY__PUBLIC_URL    = "https://${var.domain_name}:${var.public_port}"
    }
    identity = { LATTICE_IDENTITY__LISTEN = "0.0.0.0:8091" }
    storage  = { LATTICE_STORAGE__LISTEN = "0.0.0.0:8092", AZURE_CLIENT_ID = azurerm_user_assigned_identity.lattice["sealing"].client_id }
    tasks    = { LATTICE_TASKS__LISTEN = "0.0.0.0:8093" }
    # One replica (replicas are not reachable one by one): it advertises the app.
    tunnel = { LATTICE_TUNNEL__LISTEN = "0.0.0.0:8094", LATTICE_TUNNEL__ADVERTISE_URL = local.url.tunnel }
    policy = { LATTICE_POLICY__LISTEN = "0.0.0.0:8095" }
  }
  # Key Vault references each role's app holds (the gateway's certificate too).
  app_secrets = {
    for r in local.roles : r => merge(
      { for env, s in local.secret_env : s => azurerm_key_vault_secret.lattice[s].versionless_id },
      contains(local.sealing, r) ? { master-key = azurerm_key_vault_secret.lattice["master-key"].versionless_id } : {},
      r == "gateway" ? { gateway-tls = var.tls_certificate_secret_id } : {},
    )
  }
}

resource "azurerm_container_app" "role" {
  for_each                     = local.roles
  name                         = local.app[each.key]
  container_app_environment_id = azurerm_container_app_environment.lattice.id
  resource_group_name          = var.resource_group_name
  revision_mode                = "Single"
  workload_profile_name        = "Consumption"
  tags                         = local.tags

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.lattice[local.identity_of[each.key]].id]
  }

  dynamic "registry" {
    for_each = var.acr_id == null ? [] : [1]
    content {
      server   = split("/", var.image)[0]
      identity = azurerm_user_assigned_identity.lattice[local.identity_of[each.key]].id
    }
  }

  dynamic "secret" {
    for_each = local.app_secrets[each.key]
    content {
      name                = secret.key
      key_vault_secret_id = secret.value
      identity            = azurerm_user_assigned_identity.lattice[local.identity_of[each.key]].id
    }
  }

  # TCP: connections pass through whole, so gRPC streams have no request timeout.
  ingress {
    external_enabled = each.key == "gateway"
    transport        = "tcp"
    target_port      = local.ports[each.key]
    exposed_port     = each.key == "gateway" ? var.public_port : local.ports[each.key]
    traffic_weight {
      latest_revision = true
      percentage      = 100
    }
  }

  template {
    min_replicas = var.roles[each.key].min_replicas
    max_replicas = var.roles[each.key].max_replicas

    container {
      name   = each.key
      image  = var.image
      args   = ["run"]
      cpu    = var.roles[each.key].cpu
      memory = var.roles[each.key].memory

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
          name        = env.key
          secret_name = env.value
        }
      }

      dynamic "volume_mounts" {
        for_each = each.key == "gateway" ? [1] : []
        content {
          name = "tls"
          path = "/etc/lattice/tls"
        }
      }

      startup_probe {
        transport               = "HTTP"
        port                    = 9464
        path                    = "/ready"
        interval_seconds        = 5
        failure_count_threshold = 24
      }

      readiness_probe {
        transport               = "HTTP"
        port                    = 9464
        path                    = "/ready"
        interval_seconds        = 10
        failure_count_threshold = 3
      }

      liveness_probe {
        transport               = "HTTP"
        port                    = 9464
        path                    = "/health"
        interval_seconds        = 15
        failure_count_threshold = 3
      }
    }

    dynamic "volume" {
      for_each = each.key == "gateway" ? [1] : []
      content {
        name         = "tls"
        storage_type = "Secret"
      }
    }

    custom_scale_rule {
      name             = "cpu"
      custom_rule_type = "cpu"
      metadata = {
        type  = "Utilization"
        value = "70"
      }
    }
  }

  depends_on = [
    terraform_data.migrate,
    azurerm_role_assignment.secret_readers,
    azurerm_role_assignment.objects,
    azurerm_role_assignment.acr_pull,
    azurerm_private_endpoint.vault,
    azurerm_private_endpoint.redis,
    azurerm_private_endpoint.blob,
  ]
}

# The release step: `lattice-server migrate`, as a Container Apps job.
resource "azurerm_container_app_job" "migrate" {
  name                         = "${var.name}-migrate"
  location                     = var.location
  resource_group_name          = var.resource_group_name
  container_app_environment_id = azurerm_container_app_environment.lattice.id
  workload_profile_name        = "Consumption"
  replica_timeout_in_seconds   = 900
  replica_retry_limit          = 0
  tags                         = local.tags

  manual_trigger_config {
    parallelism              = 1
    replica_completion_count = 1
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.lattice["runtime"].id]
  }

  dynamic "registry" {
    for_each = var.acr_id == null ? [] : [1]
    content {
      server   = split("/", var.image)[0]
      identity = azurerm_user_assigned_identity.lattice["runtime"].id
    }
  }

  secret {
    name                = "database-url"
    key_vault_secret_id = azurerm_key_vault_secret.lattice["database-url"].versionless_id
    identity            = azurerm_user_assigned_identity.lattice["runtime"].id
  }

  template {
    container {
      name   = "migrate"
      image  = var.image
      args   = ["migrate"]
      cpu    = 0.5
      memory = "1Gi"
      env {
        name  = "LATTICE_DATA_DIR"
        value = "/tmp/lattice"
      }
      env {
        name        = "DATABASE_URL"
        secret_name = "database-url"
      }
    }
  }

  depends_on = [azurerm_role_assignment.secret_readers, azurerm_private_endpoint.vault, azurerm_role_assignment.acr_pull]
}

# Runs the migration job, and waits for it, whenever the image changes; every app
# depends on it, so no new revision starts on an unmigrated database.
resource "terraform_data" "migrate" {
  count            = var.run_migrations ? 1 : 0
  triggers_replace = [var.image, azurerm_container_app_job.migrate.id]
  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    command     = <<-EOT
      set -euo pipefail
      run=$(az containerapp job start -g "$GROUP" -n "$JOB" --query name -o tsv)
      for _ in $(seq 1 180); do
        status=$(az containerapp job execution show -g "$GROUP" -n "$JOB" --job-execution-name "$run" --query properties.status -o tsv)
        case "$status" in
          Succeeded) exit 0 ;;
          Failed|Stopped|Degraded) echo "migration $run: $status; see its log in Log Analytics" >&2; exit 1 ;;
        esac
        sleep 5
      done
      echo "migration $run: still $status after 15 minutes" >&2
      exit 1
    EOT
    environment = {
      GROUP = var.resource_group_name
      JOB   = azurerm_container_app_job.migrate.name
    }
  }
  depends_on = [azurerm_postgresql_flexible_server_database.lattice, azurerm_postgresql_flexible_server_configuration.lattice]
}
