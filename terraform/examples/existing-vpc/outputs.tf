output "gateway_dns_name" {
  description = "Point the certificate's name at this."
  value       = module.tollgate.gateway_dns_name
}

output "token_endpoint" {
  description = "Cognito token endpoint."
  value       = module.tollgate.token_endpoint
}

output "admin_api_url" {
  description = "Admin API base URL."
  value       = module.tollgate.admin_api_url
}

output "webhook_url" {
  description = "agentgateway's promptGuard webhook target."
  value       = module.tollgate.webhook_url
}

output "webhook_secret" {
  description = "Secret agentgateway sends in x-tollgate-webhook-secret."
  value       = module.tollgate.webhook_secret
  sensitive   = true
}
