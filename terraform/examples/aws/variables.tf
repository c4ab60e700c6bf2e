variable "region" {
  type        = string
  description = "AWS region."
  default     = "eu-west-1"
}

variable "vpc_id" {
  type        = string
  description = "The VPC to deploy into."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets (two or more zones) with NAT."
}

variable "public_subnet_ids" {
  type        = list(string)
  description = "Public subnets (two or more zones) for the load balancer."
}

variable "domain_name" {
  type        = string
  description = "The host name clients and agents use."
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate for domain_name."
}

variable "image" {
  type        = string
  description = "The Lattice image, by digest."
}
