module "lattice" {
  source             = "../../modules/aws"
  name               = "lattice"
  vpc_id             = var.vpc_id
  private_subnet_ids = var.private_subnet_ids
  public_subnet_ids  = var.public_subnet_ids
  domain_name        = var.domain_name
  certificate_arn    = var.certificate_arn
  image              = var.image
  tags               = { environment = "production" }
}
