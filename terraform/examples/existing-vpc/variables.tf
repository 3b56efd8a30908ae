variable "region" {
  description = "AWS region of the VPC."
  type        = string
}

variable "vpc_id" {
  description = "The existing VPC."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets (two or more AZs) for the internet-facing ALB."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets with egress (NAT or endpoints) for the tasks and the internal webhook ALB."
  type        = list(string)
}

variable "agentgateway_cidr_blocks" {
  description = "Where agentgateway runs: the only networks allowed to call the webhook."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the gateway's name."
  type        = string
}

variable "container_image" {
  description = "tollgate image in ECR."
  type        = string
}

variable "cognito_domain_prefix" {
  description = "Globally unique prefix of the Cognito domain."
  type        = string
}

variable "provider_secret_arns" {
  description = "Secrets Manager ARNs of OPENAI_API_KEY and/or ANTHROPIC_API_KEY."
  type        = map(string)
}

variable "lambda_artifacts_dir" {
  description = "Directory with <function>/bootstrap.zip from dev/lambda-build."
  type        = string
}

variable "agentgateway_log_group_name" {
  description = "agentgateway's existing JSON access-log group."
  type        = string
}

variable "alarm_topic_arn" {
  description = "SNS topic the alarms notify."
  type        = string
}
