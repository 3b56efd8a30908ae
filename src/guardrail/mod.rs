//! Content guardrails (Amazon Bedrock ApplyGuardrail and a local engine). Work in progress: the
//! local engine's types land first; the request/response wiring follows.
