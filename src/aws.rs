//! Shared AWS SDK configuration: the standard credential and region chain, a deadline per call,
//! and the SDK's standard retry mode (jittered exponential backoff on throttling, 3 attempts,
//! all inside the deadline).

use std::time::Duration;

use aws_config::SdkConfig;

pub async fn sdk_config(
    region: Option<&str>,
    endpoint_url: Option<&str>,
    timeout: Duration,
) -> SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(timeout)
                .connect_timeout(timeout)
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}
