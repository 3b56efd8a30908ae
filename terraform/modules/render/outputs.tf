output "container_definitions" {
  description = "The ECS task's container definitions (tollgate, envoy, adot), as the ECS API takes them."
  value       = local.container_definitions
  sensitive   = false
}

output "container_definitions_json" {
  description = "container_definitions, JSON-encoded for aws_ecs_task_definition."
  value       = jsonencode(local.container_definitions)
}

output "tollgate_environment" {
  description = "The tollgate container's environment (TOLLGATE_<SECTION>__<KEY>)."
  value       = local.tollgate_environment
}

output "envoy_yaml" {
  description = "Envoy's bootstrap configuration for the task (passed with --config-yaml)."
  value       = local.envoy_yaml
}

output "adot_yaml" {
  description = "The ADOT collector's configuration: tollgate's /metrics to CloudWatch EMF."
  value       = local.adot_yaml
}

output "lambda_environments" {
  description = "Environment of each Lambda function (budget-enforcement, admin-api, usage-recorder)."
  value       = local.lambda_environments
  sensitive   = true
}

output "listener_port" {
  description = "Envoy's listener port: the target group's port and the task's only exposed port."
  value       = local.listener_port
}

output "health_check_path" {
  description = "Path the ALB health check requests from Envoy; answered by tollgate's /readyz."
  value       = local.health_check_path
}

output "stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL."
  value       = local.stop_timeout
}

output "issuer" {
  description = "Issuer of the user pool's tokens."
  value       = local.issuer
}

output "jwks_url" {
  description = "JWKS URL of the user pool."
  value       = local.jwks_url
}

output "invoke_scope" {
  description = "Scope LLM calls need (fixed in tollgate)."
  value       = local.invoke_scope
}

output "admin_scope" {
  description = "Scope the admin API needs (fixed in tollgate)."
  value       = local.admin_scope
}

output "spool_dir" {
  description = "Directory of tollgate's spool (a task volume)."
  value       = local.spool_dir
}

output "usage_log_filter_pattern" {
  description = "CloudWatch Logs filter pattern that selects agentgateway's LLM access-log records."
  value       = local.usage_log_filter_pattern
}
