module "lattice" {
  source                       = "../../modules/azure"
  name                         = "lattice"
  resource_group_name          = var.resource_group_name
  location                     = var.location
  admin_ip_ranges              = var.admin_ip_ranges
  domain_name                  = var.domain_name
  tls_certificate_secret_id    = var.tls_certificate_secret_id
  tls_certificate_key_vault_id = var.tls_certificate_key_vault_id
  image                        = var.image
  acr_id                       = var.acr_id
  tags                         = { environment = "production" }
}
