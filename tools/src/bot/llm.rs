//! A client of an OpenAI-compatible chat-completions API, streaming:
//! `POST {base_url}/chat/completions` with `"stream": true`, answered by
//! server-sent events, one `data: {json}` line per chunk and `data: [DONE]`
//! at the end. Blocking (ureq), run on a bot's reply thread, never on its
//! protocol loop.
//!
//! Every outcome that is not a whole answer is an [`LlmError`] the bot
//! turns into a short visible message: a status (429, 5xx, other), a
//! timeout, or a stream that ended without `[DONE]`.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    ops::ControlFlow,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::config::ApiTarget;

/// Bytes of one SSE line at most; a longer one is a broken stream.
pub const SSE_LINE_BYTES_MAX: u64 = 256 * 1024;
/// Bytes of a whole streamed response at most.
pub const RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Bytes of an error response kept for the log.
pub const ERROR_BODY_BYTES_MAX: u64 = 4 * 1024;

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// Its text.
    pub content: String,
}

/// The request body.
#[derive(Debug, Serialize)]
pub struct ChatRequest<'a> {
    /// The model.
    pub model: &'a str,
    /// System prompt, context and the question, oldest first.
    pub messages: &'a [ChatMessage],
    /// Longest reply, in tokens.
    pub max_tokens: u32,
    /// Sampling temperature, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Always true.
    pub stream: bool,
    /// Asks for a last chunk with `usage` (servers that do not know the
    /// option ignore it; the tokens are then estimated).
    pub stream_options: StreamOptions,
}

/// `stream_options`.
#[derive(Debug, Serialize)]
pub struct StreamOptions {
    /// Always true.
    pub include_usage: bool,
}

/// The API's token count of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Tokens of the request.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens of the reply.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both (some servers send only this).
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    /// Tokens spent in all.
    pub fn total(&self) -> u64 {
        self.total_tokens
            .max(self.prompt_tokens + self.completion_tokens)
    }
}

/// A whole answer.
#[derive(Debug, Default)]
pub struct Completion {
    /// The text, as streamed (cut short if the consumer stopped it).
    pub text: String,
    /// The API's count, when it gave one.
    pub usage: Option<Usage>,
    /// True when the consumer stopped reading (the text reached its limit).
    pub cut: bool,
}

/// Why there is no whole answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// 429: the API limits this key.
    #[error("the API is rate limiting (429)")]
    RateLimited,
    /// 5xx: the API failed.
    #[error("the API failed ({0})")]
    Server(u16),
    /// Any other non-2xx (bad key, unknown model, bad request): the
    /// operator's problem; the detail goes to the log only.
    #[error("the API refused the request ({status}): {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        detail: String,
    },
    /// No byte within `stall_timeout_ms`, or the call over `reply_timeout_ms`.
    #[error("the API did not answer in time")]
    Timeout,
    /// The API could not be reached.
    #[error("cannot reach the API: {0}")]
    Connect(String),
    /// The stream ended (or broke) before `data: [DONE]`; `partial` is
    /// what had arrived.
    #[error("the API's stream broke off: {why}")]
    Broken {
        /// What happened.
        why: String,
        /// The text that had arrived.
        partial: String,
    },
}

/// A chat-completions endpoint with its HTTP agent.
#[derive(Debug)]
pub struct LlmClient {
    agent: ureq::Agent,
    url: String,
    api_key: Option<String>,
}

impl LlmClient {
    /// A client of `target` (its CA file read now for `https://`).
    pub fn new(target: &ApiTarget) -> anyhow::Result<Self> {
        let ms = |v: u64| Some(Duration::from_millis(v.max(1)));
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(ms(target.api.connect_timeout_ms))
            .timeout_per_read(ms(target.api.stall_timeout_ms))
            .timeout_global(ms(target.api.reply_timeout_ms));
        if target.base_url.starts_with("https://") {
            let file = target
                .api
                .ca_file
                .clone()
                .unwrap_or_else(|| crate::tls::SYSTEM_CA_FILE.into());
            let pem = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("[api] CA file {}: {e}", file.display()))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                anyhow::bail!("[api] CA file {}: no PEM certificate", file.display());
            }
            let tls = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build();
            cfg = cfg.tls_config(tls);
        }
        Ok(Self {
            agent: cfg.build().into(),
            url: format!("{}/chat/completions", target.base_url),
            api_key: target.api_key.clone(),
        })
    }

    /// Calls the API and hands each piece of text to `on_text` as it
    /// arrives; `on_text` returning `Break` stops reading (the answer is
    /// then [`Completion::cut`]).
    pub fn stream(
        &self,
        req: &ChatRequest<'_>,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion, LlmError> {
        let body = serde_json::to_vec(req).map_err(|e| LlmError::Refused {
            status: 0,
            detail: e.to_string(),
        })?;
        let mut call = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream");
        if let Some(k) = &self.api_key {
            call = call.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = call.send(&body[..]).map_err(|e| match e {
            ureq::Error::Timeout(_) => LlmError::Timeout,
            e => LlmError::Connect(e.to_string()),
        })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let mut detail = String::new();
            let _ = resp
                .body_mut()
                .with_config()
                .limit(ERROR_BODY_BYTES_MAX)
                .reader()
                .take(ERROR_BODY_BYTES_MAX)
                .read_to_string(&mut detail);
            return Err(match status {
                429 => LlmError::RateLimited,
                500..=599 => LlmError::Server(status),
                _ => LlmError::Refused { status, detail },
            });
        }
        let reader = resp
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .reader();
        let mut reader = BufReader::new(reader);
        let mut out = Completion::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(SSE_LINE_BYTES_MAX)
                .read_until(b'\n', &mut line)
                .map_err(|e| read_error(&e, &out.text))?;
            if n == 0 {
                return Err(LlmError::Broken {
                    why: "the stream ended before [DONE]".into(),
                    partial: out.text,
                });
            }
            if line.last() != Some(&b'\n') && n as u64 >= SSE_LINE_BYTES_MAX {
                return Err(LlmError::Broken {
                    why: format!("a line over {SSE_LINE_BYTES_MAX} bytes"),
                    partial: out.text,
                });
            }
            match parse_sse_line(&line) {
                Sse::Skip => {}
                Sse::Done => return Ok(out),
                Sse::Bad(why) => {
                    return Err(LlmError::Broken {
                        why,
                        partial: out.text,
                    });
                }
                Sse::Chunk { text, usage } => {
                    if usage.is_some() {
                        out.usage = usage;
                    }
                    if let Some(t) = text
                        && !t.is_empty()
                    {
                        out.text.push_str(&t);
                        if on_text(&t).is_break() {
                            out.cut = true;
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }
}

fn read_error(e: &std::io::Error, partial: &str) -> LlmError {
    let timeout = matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) || e
        .get_ref()
        .and_then(|i| i.downcast_ref::<ureq::Error>())
        .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
    if timeout {
        LlmError::Timeout
    } else {
        LlmError::Broken {
            why: e.to_string(),
            partial: partial.to_owned(),
        }
    }
}

/// One line of the event stream, understood.
#[derive(Debug, PartialEq)]
pub enum Sse {
    /// A blank line, a comment, or a field other than `data`.
    Skip,
    /// `data: [DONE]`.
    Done,
    /// A chunk: its text (`choices[0].delta.content`) and `usage`.
    Chunk {
        /// The text piece, if any.
        text: Option<String>,
        /// The token count, on the last chunk of servers that send it.
        usage: Option<Usage>,
    },
    /// A `data` line that is not a chunk (or an `error` object).
    Bad(String),
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

/// Parses one line (with or without its line end).
pub fn parse_sse_line(line: &[u8]) -> Sse {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return Sse::Skip;
    };
    let data = data.strip_prefix(b" ").unwrap_or(data);
    if data == b"[DONE]" {
        return Sse::Done;
    }
    match serde_json::from_slice::<Chunk>(data) {
        Ok(c) if c.error.is_some() => Sse::Bad(format!(
            "the API sent an error: {}",
            c.error.unwrap_or_default()
        )),
        Ok(c) => Sse::Chunk {
            text: c
                .choices
                .into_iter()
                .next()
                .and_then(|ch| ch.delta)
                .and_then(|d| d.content),
            usage: c.usage,
        },
        Err(e) => Sse::Bad(format!("a data line that is not a chunk: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_are_chunks_usage_done_or_typed_garbage() {
        // Proves the parser on the shapes OpenAI-compatible servers send:
        // a delta, a role-only first chunk, the usage chunk with no
        // choices, [DONE], comments and blank lines, and garbage.
        assert_eq!(
            parse_sse_line(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n"),
            Sse::Chunk {
                text: Some("Hi".into()),
                usage: None
            }
        );
        assert_eq!(
            parse_sse_line(b"data:{\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n"),
            Sse::Chunk {
                text: None,
                usage: None
            }
        );
        assert_eq!(
            parse_sse_line(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}"),
            Sse::Chunk {
                text: None,
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    total_tokens: 7
                })
            }
        );
        assert_eq!(parse_sse_line(b"data: [DONE]\n"), Sse::Done);
        assert_eq!(parse_sse_line(b": keep-alive\n"), Sse::Skip);
        assert_eq!(parse_sse_line(b"\n"), Sse::Skip);
        assert!(matches!(parse_sse_line(b"data: {nope"), Sse::Bad(_)));
        assert!(matches!(
            parse_sse_line(b"data: {\"error\":{\"message\":\"x\"}}"),
            Sse::Bad(_)
        ));
    }
}
