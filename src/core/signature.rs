//! Webhook signatures: `x-fishjam-signature-256: sha256=<hex>`, the lower-case
//! hex HMAC-SHA256 of the raw body keyed with the webhook secret.
//!
//! Verification accepts exactly what the official SDKs accept: surrounding
//! whitespace is trimmed and a `sha256=` prefix (lower case) is optional; the
//! digest must be lower-case hex. The comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header Fishjam signs webhooks with.
pub const HEADER: &str = "x-fishjam-signature-256";

type HmacSha256 = Hmac<Sha256>;

/// The header value Fishjam sends for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body`.
pub fn verify(secret: &[u8], body: &[u8], header: &[u8]) -> bool {
    let Ok(header) = std::str::from_utf8(header) else {
        return false;
    };
    let header = header.trim();
    let digest = header.strip_prefix("sha256=").unwrap_or(header);
    // Upper-case hex is refused, as the SDKs refuse it.
    if digest.len() != 64 || digest.bytes().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    let Ok(expected) = hex::decode(digest) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let header = sign(b"secret", b"body");
        assert!(header.starts_with("sha256="));
        assert!(verify(b"secret", b"body", header.as_bytes()));
        assert!(!verify(b"other", b"body", header.as_bytes()));
        assert!(!verify(b"secret", b"bodz", header.as_bytes()));
        assert!(!verify(b"secret", b"body", b""));
        assert!(!verify(b"secret", b"body", "sha256=é".as_bytes()));
    }
}
