output "url" {
  description = "The URL clients and agents use."
  value       = module.lattice.url
}

output "gateway_fqdn" {
  description = "Point the domain here (a CNAME)."
  value       = module.lattice.gateway_fqdn
}
