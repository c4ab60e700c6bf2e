output "url" {
  description = "The URL clients and agents use."
  value       = module.lattice.url
}

output "load_balancer_ip" {
  description = "Point the domain here (an A record)."
  value       = module.lattice.load_balancer_ip
}
