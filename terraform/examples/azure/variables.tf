variable "subscription_id" {
  type        = string
  description = "The Azure subscription."
}

variable "resource_group_name" {
  type        = string
  description = "The resource group (it must exist)."
}

variable "location" {
  type        = string
  description = "The Azure region."
  default     = "westeurope"
}

variable "admin_ip_ranges" {
  type        = list(string)
  description = "Where Terraform runs (CIDR), let through the Key Vault firewall."
}

variable "domain_name" {
  type        = string
  description = "The host name clients and agents use."
}

variable "tls_certificate_secret_id" {
  type        = string
  description = "Key Vault secret id of the gateway's PEM certificate and key."
}

variable "tls_certificate_key_vault_id" {
  type        = string
  description = "Resource id of the Key Vault holding that certificate."
}

variable "image" {
  type        = string
  description = "The Lattice image, by digest."
}

variable "acr_id" {
  type        = string
  description = "The Azure Container Registry holding the image; null for a public registry."
  default     = null
}
