output "url" {
  description = "The URL clients and agents use."
  value       = "https://${var.domain_name}"
}

output "load_balancer_ip" {
  description = "Point domain_name here (an A record); the managed certificate is issued once it does."
  value       = google_compute_global_address.lattice.address
}

output "services" {
  description = "Cloud Run service per role."
  value       = { for r, s in google_cloud_run_v2_service.role : r => s.name }
}

output "migration_job" {
  description = "The migration job (gcloud run jobs execute it --wait before changing the services' image when run_migrations is off)."
  value       = google_cloud_run_v2_job.migrate.name
}

output "secret_ids" {
  description = "Secret Manager secret ids (not values): database-url, redis-url, master-key, jwt-secret and the two CA certificates."
  value       = { for k, s in google_secret_manager_secret.lattice : k => s.id }
}

output "objects_bucket" {
  description = "The Cloud Storage bucket holding static-site blobs."
  value       = google_storage_bucket.objects.name
}

output "database_instance" {
  description = "The Cloud SQL instance's connection name."
  value       = google_sql_database_instance.lattice.connection_name
}
