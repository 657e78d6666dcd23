//! What a token with `models` or `limits` may reach at all: only what the
//! gateway can place and meter.
//!
//! For such a token:
//!
//! - a path that does not normalise to something policy can place (an
//!   encoded `/`, an empty segment, anything not ASCII) is `400 invalid_path`:
//!   the upstream may route it where the rules did not look;
//! - a metered endpoint's body must be JSON, or a form where OpenAI takes
//!   one (uploads): anything else is `415`, as the gateway could neither
//!   read its model nor meter it;
//! - with limits, an endpoint that can spend without being metered
//!   ([`Metering::Unmetered`]: fine-tuning, batches, realtime sessions and
//!   their ephemeral keys, uploads…) and a Responses run in the background
//!   (`background: true`, read later) are `403 endpoint_not_metered`, unless
//!   the token's `endpoints` name that path itself, without `$`: allowed
//!   knowingly ([`crate::tokens::Rules::opens_unmetered`]).

use super::{Inspect, Policy, Verdict};
use crate::error::GatewayError;
use crate::headers;
use crate::openai::{self, Metering};
use crate::path;

/// The rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spending;

impl Policy for Spending {
    fn applies(&self, request: &Inspect<'_>) -> bool {
        request
            .admitted
            .rules
            .as_ref()
            .is_some_and(|r| r.models.is_some() || r.limits.is_some())
    }

    fn check<'a>(&'a self, request: &'a mut Inspect<'_>) -> Verdict<'a> {
        Box::pin(async move {
            let Some(rules) = request.admitted.rules.as_ref() else {
                return Ok(());
            };
            if !path::placeable(request.path) {
                return Err(GatewayError::InvalidPath(
                    "this gateway token's rules cannot place this path (an encoded character, an empty segment or a non-ASCII byte)",
                ));
            }
            let metering = openai::metering(request.method, request.path);
            if metering.is_metered() {
                let form = openai::takes_form(request.path);
                let readable = headers::is_json(request.headers)
                    || form && headers::is_media(request.headers, "multipart/form-data");
                if !readable {
                    return Err(GatewayError::UnsupportedMediaType(form));
                }
            }
            if rules.limits.is_none() || rules.opens_unmetered(request.method, request.path) {
                return Ok(());
            }
            match metering {
                Metering::Unmetered => Err(GatewayError::EndpointNotMetered(
                    "the gateway cannot meter what it spends",
                )),
                Metering::Tokens if openai::is_responses(request.path) => {
                    if request.view().await?.background {
                        return Err(GatewayError::EndpointNotMetered(
                            "a background response is read later, where the gateway cannot meter it",
                        ));
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }
}
