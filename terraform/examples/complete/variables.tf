variable "region" {
  description = "AWS region to deploy in."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name of the deployment."
  type        = string
  default     = "tollgate"
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC this example creates."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrsubnet(var.vpc_cidr, 8, 3))
    error_message = "vpc_cidr must be a CIDR block with room for four /24 subnets (a /16 to /20)."
  }
}

variable "certificate_arn" {
  description = "ACM certificate for the name clients will call (e.g. llm.example.com), in this region."
  type        = string
}

variable "container_image" {
  description = "tollgate image pushed to ECR (see the README: build and push)."
  type        = string
}

variable "cognito_domain_prefix" {
  description = "Globally unique prefix of the Cognito domain serving the token endpoint."
  type        = string
}

variable "provider_secret_arns" {
  description = "Secrets Manager ARNs of the provider keys: OPENAI_API_KEY and/or ANTHROPIC_API_KEY."
  type        = map(string)
}

variable "lambda_artifacts_dir" {
  description = "Directory with <function>/bootstrap.zip from dev/lambda-build ($CARGO_TARGET_DIR/lambda)."
  type        = string
}

variable "cognito_clients" {
  description = "App clients: one admin client, and one per calling team."
  type = map(object({
    scopes                        = optional(list(string), ["invoke"])
    access_token_validity_minutes = optional(number, 60)
  }))
  default = {
    tollgate-admin = { scopes = ["admin"] }
    team-search    = { scopes = ["invoke"] }
  }
}
