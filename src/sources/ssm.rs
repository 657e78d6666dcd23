//! SSM Parameter Store as a configuration source.
//!
//! Parameters are read with `GetParameter` and `WithDecryption=true`, so
//! SecureStrings arrive decrypted. The client uses aws-config's default chain
//! (region, credentials, and `AWS_ENDPOINT_URL_SSM` / `AWS_ENDPOINT_URL`, which
//! tests and LocalStack users rely on). Calls are bounded by short timeouts so
//! that a request waiting on a cold-start load never hangs.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use chrono::FixedOffset;

use super::cached::{Cached, LoadError, Loader};
use crate::error::{error_chain, GatewayError};
use crate::secret::ApiKey;
use crate::tokens::{format, TokenSet};

/// A failed SSM call, naming the parameter; never a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("SSM parameter {parameter}: {reason}")]
pub struct SsmError {
    /// The parameter.
    pub parameter: String,
    /// What the SDK said (its error chain, by `Display`).
    pub reason: String,
}

/// An SSM client.
#[derive(Clone, Debug)]
pub struct Ssm {
    client: aws_sdk_ssm::Client,
}

impl Ssm {
    /// A client from the environment (aws-config's default chain).
    pub async fn from_env() -> Self {
        let config = super::aws::config(Duration::from_secs(3), Duration::from_secs(6), 2).await;
        Self {
            client: aws_sdk_ssm::Client::new(&config),
        }
    }

    /// Reads a parameter's decrypted value. Errors name the parameter, never a value.
    pub async fn get(&self, name: &str) -> Result<String, LoadError> {
        let output = self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| LoadError::Unavailable {
                origin: origin(name),
                reason: error_chain(&e),
            })?;
        output
            .parameter
            .and_then(|p| p.value)
            .ok_or_else(|| LoadError::NoValue {
                origin: origin(name),
            })
    }

    /// Writes a SecureString (overwriting), encrypted with `kms_key_id` or the
    /// account's `aws/ssm` key. Returns the new version.
    pub async fn put_secure(
        &self,
        name: &str,
        value: &str,
        kms_key_id: Option<&str>,
    ) -> Result<i64, SsmError> {
        let output = self
            .client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::SecureString)
            .set_key_id(kms_key_id.map(str::to_owned))
            .overwrite(true)
            .send()
            .await
            .map_err(|e| SsmError {
                parameter: name.to_owned(),
                reason: error_chain(&e),
            })?;
        Ok(output.version)
    }

    /// A loader that reads parameter `name` and turns its text into a value
    /// (`parse` is given the name and the text).
    pub fn loader<T, F>(&self, name: &str, parse: F) -> Loader<T>
    where
        T: Send + 'static,
        F: Fn(&str, &str) -> Result<T, LoadError> + Send + Sync + 'static,
    {
        let ssm = self.clone();
        let name: Arc<str> = name.into();
        let parse = Arc::new(parse);
        Arc::new(move || {
            let (ssm, name, parse) = (ssm.clone(), name.clone(), parse.clone());
            Box::pin(async move {
                let text = ssm.get(&name).await?;
                parse(&name, &text)
            })
        })
    }

    /// A loader for a token list parameter.
    pub fn tokens_loader(&self, name: &str, offset: FixedOffset) -> Loader<TokenSet> {
        self.loader(name, move |name, text| {
            let list = format::parse(text, offset).map_err(|error| LoadError::InvalidTokens {
                origin: origin(name),
                error,
            })?;
            tracing::info!(source = %name, tokens = list.tokens.entries().len(), "token list loaded");
            crate::stats::token_list_loaded();
            Ok(list.tokens)
        })
    }

    /// A loader for the upstream key parameter.
    pub fn key_loader(&self, name: &str) -> Loader<ApiKey> {
        self.loader(name, |name, text| {
            let key = ApiKey::new(text).map_err(|_| LoadError::InvalidKey {
                origin: origin(name),
            })?;
            tracing::info!(source = %name, "upstream key loaded");
            Ok(key)
        })
    }
}

/// How errors name a parameter.
pub fn origin(name: &str) -> String {
    format!("SSM parameter {name}")
}

/// A token cache refreshed from `name` every `refresh`.
pub fn token_cache(
    ssm: &Ssm,
    name: &str,
    offset: FixedOffset,
    refresh: Duration,
) -> Cached<TokenSet> {
    Cached::refreshing(
        name,
        GatewayError::TokenStoreUnavailable,
        ssm.tokens_loader(name, offset),
        refresh,
    )
}

/// A key cache refreshed from `name` every `refresh`.
pub fn key_cache(ssm: &Ssm, name: &str, refresh: Duration) -> Cached<ApiKey> {
    Cached::refreshing(
        name,
        GatewayError::UpstreamKeyUnavailable,
        ssm.key_loader(name),
        refresh,
    )
}
