output "url" {
  description = "The URL clients and agents use."
  value       = "https://${var.domain_name}"
}

output "load_balancer_dns_name" {
  description = "Point domain_name at this (a CNAME, or an alias record)."
  value       = aws_lb.lattice.dns_name
}

output "load_balancer_zone_id" {
  description = "The load balancer's hosted zone, for a Route 53 alias record."
  value       = aws_lb.lattice.zone_id
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.lattice.name
}

output "migration_task_definition" {
  description = "The migration task (aws ecs run-task it before changing the services' image when run_migrations is off)."
  value       = aws_ecs_task_definition.migrate.arn
}

output "secret_arns" {
  description = "ARNs (not values) of the Secrets Manager secrets: database-url, redis-url, master-key, jwt-secret."
  value       = { for k, s in aws_secretsmanager_secret.lattice : k => s.arn }
}

output "objects_bucket" {
  description = "The S3 bucket holding static-site blobs."
  value       = aws_s3_bucket.objects.bucket
}

output "log_groups" {
  description = "CloudWatch log group per role."
  value       = { for k, g in aws_cloudwatch_log_group.lattice : k => g.name }
}
