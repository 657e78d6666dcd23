//! [`Registry`] on the DynamoDB store, in the same table as usage:
//!
//! - a managed token is `pk = mt`, `sk = NAME`, with `entry`, `disabled`,
//!   `revoked`, `created`, `updated` (Unix seconds) and `version`; the list
//!   is one query (paged), a creation a put on the condition that the name
//!   is new, a change an update on the condition of the version it changes;
//! - a session is `pk = s#KEY`, `sk = -`, with `admin` and `expires`, and a
//!   `ttl` a day after it ends (DynamoDB deletes it; the gateway refuses it
//!   from `expires` on).

use std::collections::HashMap;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::{Managed, Registry, Session, SessionKey, Updated};
use crate::record::BoxFuture;
use crate::spend::dynamodb::{n, s, Dynamo, Item, PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE};
use crate::spend::store::StoreError;

/// The partition of managed tokens.
const TOKENS: &str = "mt";

fn text(item: &Item, key: &str) -> String {
    item.get(key)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

fn int(item: &Item, key: &str) -> i64 {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn flag(item: &Item, key: &str) -> bool {
    item.get(key)
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false)
}

fn time(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

fn version(v: u64) -> AttributeValue {
    n(i64::try_from(v).unwrap_or(i64::MAX))
}

fn managed(item: &Item) -> Managed {
    Managed {
        name: text(item, SORT_KEY),
        entry: text(item, "entry"),
        disabled: flag(item, "disabled"),
        revoked: flag(item, "revoked"),
        created_at: time(int(item, "created")),
        updated_at: time(int(item, "updated")),
        version: u64::try_from(int(item, "version")).unwrap_or(0),
    }
}

fn session_key(key: &str) -> Item {
    HashMap::from([
        (PARTITION_KEY.to_owned(), s(format!("s#{key}"))),
        (SORT_KEY.to_owned(), s("-")),
    ])
}

impl Registry for Dynamo {
    fn tokens(&self) -> BoxFuture<Result<Vec<Managed>, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let mut found = Vec::new();
            let mut start = None;
            loop {
                let page = this
                    .client
                    .query()
                    .table_name(&this.table)
                    .key_condition_expression("#pk = :pk")
                    .expression_attribute_names("#pk", PARTITION_KEY)
                    .expression_attribute_values(":pk", s(TOKENS))
                    .consistent_read(true)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| this.sdk_fail(e))?;
                found.extend(page.items().iter().map(managed));
                start = page.last_evaluated_key().cloned();
                if start.is_none() {
                    return Ok(found);
                }
            }
        })
    }

    fn create_token(&self, t: Managed) -> BoxFuture<Result<bool, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let put = this
                .client
                .put_item()
                .table_name(&this.table)
                .item(PARTITION_KEY, s(TOKENS))
                .item(SORT_KEY, s(&t.name))
                .item("entry", s(&t.entry))
                .item("disabled", AttributeValue::Bool(t.disabled))
                .item("revoked", AttributeValue::Bool(t.revoked))
                .item("created", n(t.created_at.timestamp()))
                .item("updated", n(t.updated_at.timestamp()))
                .item("version", version(t.version))
                .condition_expression("attribute_not_exists(#sk)")
                .expression_attribute_names("#sk", SORT_KEY)
                .send()
                .await;
            match put {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
                Err(e) => Err(this.sdk_fail(e)),
            }
        })
    }

    fn update_token(&self, t: Managed) -> BoxFuture<Result<Updated, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let updated = this
                .client
                .update_item()
                .table_name(&this.table)
                .key(PARTITION_KEY, s(TOKENS))
                .key(SORT_KEY, s(&t.name))
                .update_expression(
                    "SET entry = :entry, disabled = :disabled, revoked = :revoked, \
                     updated = :updated, version = :version",
                )
                .condition_expression(
                    "attribute_exists(#sk) AND version = :before AND revoked = :no",
                )
                .expression_attribute_names("#sk", SORT_KEY)
                .expression_attribute_values(":entry", s(&t.entry))
                .expression_attribute_values(":disabled", AttributeValue::Bool(t.disabled))
                .expression_attribute_values(":revoked", AttributeValue::Bool(t.revoked))
                .expression_attribute_values(":updated", n(t.updated_at.timestamp()))
                .expression_attribute_values(":version", version(t.version))
                .expression_attribute_values(":before", version(t.version.saturating_sub(1)))
                .expression_attribute_values(":no", AttributeValue::Bool(false))
                .send()
                .await;
            match updated {
                Ok(_) => Ok(Updated::Done),
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                    let item = this
                        .client
                        .get_item()
                        .table_name(&this.table)
                        .key(PARTITION_KEY, s(TOKENS))
                        .key(SORT_KEY, s(&t.name))
                        .consistent_read(true)
                        .send()
                        .await
                        .map_err(|e| this.sdk_fail(e))?;
                    Ok(if item.item().is_some() {
                        Updated::Stale
                    } else {
                        Updated::Missing
                    })
                }
                Err(e) => Err(this.sdk_fail(e)),
            }
        })
    }

    fn create_session(
        &self,
        key: SessionKey,
        session: Session,
        _now: DateTime<Utc>,
    ) -> BoxFuture<Result<(), StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let expires = session.expires.timestamp();
            this.client
                .put_item()
                .table_name(&this.table)
                .set_item(Some(session_key(&key)))
                .item("admin", s(&session.admin))
                .item("expires", n(expires))
                .item(TTL_ATTRIBUTE, n(expires.saturating_add(86_400)))
                .send()
                .await
                .map_err(|e| this.sdk_fail(e))?;
            Ok(())
        })
    }

    fn session(&self, key: SessionKey) -> BoxFuture<Result<Option<Session>, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let found = this
                .client
                .get_item()
                .table_name(&this.table)
                .set_key(Some(session_key(&key)))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| this.sdk_fail(e))?;
            Ok(found.item().map(|item| Session {
                admin: text(item, "admin"),
                expires: time(int(item, "expires")),
            }))
        })
    }

    fn end_session(&self, key: SessionKey) -> BoxFuture<Result<(), StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            this.client
                .delete_item()
                .table_name(&this.table)
                .set_key(Some(session_key(&key)))
                .send()
                .await
                .map_err(|e| this.sdk_fail(e))?;
            Ok(())
        })
    }
}
