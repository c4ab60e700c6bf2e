variable "project_id" {
  type        = string
  description = "The Google Cloud project."
}

variable "region" {
  type        = string
  description = "The region of the Cloud Run services, Cloud SQL, Memorystore and the subnet (europe-west1)."
}

variable "name" {
  type        = string
  description = "Prefix of every resource's name (a DNS label, at most 20 characters)."
  default     = "lattice"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.name))
    error_message = "name must be 1 to 20 of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "network" {
  type        = string
  description = "The VPC network (its id or self link) to put the subnet, Cloud SQL and Memorystore in. The module adds a subnet, private services access, a Cloud Router and Cloud NAT to it."
}

variable "subnet_cidr" {
  type        = string
  description = "The range of the subnet the Cloud Run services egress through (Direct VPC egress takes its addresses here: a /24 serves about 100 instances)."
  default     = "10.90.0.0/24"
}

variable "private_services_cidr_prefix" {
  type        = number
  description = "Prefix length of the range reserved for private services access (Cloud SQL and Memorystore peer into it)."
  default     = 20
}

variable "domain_name" {
  type        = string
  description = "The host name clients and agents use (lattice.example.com); a Google-managed certificate is issued for it once its DNS points at the load balancer's address."
}

variable "image" {
  type        = string
  description = "The Lattice image in Artifact Registry, pinned by digest (region-docker.pkg.dev/project/repo/lattice@sha256:...)."
}

variable "roles" {
  type = map(object({
    cpu           = string
    memory        = string
    min_instances = number
    max_instances = number
    concurrency   = number
  }))
  description = "Per role (gateway, identity, storage, tasks, tunnel, policy): CPU and memory limits of an instance, the instance range, and the requests one instance serves at once (each agent's stream is one request to the gateway and one to the tunnel). The tunnel runs one instance: see the README."
  default = {
    gateway  = { cpu = "1", memory = "1Gi", min_instances = 2, max_instances = 10, concurrency = 1000 }
    identity = { cpu = "1", memory = "1Gi", min_instances = 2, max_instances = 6, concurrency = 200 }
    storage  = { cpu = "1", memory = "1Gi", min_instances = 2, max_instances = 6, concurrency = 200 }
    tasks    = { cpu = "1", memory = "512Mi", min_instances = 2, max_instances = 4, concurrency = 200 }
    tunnel   = { cpu = "1", memory = "1Gi", min_instances = 1, max_instances = 1, concurrency = 1000 }
    policy   = { cpu = "1", memory = "512Mi", min_instances = 2, max_instances = 4, concurrency = 200 }
  }

  validation {
    condition     = length(setsubtract(["gateway", "identity", "storage", "tasks", "tunnel", "policy"], keys(var.roles))) == 0
    error_message = "roles must define gateway, identity, storage, tasks, tunnel and policy."
  }

  validation {
    condition     = lookup(var.roles, "tunnel", { max_instances = 1 }).max_instances == 1
    error_message = "roles.tunnel.max_instances must be 1: Cloud Run instances cannot reach each other, and the tunnel's replicas must (see the README)."
  }
}

variable "db_tier" {
  type        = string
  description = "Cloud SQL machine type."
  default     = "db-custom-2-7680"
}

variable "db_disk_size_gb" {
  type        = number
  description = "Cloud SQL disk size in GB (it grows on its own)."
  default     = 50
}

variable "db_high_availability" {
  type        = bool
  description = "A standby in another zone (availability type REGIONAL)."
  default     = true
}

variable "redis_memory_size_gb" {
  type        = number
  description = "Memorystore capacity in GB."
  default     = 1
}

variable "redis_high_availability" {
  type        = bool
  description = "A Memorystore replica with automatic failover (tier STANDARD_HA)."
  default     = true
}

variable "request_timeout_seconds" {
  type        = number
  description = "Cloud Run's request timeout. Each agent's gRPC stream is one request: Cloud Run ends it after this long and the agent reconnects. 3600 is Cloud Run's maximum."
  default     = 3600

  validation {
    condition     = var.request_timeout_seconds >= 60 && var.request_timeout_seconds <= 3600
    error_message = "request_timeout_seconds must be between 60 and 3600."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the database, the Cloud Run services and the bucket from deletion."
  default     = true
}

variable "run_migrations" {
  type        = bool
  description = "Run the migration job (gcloud run jobs execute --wait) before the services change, whenever the image changes. Needs the gcloud CLI where Terraform runs; off: run it yourself (see the README)."
  default     = true
}

variable "labels" {
  type        = map(string)
  description = "Labels on every resource that takes them."
  default     = {}
}
