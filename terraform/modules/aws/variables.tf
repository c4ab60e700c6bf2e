variable "name" {
  type        = string
  description = "Prefix of every resource's name (a DNS label, at most 20 characters)."
  default     = "lattice"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.name))
    error_message = "name must be 1 to 20 of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "vpc_id" {
  type        = string
  description = "The VPC to deploy into."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets (two or more, in different zones) for the tasks, the database and Redis. They need a route to the internet (NAT) or VPC endpoints for ECR, Secrets Manager, CloudWatch Logs and S3."

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "Give at least two private subnets in different availability zones."
  }
}

variable "public_subnet_ids" {
  type        = list(string)
  description = "Public subnets (two or more) for the internet-facing load balancer."

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "Give at least two public subnets in different availability zones."
  }
}

variable "domain_name" {
  type        = string
  description = "The host name clients and agents use (lattice.example.com); the certificate must cover it."
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate for domain_name, on the load balancer's HTTPS listener."
}

variable "image" {
  type        = string
  description = "The Lattice image, pinned by digest (repository@sha256:...) or an immutable tag."
}

variable "roles" {
  type = map(object({
    cpu           = number
    memory        = number
    desired_count = number
    min_count     = number
    max_count     = number
  }))
  description = "Per role (gateway, identity, storage, tasks, tunnel, policy): Fargate CPU units and memory (MiB), the starting count, and the autoscaling range on CPU."
  default = {
    gateway  = { cpu = 512, memory = 1024, desired_count = 2, min_count = 2, max_count = 10 }
    identity = { cpu = 512, memory = 1024, desired_count = 2, min_count = 2, max_count = 6 }
    storage  = { cpu = 512, memory = 1024, desired_count = 2, min_count = 2, max_count = 6 }
    tasks    = { cpu = 256, memory = 512, desired_count = 2, min_count = 2, max_count = 4 }
    tunnel   = { cpu = 512, memory = 1024, desired_count = 2, min_count = 2, max_count = 8 }
    policy   = { cpu = 256, memory = 512, desired_count = 2, min_count = 2, max_count = 4 }
  }

  validation {
    condition     = length(setsubtract(["gateway", "identity", "storage", "tasks", "tunnel", "policy"], keys(var.roles))) == 0
    error_message = "roles must define gateway, identity, storage, tasks, tunnel and policy."
  }
}

variable "db_instance_class" {
  type        = string
  description = "RDS instance class for PostgreSQL."
  default     = "db.t4g.medium"
}

variable "db_allocated_storage" {
  type        = number
  description = "RDS storage in GiB (it grows up to four times this on its own)."
  default     = 50
}

variable "db_multi_az" {
  type        = bool
  description = "A standby database in another zone."
  default     = true
}

variable "redis_node_type" {
  type        = string
  description = "ElastiCache node type."
  default     = "cache.t4g.small"
}

variable "redis_replicas" {
  type        = number
  description = "Redis replicas beside the primary (0 or more; 1 or more gives automatic failover)."
  default     = 1
}

variable "log_retention_days" {
  type        = number
  description = "How long CloudWatch keeps the logs."
  default     = 365
}

variable "alb_idle_timeout_seconds" {
  type        = number
  description = "The load balancer's idle timeout. Agents hold one gRPC stream each and send a heartbeat every 15 s; keep this well above that (the ALB maximum is 4000)."
  default     = 3600
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the database and the load balancer from deletion."
  default     = true
}

variable "run_migrations" {
  type        = bool
  description = "Run the migration task (aws ecs run-task, waited for) before the services change, whenever the image changes. Needs the aws CLI where Terraform runs; off: run it yourself (see the README)."
  default     = true
}

variable "tags" {
  type        = map(string)
  description = "Tags on every resource."
  default     = {}
}
