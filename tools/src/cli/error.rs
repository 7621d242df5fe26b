//! The one error type of the client, with a stable code name for scripts
//! (`ERROR_CODE_*` from the server, `CLI_*` from the client itself) and the
//! process exit code each maps to.
//!
//! Errors are values here: nothing in the client panics on what a server,
//! a user or a script hands it.

use tern_protocol::pb;

/// Exit code: the command did what it was asked.
pub const EXIT_OK: i32 = 0;
/// Exit code: the server refused the request with a typed `ERROR_CODE_*`.
pub const EXIT_REFUSED: i32 = 1;
/// Exit code: the command line or the input was wrong (also clap's code).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: no usable connection (connect, I/O, timeout, closed, protocol).
pub const EXIT_CONNECTION: i32 = 3;
/// Exit code: the feature is not available on this server.
pub const EXIT_NOT_AVAILABLE: i32 = 4;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP connection to the server could be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with a typed error.
    #[error("{}: {reason}", code_name(*code))]
    Server {
        /// The raw `ErrorCode` value (kept raw: a newer server may send a
        /// code this client does not know).
        code: i32,
        /// The server's human-readable reason.
        reason: String,
        /// For retryable codes, the server's hint in milliseconds.
        retry_after_ms: u32,
    },
    /// The connection closed before the answer arrived.
    #[error("connection closed: {0}")]
    Closed(String),
    /// No answer within the request deadline.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The server sent something this client cannot use: an undecodable
    /// frame, or an answer of the wrong kind.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A frame would exceed the server's `frame_bytes_max`; it was not sent
    /// (sending it would make the server close the connection).
    #[error("frame of {len} bytes exceeds the server's limit of {max} bytes; not sent")]
    FrameTooLarge {
        /// The encoded frame body, in bytes.
        len: usize,
        /// `Welcome.limits.frame_bytes_max`.
        max: usize,
    },
    /// A text exceeds the server's `text_bytes_max`; it was not sent.
    #[error("text of {len} bytes exceeds the server's limit of {max} bytes; not sent")]
    TextTooLong {
        /// The text's UTF-8 length.
        len: usize,
        /// `Welcome.limits.text_bytes_max`.
        max: usize,
    },
    /// Too many requests wait for an answer on this connection.
    #[error("{0} requests already wait for an answer")]
    TooManyInFlight(usize),
    /// The command or its arguments are wrong.
    #[error("{0}")]
    Usage(String),
    /// The feature does not exist on the server yet.
    #[error("not available yet: {0}")]
    NotAvailable(&'static str),
    /// A development token could not be minted.
    #[error("cannot mint a token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// The media API refused an upload (its HTTP status and stable code).
    #[error("media upload refused ({status} {code}): {message}")]
    Media {
        /// The HTTP status.
        status: u16,
        /// The API's error code, e.g. `PAYLOAD_TOO_LARGE`, `UNSUPPORTED_MEDIA_TYPE`.
        code: String,
        /// Its message.
        message: String,
    },
    /// The interactive client is not logged in.
    #[error("not logged in: /login USER --jwt-secret S, or /login --token T")]
    NotConnected,
}

impl ClientError {
    /// The stable name scripts match on: the server's `ERROR_CODE_*` name,
    /// or a `CLI_*` name for failures on this side.
    pub fn code_name(&self) -> String {
        match self {
            Self::Server { code, .. } => code_name(*code),
            Self::Connect { .. } => "CLI_CONNECT_FAILED".into(),
            Self::Io(_) => "CLI_IO".into(),
            Self::Closed(_) => "CLI_CLOSED".into(),
            Self::Timeout(_) => "CLI_TIMEOUT".into(),
            Self::Protocol(_) => "CLI_PROTOCOL".into(),
            Self::FrameTooLarge { .. } => "CLI_FRAME_TOO_LARGE".into(),
            Self::TextTooLong { .. } => "CLI_TEXT_TOO_LONG".into(),
            Self::TooManyInFlight(_) => "CLI_TOO_MANY_IN_FLIGHT".into(),
            Self::Usage(_) => "CLI_USAGE".into(),
            Self::NotAvailable(_) => "CLI_NOT_AVAILABLE".into(),
            Self::Token(_) => "CLI_TOKEN".into(),
            Self::NotConnected => "CLI_NOT_CONNECTED".into(),
            Self::Media { code, .. } => format!("MEDIA_{}", code.to_ascii_uppercase()),
        }
    }

    /// The process exit code for this error (see the `EXIT_*` constants).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Server { .. } | Self::Media { .. } => EXIT_REFUSED,
            Self::Usage(_)
            | Self::FrameTooLarge { .. }
            | Self::TextTooLong { .. }
            | Self::Token(_) => EXIT_USAGE,
            Self::NotAvailable(_) => EXIT_NOT_AVAILABLE,
            Self::Connect { .. }
            | Self::Io(_)
            | Self::Closed(_)
            | Self::Timeout(_)
            | Self::Protocol(_)
            | Self::TooManyInFlight(_)
            | Self::NotConnected => EXIT_CONNECTION,
        }
    }

    /// The human-readable detail without the code name.
    pub fn reason(&self) -> String {
        match self {
            Self::Server { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    /// The server's code, when the server refused.
    pub fn server_code(&self) -> Option<pb::ErrorCode> {
        match self {
            Self::Server { code, .. } => pb::ErrorCode::try_from(*code).ok(),
            _ => None,
        }
    }

    /// Builds the error for a server `Error` frame.
    pub fn from_server(e: pb::Error) -> Self {
        Self::Server {
            code: e.code,
            reason: e.reason,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

/// `ERROR_CODE_*` name of a raw code; unknown values keep their number.
pub fn code_name(code: i32) -> String {
    match pb::ErrorCode::try_from(code) {
        Ok(c) => c.as_str_name().to_owned(),
        Err(_) => format!("ERROR_CODE_{code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_keep_their_schema_name_and_exit_1() {
        // Proves scripts see the schema's enum name, also for unknown codes.
        let e = ClientError::from_server(pb::Error {
            code: pb::ErrorCode::NotMember as i32,
            reason: "not a member of g:x".into(),
            retry_after_ms: 0,
        });
        assert_eq!(e.code_name(), "ERROR_CODE_NOT_MEMBER");
        assert_eq!(e.exit_code(), EXIT_REFUSED);
        assert_eq!(e.reason(), "not a member of g:x");
        assert_eq!(code_name(999), "ERROR_CODE_999");
        assert_eq!(ClientError::Timeout(5).exit_code(), EXIT_CONNECTION);
        assert_eq!(
            ClientError::NotAvailable("media").exit_code(),
            EXIT_NOT_AVAILABLE
        );
    }
}
