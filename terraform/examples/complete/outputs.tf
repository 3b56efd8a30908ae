output "gateway_dns_name" {
  description = "Point the certificate's name at this (CNAME or alias)."
  value       = module.tollgate.gateway_dns_name
}

output "token_endpoint" {
  description = "Cognito token endpoint (client_credentials)."
  value       = module.tollgate.token_endpoint
}

output "client_ids" {
  description = "App client ids by name."
  value       = module.tollgate.client_ids
}

output "client_secrets" {
  description = "App client secrets by name."
  value       = module.tollgate.client_secrets
  sensitive   = true
}

output "admin_api_url" {
  description = "Admin API base URL."
  value       = module.tollgate.admin_api_url
}

output "invoke_scope" {
  description = "Scope for LLM calls."
  value       = module.tollgate.invoke_scope
}

output "admin_scope" {
  description = "Scope for the admin API."
  value       = module.tollgate.admin_scope
}

output "ecs_cluster_name" {
  description = "ECS cluster (for the smoke test and operations)."
  value       = module.tollgate.ecs_cluster_name
}

output "ecs_service_name" {
  description = "ECS service running Envoy + tollgate."
  value       = module.tollgate.ecs_service_name
}
