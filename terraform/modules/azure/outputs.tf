output "url" {
  description = "The URL clients and agents use."
  value       = "https://${var.domain_name}:${var.public_port}"
}

output "gateway_fqdn" {
  description = "Point domain_name here (a CNAME)."
  value       = azurerm_container_app.role["gateway"].ingress[0].fqdn
}

output "static_ip_address" {
  description = "The environment's public address (for an A record instead)."
  value       = azurerm_container_app_environment.lattice.static_ip_address
}

output "apps" {
  description = "Container app per role."
  value       = { for r, a in azurerm_container_app.role : r => a.name }
}

output "migration_job" {
  description = "The migration job (az containerapp job start it before changing the apps' image when run_migrations is off)."
  value       = azurerm_container_app_job.migrate.name
}

output "key_vault_id" {
  description = "The Key Vault holding the secrets (ids, not values)."
  value       = azurerm_key_vault.lattice.id
}

output "storage_account" {
  description = "The storage account holding static-site blobs."
  value       = azurerm_storage_account.objects.name
}

output "log_analytics_workspace_id" {
  description = "Where every role's log goes."
  value       = azurerm_log_analytics_workspace.lattice.id
}
