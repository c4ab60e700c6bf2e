variable "name" {
  type        = string
  description = "Prefix of every resource's name (lowercase letters and digits, 3 to 16 characters: it also names the Key Vault and the storage account, which must be unique in Azure)."
  default     = "lattice"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,15}$", var.name))
    error_message = "name must be 3 to 16 lowercase letters and digits, starting with a letter."
  }
}

variable "resource_group_name" {
  type        = string
  description = "The resource group to deploy into (it must exist)."
}

variable "location" {
  type        = string
  description = "The Azure region (westeurope)."
}

variable "address_space" {
  type        = string
  description = "The address space of the virtual network the module creates (a /16): a /23 for Container Apps, a /24 for PostgreSQL, a /24 for private endpoints."
  default     = "10.80.0.0/16"
}

variable "admin_ip_ranges" {
  type        = list(string)
  description = "Addresses (CIDR) allowed through the Key Vault's firewall besides the private endpoint: where Terraform runs, since it writes the secrets."
}

variable "image" {
  type        = string
  description = "The Lattice image, pinned by digest (registry/lattice@sha256:...)."
}

variable "acr_id" {
  type        = string
  description = "The Azure Container Registry holding the image (pulled with the apps' managed identities); null for a public registry."
  default     = null
}

variable "domain_name" {
  type        = string
  description = "The host name clients and agents use (lattice.example.com); point it (a CNAME) at the gateway_fqdn output."
}

variable "tls_certificate_secret_id" {
  type        = string
  description = "Key Vault secret id of the gateway's TLS certificate for domain_name, a PEM certificate (content type application/x-pem-file) holding the chain and the key. The gateway terminates TLS itself (see the README)."
}

variable "public_port" {
  type        = number
  description = "The port clients and agents connect to (https://domain_name:public_port). Container Apps' TCP ingress, which carries the agents' streams without a request timeout, cannot expose 80 or 443."
  default     = 8443

  validation {
    condition     = var.public_port > 0 && var.public_port < 65536 && !contains([80, 443], var.public_port)
    error_message = "public_port must be a port number other than 80 and 443."
  }
}

variable "tls_certificate_key_vault_id" {
  type        = string
  description = "Resource id of the Key Vault that holds tls_certificate_secret_id (the gateway's identity is given read access to that one secret); its firewall must let the Container Apps environment through."
}

variable "roles" {
  type = map(object({
    cpu          = number
    memory       = string
    min_replicas = number
    max_replicas = number
  }))
  description = "Per role (gateway, identity, storage, tasks, tunnel, policy): CPU cores and memory of a replica (a Consumption pair such as 0.5/1Gi or 1/2Gi), and the replica range scaled on CPU. The tunnel runs one replica: see the README."
  default = {
    gateway  = { cpu = 1, memory = "2Gi", min_replicas = 2, max_replicas = 10 }
    identity = { cpu = 1, memory = "2Gi", min_replicas = 2, max_replicas = 6 }
    storage  = { cpu = 1, memory = "2Gi", min_replicas = 2, max_replicas = 6 }
    tasks    = { cpu = 0.5, memory = "1Gi", min_replicas = 2, max_replicas = 4 }
    tunnel   = { cpu = 1, memory = "2Gi", min_replicas = 1, max_replicas = 1 }
    policy   = { cpu = 0.5, memory = "1Gi", min_replicas = 2, max_replicas = 4 }
  }

  validation {
    condition     = length(setsubtract(["gateway", "identity", "storage", "tasks", "tunnel", "policy"], keys(var.roles))) == 0
    error_message = "roles must define gateway, identity, storage, tasks, tunnel and policy."
  }

  validation {
    condition     = lookup(var.roles, "tunnel", { max_replicas = 1 }).max_replicas == 1
    error_message = "roles.tunnel.max_replicas must be 1: Container Apps replicas are not reachable one by one, and the tunnel's replicas must be (see the README)."
  }
}

variable "db_sku_name" {
  type        = string
  description = "PostgreSQL Flexible Server SKU."
  default     = "GP_Standard_D2ds_v5"
}

variable "db_storage_mb" {
  type        = number
  description = "PostgreSQL storage in MB."
  default     = 65536
}

variable "db_high_availability" {
  type        = bool
  description = "A zone-redundant standby for PostgreSQL."
  default     = true
}

variable "redis_sku" {
  type        = string
  description = "Azure Cache for Redis tier: Standard (a replica) or Premium."
  default     = "Standard"

  validation {
    condition     = contains(["Standard", "Premium"], var.redis_sku)
    error_message = "redis_sku must be Standard or Premium (Basic has no replica)."
  }
}

variable "redis_capacity" {
  type        = number
  description = "Azure Cache for Redis size within the tier (C1 = 1)."
  default     = 1
}

variable "log_retention_days" {
  type        = number
  description = "How long Log Analytics keeps the logs."
  default     = 365
}

variable "run_migrations" {
  type        = bool
  description = "Run the migration job (az containerapp job start, waited for) before the apps change, whenever the image changes. Needs the az CLI where Terraform runs; off: run it yourself (see the README)."
  default     = true
}

variable "tags" {
  type        = map(string)
  description = "Tags on every resource."
  default     = {}
}
