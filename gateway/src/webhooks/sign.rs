//! Signatures of webhook requests: the receiver recomputes them with the
//! shared secret, checks the timestamp against its replay window, and
//! compares in constant time (docs/http-api.md shows how).
//!
//! Two layouts are sent side by side, over the same secret:
//! - `X-Tern-Timestamp: <unix seconds>` and
//!   `X-Tern-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`;
//! - Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256(secret, id + "." + timestamp + "." + body)>`),
//!   so a receiver can use an existing verification library with the
//!   secret given as `whsec_` + base64(secret).

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Signs webhook requests with one secret.
#[derive(Clone)]
pub struct Signer {
    secret: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A signer over `secret` (its UTF-8 bytes are the HMAC key).
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().into(),
        }
    }

    /// `sha256=<hex>` over `timestamp + "." + body`: the `X-Tern-Signature`.
    pub fn tern_signature(&self, timestamp_s: u64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256=");
        for b in digest {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }

    /// `v1,<base64>` over `id + "." + timestamp + "." + body`: the Standard
    /// Webhooks `webhook-signature`.
    pub fn standard_signature(&self, id: &str, timestamp_s: u64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }

    /// Every signature header of one request, in the order sent.
    pub fn headers(&self, id: &str, timestamp_s: u64, body: &[u8]) -> [(&'static str, String); 5] {
        [
            ("x-tern-timestamp", timestamp_s.to_string()),
            ("x-tern-signature", self.tern_signature(timestamp_s, body)),
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp_s.to_string()),
            (
                "webhook-signature",
                self.standard_signature(id, timestamp_s, body),
            ),
        ]
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length; `new_from_slice` fails for none.
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts any key length")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (key "Jefe"), with our `timestamp.` prefix
    /// folded into the data: "what do ya want " + "for nothing?".
    #[test]
    fn hmac_matches_rfc_4231() {
        let s = Signer::new("Jefe");
        let mut mac = s.mac();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The prefixed form is the same MAC over "ts.body".
        assert_eq!(s.tern_signature(1, b"x"), {
            let mut m = s.mac();
            m.update(b"1.x");
            let d = m.finalize().into_bytes();
            format!(
                "sha256={}",
                d.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        });
    }
}
