variable "project_id" {
  type        = string
  description = "The Google Cloud project."
}

variable "region" {
  type        = string
  description = "The region."
  default     = "europe-west1"
}

variable "network" {
  type        = string
  description = "The VPC network's id (projects/<project>/global/networks/<name>)."
}

variable "domain_name" {
  type        = string
  description = "The host name clients and agents use."
}

variable "image" {
  type        = string
  description = "The Lattice image in Artifact Registry, by digest."
}
