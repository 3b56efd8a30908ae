//! The alert signature: HMAC-SHA256 with the shared secret over `<timestamp>.<body>`, sent as
//! `x-tollgate-signature: t=<unix seconds>,v1=<hex digest>`. The timestamp is inside the signed
//! text so that a receiver can refuse a replayed request (older than its tolerance) whose body and
//! signature are otherwise genuine; docs/alerts.md shows the receiver's side.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the timestamp and the signature.
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The value of [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (Unix seconds).
pub fn signature_header(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(digest))
}

/// Why a signature is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// No `t=` or `v1=` part, or one that does not parse.
    Malformed,
    /// Further than the tolerance from the receiver's clock: a replay, or a clock far off.
    Stale,
    /// The body, the timestamp or the secret differs from what was signed.
    Mismatch,
}

/// The receiver's check (the Rust twin of the Python snippet in docs/alerts.md): the header
/// parses, its timestamp is within `tolerance_secs` of `now`, and one of its `v1` digests is the
/// HMAC of `<t>.<body>` (compared in constant time).
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), Invalid> {
    let mut timestamp = None;
    let mut digests = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<u64>().map_err(|_| Invalid::Malformed)?),
            Some(("v1", d)) => digests.push(hex::decode(d).map_err(|_| Invalid::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Invalid::Malformed)?;
    if digests.is_empty() {
        return Err(Invalid::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance_secs {
        return Err(Invalid::Stale);
    }
    let expected = mac(secret, timestamp, body);
    if digests
        .iter()
        .any(|d| expected.clone().verify_slice(d).is_ok())
    {
        Ok(())
    } else {
        Err(Invalid::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-test";
    const BODY: &[u8] = br#"{"id":"evt_1","threshold_percent":80}"#;

    #[test]
    fn a_known_vector_matches_python_hmac() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"whsec-test",
        //   b"1700000000.{\"id\":\"evt_1\",\"threshold_percent\":80}",hashlib.sha256).hexdigest())'
        assert_eq!(
            signature_header(SECRET, 1_700_000_000, BODY),
            "t=1700000000,v1=3ab350c5501390c1c688199e8d9f8fa65b15df5d146203432fdda8de77f57b05"
        );
    }

    #[test]
    fn a_genuine_signature_verifies() {
        let header = signature_header(SECRET, 1_700_000_000, BODY);
        assert_eq!(verify(SECRET, &header, BODY, 1_700_000_100, 300), Ok(()));
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_or_a_moved_timestamp_fail() {
        let header = signature_header(SECRET, 1_700_000_000, BODY);
        let tampered = br#"{"id":"evt_1","threshold_percent":100}"#;
        assert_eq!(
            verify(SECRET, &header, tampered, 1_700_000_000, 300),
            Err(Invalid::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret", &header, BODY, 1_700_000_000, 300),
            Err(Invalid::Mismatch)
        );
        // The digest signs its timestamp: a fresh `t` on an old signature is refused.
        let moved = header.replace("t=1700000000", "t=1700000500");
        assert_eq!(
            verify(SECRET, &moved, BODY, 1_700_000_500, 300),
            Err(Invalid::Mismatch)
        );
    }

    #[test]
    fn an_old_or_malformed_header_fails() {
        let header = signature_header(SECRET, 1_700_000_000, BODY);
        assert_eq!(
            verify(SECRET, &header, BODY, 1_700_000_301, 300),
            Err(Invalid::Stale)
        );
        assert_eq!(
            verify(SECRET, "v1=abcd", BODY, 0, 300),
            Err(Invalid::Malformed)
        );
        assert_eq!(
            verify(SECRET, "t=1,v1=zz", BODY, 1, 300),
            Err(Invalid::Malformed)
        );
        assert_eq!(
            verify(SECRET, "t=1700000000", BODY, 1_700_000_000, 300),
            Err(Invalid::Malformed)
        );
    }
}
