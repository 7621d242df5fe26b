//! The type of an upload from its bytes (magic numbers, via `infer`), and
//! whether it is acceptable for the kind the client claimed.

use super::{Kind, MediaError};

/// How many leading bytes sniffing looks at (enough for every type `infer`
/// knows that we accept).
pub const HEAD_BYTES: usize = 8192;

/// Image types we decode (and so can thumbnail).
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The MIME type of `head` (the first bytes of the upload) if it is
/// acceptable as `kind`.
pub fn check(kind: Kind, head: &[u8]) -> Result<String, MediaError> {
    let found = infer::get(head).map(|t| t.mime_type());
    let wrong = || MediaError::WrongType {
        kind,
        found: found.unwrap_or("unknown").to_owned(),
    };
    match kind {
        Kind::Image => found
            .filter(|m| IMAGE_TYPES.contains(m))
            .map(str::to_owned)
            .ok_or_else(wrong),
        Kind::Voice => found
            .filter(|m| m.starts_with("audio/"))
            .map(str::to_owned)
            .ok_or_else(wrong),
        Kind::Video => found
            .filter(|m| m.starts_with("video/"))
            .map(str::to_owned)
            .ok_or_else(wrong),
        // Anything goes as a file; unknown bytes are served as such.
        Kind::File | Kind::Variant => Ok(found.unwrap_or("application/octet-stream").to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text claiming to be an image is refused; a PNG signature passes.
    #[test]
    fn images_are_judged_by_their_bytes() {
        assert!(matches!(
            check(Kind::Image, b"hello, I am a picture"),
            Err(MediaError::WrongType { .. })
        ));
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(check(Kind::Image, png).unwrap(), "image/png");
        assert_eq!(
            check(Kind::File, b"plain").unwrap(),
            "application/octet-stream"
        );
    }
}
