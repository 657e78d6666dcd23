//! The AWS SDK's configuration, from the default chain (environment,
//! profile, instance role; `AWS_ENDPOINT_URL_<SERVICE>` for emulators), with
//! the timeouts and retries a request path can afford.

use std::time::Duration;

/// The SDK configuration: connect within 2 s, each attempt within
/// `attempt`, all of them within `total`, at most `attempts` tries (the
/// standard retry mode, which backs off on throttling).
pub async fn config(attempt: Duration, total: Duration, attempts: u32) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(attempt)
        .operation_timeout(total)
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(attempts))
        .load()
        .await
}
