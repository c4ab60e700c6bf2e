data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  roles = toset(["gateway", "identity", "storage", "tasks", "tunnel", "policy"])
  ports = { gateway = 8088, identity = 8091, storage = 8092, tasks = 8093, tunnel = 8094, policy = 8095 }
  # Roles that seal secrets with the master key.
  sealing   = toset(["identity", "storage", "tunnel"])
  namespace = "${var.name}.internal"
  url       = { for r, p in local.ports : r => "http://${r}.${local.namespace}:${p}" }
  tags      = merge({ "app.kubernetes.io/name" = "lattice", "lattice/deployment" = var.name }, var.tags)
}

# ------------------------------------------------------------------ encryption key

resource "aws_kms_key" "lattice" {
  description             = "${var.name}: secrets, logs, database, Redis and objects of Lattice"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy's resource is always the key itself ("*"); the account statement is AWS's default key policy, which hands access control to IAM.
  #checkov:skip=CKV_AWS_356:A key policy's resource is always the key itself ("*").
  #checkov:skip=CKV_AWS_109:The account statement is AWS's default key policy; without it the key becomes unmanageable.
  statement {
    sid       = "Account"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:aws:logs:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}:log-group:/lattice/${var.name}*"]
    }
  }
}

# ------------------------------------------------------------------ secrets
# Generated as ephemeral values and written with write-only arguments: they reach
# Secrets Manager and the database, never the Terraform state or an output.

ephemeral "random_password" "db" {
  length  = 40
  special = false
}

ephemeral "random_bytes" "master_key" {
  length = 32
}

ephemeral "random_password" "jwt" {
  length  = 64
  special = false
}

resource "aws_secretsmanager_secret" "lattice" {
  #checkov:skip=CKV2_AWS_57:Not rotated by a schedule: a new master key would make every sealed value unreadable, and the JWT secret and database URL change only with a rolling restart of every role, which a rotation Lambda cannot do.
  for_each                = toset(["database-url", "redis-url", "master-key", "jwt-secret"])
  name                    = "${var.name}/${each.key}"
  description             = "Lattice ${each.key}"
  kms_key_id              = aws_kms_key.lattice.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "database_url" {
  secret_id                = aws_secretsmanager_secret.lattice["database-url"].id
  secret_string_wo         = "postgres://lattice:${ephemeral.random_password.db.result}@${aws_db_instance.lattice.address}:5432/lattice?sslmode=verify-full"
  secret_string_wo_version = 1
}

resource "aws_secretsmanager_secret_version" "redis_url" {
  secret_id                = aws_secretsmanager_secret.lattice["redis-url"].id
  secret_string_wo         = "rediss://${aws_elasticache_replication_group.lattice.primary_endpoint_address}:6379/"
  secret_string_wo_version = 1
}

resource "aws_secretsmanager_secret_version" "master_key" {
  secret_id                = aws_secretsmanager_secret.lattice["master-key"].id
  secret_string_wo         = ephemeral.random_bytes.master_key.hex
  secret_string_wo_version = 1
  # Rotating the master key makes every sealed value unreadable: never replace it.
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_secretsmanager_secret_version" "jwt" {
  secret_id                = aws_secretsmanager_secret.lattice["jwt-secret"].id
  secret_string_wo         = ephemeral.random_password.jwt.result
  secret_string_wo_version = 1
}

# ------------------------------------------------------------------ network

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Lattice load balancer: HTTPS from anywhere"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from clients and agents"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers with a redirect to HTTPS (the listener below); nothing is served on it.
  security_group_id = aws_security_group.alb.id
  description       = "HTTP, redirected to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "alb_to_gateway" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the gateway tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.ports.gateway
  to_port                      = local.ports.gateway
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "Lattice tasks: the gateway from the load balancer, internal gRPC among themselves"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "gateway_from_alb" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "The gateway, from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.ports.gateway
  to_port                      = local.ports.gateway
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_ingress_rule" "internal_grpc" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "Internal gRPC between the roles"
  ip_protocol                  = "tcp"
  from_port                    = 8091
  to_port                      = 8095
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS out: ECR, Secrets Manager, CloudWatch Logs, S3, SSO providers"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "tasks_internal" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "Internal gRPC to the other roles"
  ip_protocol                  = "tcp"
  from_port                    = 8091
  to_port                      = 8095
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_vpc_security_group_egress_rule" "tasks_postgres" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "PostgreSQL"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.data.id
}

resource "aws_vpc_security_group_egress_rule" "tasks_redis" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "Redis"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.data.id
}

resource "aws_security_group" "data" {
  name        = "${var.name}-data"
  description = "Lattice PostgreSQL and Redis: only from the Lattice tasks"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "postgres" {
  security_group_id            = aws_security_group.data.id
  description                  = "PostgreSQL from the Lattice tasks"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_vpc_security_group_ingress_rule" "redis" {
  security_group_id            = aws_security_group.data.id
  description                  = "Redis from the Lattice tasks"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.tasks.id
}

# ------------------------------------------------------------------ PostgreSQL (RDS)

resource "aws_db_subnet_group" "lattice" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_db_parameter_group" "lattice" {
  name   = "${var.name}-pg16"
  family = "postgres16"
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  tags = local.tags
}

resource "aws_db_instance" "lattice" {
  identifier                            = var.name
  engine                                = "postgres"
  engine_version                        = "16"
  instance_class                        = var.db_instance_class
  allocated_storage                     = var.db_allocated_storage
  max_allocated_storage                 = var.db_allocated_storage * 4
  storage_type                          = "gp3"
  storage_encrypted                     = true
  kms_key_id                            = aws_kms_key.lattice.arn
  db_name                               = "lattice"
  username                              = "lattice"
  password_wo                           = ephemeral.random_password.db.result
  password_wo_version                   = 1
  db_subnet_group_name                  = aws_db_subnet_group.lattice.name
  vpc_security_group_ids                = [aws_security_group.data.id]
  parameter_group_name                  = aws_db_parameter_group.lattice.name
  publicly_accessible                   = false
  multi_az                              = var.db_multi_az
  backup_retention_period               = 14
  copy_tags_to_snapshot                 = true
  deletion_protection                   = var.deletion_protection
  skip_final_snapshot                   = false
  final_snapshot_identifier             = "${var.name}-final"
  auto_minor_version_upgrade            = true
  iam_database_authentication_enabled   = true
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.lattice.arn
  performance_insights_retention_period = 7
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  tags                                  = local.tags
}

resource "aws_iam_role" "rds_monitoring" {
  name = "${var.name}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

# ------------------------------------------------------------------ Redis (ElastiCache)

resource "aws_elasticache_subnet_group" "lattice" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_elasticache_replication_group" "lattice" {
  #checkov:skip=CKV2_AWS_50:Multi-AZ automatic failover is on whenever redis_replicas > 0, the default (1).
  #checkov:skip=CKV_AWS_31:No AUTH token: it would sit in the Terraform state (ElastiCache has no write-only argument). Redis holds only caches and events, is reachable only from the Lattice tasks' security group, and speaks TLS.
  replication_group_id       = var.name
  description                = "Lattice cache and event bus"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  num_cache_clusters         = 1 + var.redis_replicas
  automatic_failover_enabled = var.redis_replicas > 0
  multi_az_enabled           = var.redis_replicas > 0
  port                       = 6379
  subnet_group_name          = aws_elasticache_subnet_group.lattice.name
  security_group_ids         = [aws_security_group.data.id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.lattice.arn
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auto_minor_version_upgrade = true
  snapshot_retention_limit   = 1
  tags                       = local.tags
}

# ------------------------------------------------------------------ objects (S3)

resource "aws_s3_bucket" "objects" {
  #checkov:skip=CKV_AWS_144:Static-site blobs are content-addressed and restorable from deployments; cross-region replication is a choice for the operator.
  #checkov:skip=CKV2_AWS_62:No consumer listens for object events.
  #checkov:skip=CKV_AWS_18:Access logging needs a log bucket that the operator owns; enable it on that bucket's terms.
  bucket_prefix = "${var.name}-objects-"
  tags          = local.tags
}

resource "aws_s3_bucket_versioning" "objects" {
  bucket = aws_s3_bucket.objects.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "objects" {
  bucket = aws_s3_bucket.objects.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.lattice.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "objects" {
  bucket                  = aws_s3_bucket.objects.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "objects" {
  bucket = aws_s3_bucket.objects.id
  rule {
    id     = "old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# ------------------------------------------------------------------ logs

resource "aws_cloudwatch_log_group" "lattice" {
  for_each          = setunion(local.roles, ["migrate"])
  name              = "/lattice/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.lattice.arn
  tags              = local.tags
}

# ------------------------------------------------------------------ IAM

data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_secrets" {
  name = "secrets"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [for s in aws_secretsmanager_secret.lattice : s.arn]
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = [aws_kms_key.lattice.arn]
      },
    ]
  })
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "task_objects" {
  name = "objects"
  role = aws_iam_role.task.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
        Resource = [aws_s3_bucket.objects.arn, "${aws_s3_bucket.objects.arn}/*"]
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = [aws_kms_key.lattice.arn]
      },
    ]
  })
}

# ------------------------------------------------------------------ ECS

resource "aws_ecs_cluster" "lattice" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enhanced"
  }
  tags = local.tags
}

resource "aws_service_discovery_private_dns_namespace" "lattice" {
  name        = local.namespace
  description = "Lattice roles find each other here"
  vpc         = var.vpc_id
  tags        = local.tags
}

resource "aws_service_discovery_service" "role" {
  for_each = setsubtract(local.roles, ["gateway"])
  name     = each.key
  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.lattice.id
    routing_policy = "MULTIVALUE"
    dns_records {
      ttl  = 10
      type = "A"
    }
  }
  health_check_custom_config {
    failure_threshold = 1
  }
  tags = local.tags
}

locals {
  secrets = {
    DATABASE_URL = aws_secretsmanager_secret.lattice["database-url"].arn
    REDIS_URL    = aws_secretsmanager_secret.lattice["redis-url"].arn
    JWT_SECRET   = aws_secretsmanager_secret.lattice["jwt-secret"].arn
  }
  common_env = {
    LATTICE_LOG_FORMAT            = "json"
    LATTICE_DATA_DIR              = "/var/lib/lattice"
    LATTICE_OPS_LISTEN            = "0.0.0.0:9464"
    LATTICE_GATEWAY__IDENTITY_URL = local.url.identity
    LATTICE_GATEWAY__STORAGE_URL  = local.url.storage
    LATTICE_TASKS__URL            = local.url.tasks
    LATTICE_TUNNEL__URL           = local.url.tunnel
    LATTICE_POLICY__URL           = local.url.policy
    LATTICE_STORAGE__OBJECTS_URL  = "s3://${aws_s3_bucket.objects.bucket}/objects"
  }
  role_env = {
    gateway = {
      LATTICE_GATEWAY__LISTEN              = "0.0.0.0:8088"
      LATTICE_GATEWAY__TLS                 = "off"
      LATTICE_GATEWAY__PUBLIC_URL          = "https://${var.domain_name}"
      LATTICE_GATEWAY__TRUST_FORWARDED_FOR = "true"
    }
    identity = { LATTICE_IDENTITY__LISTEN = "0.0.0.0:8091" }
    storage  = { LATTICE_STORAGE__LISTEN = "0.0.0.0:8092" }
    tasks    = { LATTICE_TASKS__LISTEN = "0.0.0.0:8093" }
    # Listening on 0.0.0.0 without advertise_url, each replica advertises the
    # task's private IP to the others (the server finds it at start).
    tunnel = { LATTICE_TUNNEL__LISTEN = "0.0.0.0:8094" }
    policy = { LATTICE_POLICY__LISTEN = "0.0.0.0:8095" }
  }
  container = {
    for r in local.roles : r => {
      name                   = r
      image                  = var.image
      essential              = true
      command                = ["run"]
      user                   = "65532:65532"
      readonlyRootFilesystem = true
      portMappings = [
        { containerPort = local.ports[r], protocol = "tcp", name = r },
      ]
      environment = [
        for k, v in merge(local.common_env, local.role_env[r], { LATTICE_SERVICES = r }) : { name = k, value = v }
      ]
      secrets = concat(
        [for k, arn in local.secrets : { name = k, valueFrom = arn }],
        contains(local.sealing, r) ? [{ name = "LATTICE_MASTER_KEY", valueFrom = aws_secretsmanager_secret.lattice["master-key"].arn }] : [],
      )
      mountPoints = [
        { sourceVolume = "data", containerPath = "/var/lib/lattice", readOnly = false },
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ]
      healthCheck = {
        command     = ["CMD", "/usr/local/bin/lattice-server", "healthcheck"]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 20
      }
      linuxParameters = { capabilities = { drop = ["ALL"] }, initProcessEnabled = true }
      stopTimeout     = 30
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.lattice[r].name
          awslogs-region        = data.aws_region.current.region
          awslogs-stream-prefix = r
        }
      }
    }
  }
}

resource "aws_ecs_task_definition" "role" {
  for_each                 = local.roles
  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.roles[each.key].cpu
  memory                   = var.roles[each.key].memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode([local.container[each.key]])
  volume {
    name = "data"
  }
  volume {
    name = "tmp"
  }
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  tags = local.tags
}

# The release step: `lattice-server migrate`, as a one-off task.
resource "aws_ecs_task_definition" "migrate" {
  family                   = "${var.name}-migrate"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions = jsonencode([{
    name                   = "migrate"
    image                  = var.image
    essential              = true
    command                = ["migrate"]
    user                   = "65532:65532"
    readonlyRootFilesystem = true
    environment            = [{ name = "LATTICE_DATA_DIR", value = "/tmp/lattice" }]
    secrets                = [{ name = "DATABASE_URL", valueFrom = aws_secretsmanager_secret.lattice["database-url"].arn }]
    mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    linuxParameters        = { capabilities = { drop = ["ALL"] } }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.lattice["migrate"].name
        awslogs-region        = data.aws_region.current.region
        awslogs-stream-prefix = "migrate"
      }
    }
  }])
  volume {
    name = "tmp"
  }
  tags = local.tags
}

# Runs the migration task, and waits for it, whenever the image changes; every
# service depends on it, so no new task starts on an unmigrated database.
resource "terraform_data" "migrate" {
  count            = var.run_migrations ? 1 : 0
  triggers_replace = [var.image, aws_ecs_task_definition.migrate.revision]
  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    command     = <<-EOT
      set -euo pipefail
      arn=$(aws ecs run-task --region "$REGION" --cluster "$CLUSTER" --launch-type FARGATE \
        --task-definition "$TASKDEF" \
        --network-configuration "awsvpcConfiguration={subnets=[$SUBNETS],securityGroups=[$SG],assignPublicIp=DISABLED}" \
        --query 'tasks[0].taskArn' --output text)
      aws ecs wait tasks-stopped --region "$REGION" --cluster "$CLUSTER" --tasks "$arn"
      code=$(aws ecs describe-tasks --region "$REGION" --cluster "$CLUSTER" --tasks "$arn" \
        --query 'tasks[0].containers[0].exitCode' --output text)
      [ "$code" = "0" ] || { echo "migration task $arn exited with $code; see its logs in CloudWatch" >&2; exit 1; }
    EOT
    environment = {
      REGION  = data.aws_region.current.region
      CLUSTER = aws_ecs_cluster.lattice.name
      TASKDEF = aws_ecs_task_definition.migrate.arn
      SUBNETS = join(",", var.private_subnet_ids)
      SG      = aws_security_group.tasks.id
    }
  }
  depends_on = [aws_db_instance.lattice, aws_secretsmanager_secret_version.database_url]
}

resource "aws_ecs_service" "role" {
  for_each                           = local.roles
  name                               = each.key
  cluster                            = aws_ecs_cluster.lattice.id
  task_definition                    = aws_ecs_task_definition.role[each.key].arn
  desired_count                      = var.roles[each.key].desired_count
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  propagate_tags                     = "SERVICE"
  enable_execute_command             = false
  health_check_grace_period_seconds  = each.key == "gateway" ? 30 : null
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
  dynamic "load_balancer" {
    for_each = each.key == "gateway" ? [1] : []
    content {
      target_group_arn = aws_lb_target_group.gateway.arn
      container_name   = "gateway"
      container_port   = local.ports.gateway
    }
  }
  dynamic "service_registries" {
    for_each = each.key == "gateway" ? [] : [1]
    content {
      registry_arn = aws_service_discovery_service.role[each.key].arn
    }
  }
  lifecycle {
    ignore_changes = [desired_count]
  }
  depends_on = [terraform_data.migrate, aws_lb_listener.https]
  tags       = local.tags
}

resource "aws_appautoscaling_target" "role" {
  for_each           = local.roles
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.lattice.name}/${aws_ecs_service.role[each.key].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.roles[each.key].min_count
  max_capacity       = var.roles[each.key].max_count
  tags               = local.tags
}

resource "aws_appautoscaling_policy" "cpu" {
  for_each           = local.roles
  name               = "${var.name}-${each.key}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = "ecs"
  resource_id        = aws_appautoscaling_target.role[each.key].resource_id
  scalable_dimension = aws_appautoscaling_target.role[each.key].scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = 70
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

# ------------------------------------------------------------------ load balancer
# HTTPS with HTTP/2 to clients; HTTP/2 (h2c) to the gateway, so the agents' gRPC
# streams pass through; an idle timeout far above the agents' 15 s heartbeat.

resource "aws_lb" "lattice" {
  #checkov:skip=CKV2_AWS_28:A WAF in front is the operator's choice (its rules must let gRPC streams through).
  #checkov:skip=CKV_AWS_91:Access logs need a log bucket that the operator owns; set access_logs on that bucket's terms.
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  idle_timeout               = var.alb_idle_timeout_seconds
  enable_http2               = true
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  tags                       = local.tags
}

resource "aws_lb_target_group" "gateway" {
  name                 = "${var.name}-gateway"
  port                 = local.ports.gateway
  protocol             = "HTTP"
  protocol_version     = "HTTP2"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  health_check {
    path                = "/ready"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
  tags = local.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.lattice.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }
  tags = local.tags
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.lattice.arn
  port              = 80
  protocol          = "HTTP"
  default_action {
    type = "redirect"
    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
  tags = local.tags
}
