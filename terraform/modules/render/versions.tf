terraform {
  # No providers: everything the containers and functions read is rendered here, so the tests
  # can apply this module offline and hand its outputs to Envoy, tollgate and botocore.
  required_version = ">= 1.9"
}
