output "url" {
  description = "The URL clients and agents use."
  value       = module.lattice.url
}

output "load_balancer_dns_name" {
  description = "Point the domain here."
  value       = module.lattice.load_balancer_dns_name
}
