//! The adapters: the gRPC services. Each method turns its protobuf request into a call of a use case
//! ([`crate::shopper`], [`crate::edge`]) or a part of the node context, and the answer back into protobuf. Who
//! may call each method is decided before it runs ([`crate::security::auth`]); what a method checks of its
//! fields is in the use case's validation.
//!
//! | service | port | module |
//! |---|---|---|
//! | `aisle.v1.DecisionService` (Decide, Track) | client | [`decision`] |
//! | `aisle.v1.AssociateService` (Subscribe) | client | [`associate`] |
//! | `aisle.v1.EdgeService` (SyncBundles, FetchSession, Upload) | client, cloud nodes | [`edge`] |
//! | `aisle.v1.AdminService` | admin, else client | [`admin`] |
//! | `aisle.v1.PeerService` | peer (mutual TLS) | [`peer`] |

pub mod admin;
pub mod associate;
pub mod decision;
pub mod edge;
pub mod peer;

use std::time::Duration;

use tokio::time::Instant;

/// The budget a request gives: its `grpc-timeout` (capped at `max`), else `default`.
pub fn budget(
    metadata: &tonic::metadata::MetadataMap,
    default: Duration,
    max: Duration,
) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(default, |t| t.min(max))
}

/// The deadline of a request that arrived at `received`.
pub fn deadline(
    received: Instant,
    metadata: &tonic::metadata::MetadataMap,
    default: Duration,
    max: Duration,
) -> Instant {
    received + budget(metadata, default, max)
}

/// Parses a gRPC `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_grpc_timeout("1500u"),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
    }

    #[test]
    fn budgets_default_and_cap() {
        let mut m = tonic::metadata::MetadataMap::new();
        let d = Duration::from_millis(50);
        let max = Duration::from_secs(1);
        assert_eq!(budget(&m, d, max), d);
        m.insert("grpc-timeout", "20m".parse().unwrap());
        assert_eq!(budget(&m, d, max), Duration::from_millis(20));
        m.insert("grpc-timeout", "30S".parse().unwrap());
        assert_eq!(budget(&m, d, max), max);
    }
}
