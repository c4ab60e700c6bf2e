module "lattice" {
  source      = "../../modules/gcp"
  project_id  = var.project_id
  region      = var.region
  name        = "lattice"
  network     = var.network
  domain_name = var.domain_name
  image       = var.image
  labels      = { environment = "production" }
}
