#!/usr/bin/env bash
# One-command smoke test of a real deployment: what the offline tests cannot check (Cognito
# tokens, the ALB's jwt-validation, the task's image, secrets, IAM, DynamoDB, the admin API's
# authorizer, metrics in CloudWatch). Run it from the directory you applied in:
#
#   GATEWAY_URL=https://llm.example.com SMOKE_CLIENT=smoke ../../smoke-test.sh
#
# SMOKE_CLIENT is an app client in cognito_clients (invoke scope) that belongs to no team yet:
# the test registers team "smoke" for it with RPM 2, and deletes it at the end. MODEL (default
# gpt-4o-mini) must be served by a provider whose key the deployment has. Costs: a few tokens.
set -euo pipefail
: "${GATEWAY_URL:?the https URL clients call}" "${SMOKE_CLIENT:?an invoke-scope app client with no team}"
MODEL="${MODEL:-gpt-4o-mini}" ADMIN_CLIENT="${ADMIN_CLIENT:-tollgate-admin}"

out() { terraform output -raw "$1"; }
pick() { terraform output -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"; }
token() {  # client scope
  curl -sf -u "$(pick client_ids "$1"):$(pick client_secrets "$1")" -d grant_type=client_credentials \
       -d "scope=$2" "$(out token_endpoint)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
fails=0
expect() {  # what wanted got; `wanted` may list alternatives: "401|403"
  if [[ "|$2|" == *"|$3|"* ]]; then echo "ok    $1 ($3)"; else echo "FAIL  $1: wanted $2, got $3"; fails=$((fails + 1)); fi
}
call() {  # token -> HTTP status of one chat completion
  curl -s -o /dev/null -w '%{http_code}' "$GATEWAY_URL/v1/chat/completions" ${1:+-H "authorization: Bearer $1"} \
       -H 'content-type: application/json' -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Say ok.\"}]}"
}

echo "waiting for the ECS service to be stable"
aws ecs wait services-stable --cluster "$(out ecs_cluster_name)" --services "$(out ecs_service_name)"
ADMIN_API=$(out admin_api_url)
ADMIN=$(token "$ADMIN_CLIENT" "$(out admin_scope)")
TEAM=$(token "$SMOKE_CLIENT" "$(out invoke_scope)")
expect "tokens from Cognito" 1 "$([[ -n "$ADMIN" && -n "$TEAM" ]] && echo 1 || echo 0)"

# AWS documents that the ALB rejects a request failing jwt-validation, not with which status.
expect "no token: refused by the ALB" "401|403" "$(call "")"
expect "admin-only token on /v1: refused by the ALB (scope claim)" "401|403" "$(call "$ADMIN")"
expect "admin API without a token: refused by API Gateway" 401 \
  "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN_API/admin/teams")"

status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$ADMIN_API/admin/teams" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d "{\"id\":\"smoke\",\"tier\":\"sandbox\",\"rpm\":2,\"client_ids\":[\"$(pick client_ids "$SMOKE_CLIENT")\"]}")
expect "team created through the admin API (JWT authorizer, DynamoDB PutItem)" 201 "$status"
trap 'curl -s -o /dev/null -X DELETE "$ADMIN_API/admin/teams/smoke" -H "authorization: Bearer $ADMIN"' EXIT
sleep 6  # other tasks' team caches (policy.team_cache_ttl_seconds)

expect "a model call through ALB, WAF, Envoy, tollgate (image, secrets, IAM, guardrail)" 200 "$(call "$TEAM")"
expect "second call within the minute" 200 "$(call "$TEAM")"
expect "third call: RPM 2 enforced fleet-wide (DynamoDB UpdateItem)" 429 "$(call "$TEAM")"

used=0
for _ in $(seq 1 20); do
  used=$(curl -sf "$ADMIN_API/admin/teams/smoke/usage" -H "authorization: Bearer $ADMIN" |
         python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_today"]["used"])')
  [[ "$used" -gt 0 ]] && break
  sleep 3
done
expect "tokens charged from the provider's usage (TransactWriteItems, BatchGetItem)" 1 "$([[ "$used" -gt 0 ]] && echo 1 || echo 0)"

metric=$(aws cloudwatch list-metrics --namespace "$(out ecs_cluster_name)" --metric-name tollgate_store_up \
  --query 'length(Metrics)' --output text)
expect "tollgate's metrics in CloudWatch (ADOT collector, EMF)" 1 "$([[ "$metric" -gt 0 ]] && echo 1 || echo 0)"

echo "$fails failed"
[[ "$fails" -eq 0 ]]
