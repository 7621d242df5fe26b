//! The `tern-bot` configuration file (TOML; docs/bots.md shows one whole):
//! where Tern is, where the chat-completions API is, and one `[[bot]]`
//! table per bot user. Every number has its unit in its name and a default;
//! [`BotsFile::load`] refuses what cannot work before anything connects.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::cli::token::{TOKEN_TTL_SECS_DEFAULT, TokenSource};

/// Where the API's base URL is read from when the file names none.
pub const BASE_URL_ENV: &str = "OPENAI_BASE_URL";
/// The default name of the variable holding the API key.
pub const API_KEY_ENV_DEFAULT: &str = "OPENAI_API_KEY";
/// Where the model is read from when neither the bot nor `[api]` names one.
pub const MODEL_ENV: &str = "OPENAI_MODEL";
/// The API's base URL when neither the file nor [`BASE_URL_ENV`] gives one.
pub const BASE_URL_DEFAULT: &str = "https://api.openai.com/v1";
/// Bots in one file at most (one connection and thread each).
pub const BOTS_MAX: usize = 64;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotsFile {
    /// `host:port` of Tern's TCP listener, or `ws://host:port/path`
    /// (`wss://…`: over TLS) of its WebSocket one; several, comma-separated,
    /// are tried in order (as `tern-cli --server`).
    pub server: String,
    /// Connect to Tern's `host:port` entries over TLS (its `listen.tls`).
    /// `wss://` entries always use TLS, with `ca_file` and
    /// `tls_server_name` below.
    #[serde(default)]
    pub tls: bool,
    /// PEM CA file trusted for Tern's certificate (default: the system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name Tern's certificate must carry (default: the server's host).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// The chat-completions API shared by the bots.
    #[serde(default)]
    pub api: ApiConfig,
    /// The bots, one `[[bot]]` table each.
    #[serde(rename = "bot", default)]
    pub bots: Vec<BotConfig>,
}

/// `[api]`: the OpenAI-compatible endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// E.g. `http://127.0.0.1:8080/v1`; empty: `$OPENAI_BASE_URL`, else
    /// [`BASE_URL_DEFAULT`]. Requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The variable holding the API key (sent as `Authorization: Bearer`);
    /// unset or empty: no key is sent (a local server).
    pub api_key_env: String,
    /// The default model of every bot; empty: `$OPENAI_MODEL`.
    pub model: String,
    /// PEM CA file trusted for an `https://` base URL (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// Wait for the API's TCP (and TLS) connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest silence of the API, before its first byte or between two
    /// chunks, in milliseconds; then the reply ends with a timeout message.
    pub stall_timeout_ms: u64,
    /// Longest whole call, request to last chunk, in milliseconds.
    pub reply_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            api_key_env: API_KEY_ENV_DEFAULT.into(),
            model: String::new(),
            ca_file: None,
            connect_timeout_ms: 5_000,
            stall_timeout_ms: 30_000,
            reply_timeout_ms: 120_000,
        }
    }
}

/// What a bot does with a question that arrives while it still answers an
/// earlier one in the same conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Busy {
    /// Answer it afterwards, in order (up to `queue_max` waiting).
    Queue,
    /// Say at once that it is busy; the question is not answered.
    Refuse,
}

/// One `[[bot]]`: a Tern user answered by a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// The bot's user id (the token's `sub`).
    pub user: String,
    /// Its device id (default `tern-bot`). Two runners of one bot need two.
    #[serde(default = "default_device")]
    pub device: String,
    /// Mint its own HS256 token with the secret in this variable (as
    /// `tern token` does; for servers verifying with `auth.jwt_secret`).
    #[serde(default)]
    pub jwt_secret_env: Option<String>,
    /// … or with the secret in this file (its first line).
    #[serde(default)]
    pub jwt_secret_file: Option<PathBuf>,
    /// The `aud` claim of a minted token, when the server requires one.
    #[serde(default)]
    pub jwt_audience: Option<String>,
    /// … or log in with the token in this variable.
    #[serde(default)]
    pub token_env: Option<String>,
    /// … or with the token in this file (re-read at every reconnect, so a
    /// rotated token is picked up).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The system prompt (the first message of every request).
    #[serde(default)]
    pub system_prompt: String,
    /// The model; empty: `[api] model`.
    #[serde(default)]
    pub model: String,
    /// Answer 1:1 messages.
    #[serde(default = "yes")]
    pub answer_direct: bool,
    /// Answer group messages that @mention the bot (`Send.mentions`).
    #[serde(default = "yes")]
    pub answer_mentions: bool,
    /// Context sent with a question: system prompt, recent history and the
    /// question, at most this many tokens, estimated as characters / 4.
    #[serde(default = "default_context_tokens_max")]
    pub context_tokens_max: u32,
    /// Entries of history fetched for the context (one `history` page;
    /// capped by the server's `page_entries_max`).
    #[serde(default = "default_history_entries_max")]
    pub history_entries_max: u32,
    /// `max_tokens` of a reply.
    #[serde(default = "default_reply_tokens_max")]
    pub reply_tokens_max: u32,
    /// Sampling temperature; unset: the API's default.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Edits of a streaming reply per second at most; 0: no streaming, the
    /// reply is sent once, whole.
    #[serde(default = "default_edits_per_second")]
    pub edits_per_second: f64,
    /// A question while one is answered in the same conversation.
    #[serde(default = "default_busy")]
    pub busy: Busy,
    /// Questions waiting per conversation with `busy = "queue"`; beyond:
    /// refused as with `busy = "refuse"`.
    #[serde(default = "default_queue_max")]
    pub queue_max: usize,
    /// Replies being written at once (all conversations); beyond: refused.
    #[serde(default = "default_replies_in_flight_max")]
    pub replies_in_flight_max: usize,
    /// Questions one user may ask this bot per minute; 0: no limit.
    #[serde(default = "default_user_questions_per_minute")]
    pub user_questions_per_minute: u32,
    /// Questions this bot answers per minute, all users; 0: no limit.
    #[serde(default = "default_bot_questions_per_minute")]
    pub bot_questions_per_minute: u32,
    /// Tokens (prompt and completion) this bot may spend per UTC day,
    /// counted from the API's `usage` when it reports it, else estimated;
    /// 0: no budget.
    #[serde(default = "default_daily_tokens_max")]
    pub daily_tokens_max: u64,
}

fn default_device() -> String {
    "tern-bot".into()
}
fn yes() -> bool {
    true
}
fn default_context_tokens_max() -> u32 {
    3_000
}
fn default_history_entries_max() -> u32 {
    50
}
fn default_reply_tokens_max() -> u32 {
    1_024
}
fn default_edits_per_second() -> f64 {
    4.0
}
fn default_busy() -> Busy {
    Busy::Queue
}
fn default_queue_max() -> usize {
    4
}
fn default_replies_in_flight_max() -> usize {
    16
}
fn default_user_questions_per_minute() -> u32 {
    10
}
fn default_bot_questions_per_minute() -> u32 {
    120
}
fn default_daily_tokens_max() -> u64 {
    1_000_000
}

/// The API settings a bot's requests use, with the environment applied.
#[derive(Clone)]
pub struct ApiTarget {
    /// `{base_url}/chat/completions` is called.
    pub base_url: String,
    /// The bearer key, if any.
    pub api_key: Option<String>,
    /// The `[api]` timeouts and CA file.
    pub api: ApiConfig,
}

impl std::fmt::Debug for ApiTarget {
    // The key never belongs in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTarget")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| ".."))
            .finish()
    }
}

impl BotsFile {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks the text of a file.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: Self = toml::from_str(text)?;
        file.check()?;
        Ok(file)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.server.trim().is_empty() {
            bail!("`server` is empty");
        }
        let mut wss = false;
        let mut tcp = false;
        for entry in crate::cli::conn::server_list(&self.server) {
            match crate::cli::ws::WsUrl::parse(entry) {
                Some(Err(e)) => bail!("`server`: {e}"),
                Some(Ok(url)) => wss |= url.tls,
                None => tcp = true,
            }
        }
        if wss && tcp && !self.tls {
            bail!(
                "`server` mixes wss:// with plain host:port entries: set `tls = true` \
                 (TLS for both) or list WebSocket URLs only"
            );
        }
        if self.bots.is_empty() {
            bail!("no [[bot]] table");
        }
        if self.bots.len() > BOTS_MAX {
            bail!("{} bots; at most {BOTS_MAX} per file", self.bots.len());
        }
        let mut seen = std::collections::HashSet::new();
        for b in &self.bots {
            tern_protocol::ids::check_id(&b.user)
                .map_err(|e| anyhow::anyhow!("bot user {:?}: {e}", b.user))?;
            tern_protocol::ids::check_id(&b.device)
                .map_err(|e| anyhow::anyhow!("bot {:?}: device {:?}: {e}", b.user, b.device))?;
            if !seen.insert((&b.user, &b.device)) {
                bail!("bot {:?} with device {:?} twice", b.user, b.device);
            }
            let ways = [
                b.jwt_secret_env.is_some(),
                b.jwt_secret_file.is_some(),
                b.token_env.is_some(),
                b.token_file.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if ways != 1 {
                bail!(
                    "bot {:?}: set exactly one of jwt_secret_env, jwt_secret_file, token_env, token_file",
                    b.user
                );
            }
            if !(b.edits_per_second.is_finite() && (0.0..=50.0).contains(&b.edits_per_second)) {
                bail!("bot {:?}: edits_per_second must be 0 to 50", b.user);
            }
            if b.context_tokens_max == 0 || b.reply_tokens_max == 0 {
                bail!(
                    "bot {:?}: context_tokens_max and reply_tokens_max must be > 0",
                    b.user
                );
            }
            if b.replies_in_flight_max == 0 {
                bail!("bot {:?}: replies_in_flight_max must be > 0", b.user);
            }
            if self.model_of(b).is_empty() {
                bail!(
                    "bot {:?}: no model (set `model`, `[api] model` or ${MODEL_ENV})",
                    b.user
                );
            }
        }
        Ok(())
    }

    /// The model bot `b` asks.
    pub fn model_of(&self, b: &BotConfig) -> String {
        if !b.model.is_empty() {
            return b.model.clone();
        }
        if !self.api.model.is_empty() {
            return self.api.model.clone();
        }
        std::env::var(MODEL_ENV).unwrap_or_default()
    }

    /// The API endpoint with the environment applied.
    pub fn api_target(&self) -> ApiTarget {
        let base_url = if self.api.base_url.is_empty() {
            std::env::var(BASE_URL_ENV)
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| BASE_URL_DEFAULT.to_owned())
        } else {
            self.api.base_url.clone()
        };
        let api_key = std::env::var(&self.api.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        ApiTarget {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            api: self.api.clone(),
        }
    }

    /// Tern's TLS settings, when `tls` is set or an entry is `wss://`.
    pub fn tls_options(&self) -> Option<crate::tls::TlsOptions> {
        let wss = crate::cli::conn::server_list(&self.server)
            .any(|e| crate::cli::ws::WsUrl::parse(e).is_some_and(|u| u.is_ok_and(|u| u.tls)));
        (self.tls || wss).then(|| crate::tls::TlsOptions {
            ca_file: self.ca_file.clone(),
            insecure: false,
            server_name: self.tls_server_name.clone(),
        })
    }
}

impl BotConfig {
    /// Where this bot's login token comes from now (read afresh for each
    /// connection: a rotated file or a fresh mint).
    pub fn token_source(&self) -> anyhow::Result<TokenSource> {
        let mint = |secret: String| TokenSource::Mint {
            user: self.user.clone(),
            secret,
            audience: self.jwt_audience.clone(),
            ttl_secs: TOKEN_TTL_SECS_DEFAULT,
        };
        if let Some(var) = &self.jwt_secret_env {
            let s = std::env::var(var).with_context(|| format!("${var} (jwt_secret_env)"))?;
            return Ok(mint(s));
        }
        if let Some(f) = &self.jwt_secret_file {
            return Ok(mint(first_line(f)?));
        }
        if let Some(var) = &self.token_env {
            let t = std::env::var(var).with_context(|| format!("${var} (token_env)"))?;
            return Ok(TokenSource::Fixed(t.trim().to_owned()));
        }
        if let Some(f) = &self.token_file {
            return Ok(TokenSource::Fixed(first_line(f)?));
        }
        bail!("bot {:?}: no token source", self.user)
    }
}

/// The first line of a small secret file, trimmed.
fn first_line(path: &Path) -> anyhow::Result<String> {
    /// A token or a secret; anything larger is not one.
    const SECRET_FILE_BYTES_MAX: u64 = 16 * 1024;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.len() > SECRET_FILE_BYTES_MAX {
        bail!(
            "{}: {} bytes; a token or secret file holds at most {SECRET_FILE_BYTES_MAX}",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_gets_the_defaults_and_bad_ones_say_why() {
        // Proves the defaults of a one-bot file and that a file without a
        // token source, with two, or with an unknown key is refused.
        let ok = BotsFile::parse(
            "server = \"127.0.0.1:7400\"\n[api]\nmodel = \"m\"\n[[bot]]\nuser = \"helper\"\njwt_secret_env = \"S\"\n",
        )
        .unwrap();
        let b = &ok.bots[0];
        assert_eq!(b.device, "tern-bot");
        assert_eq!(b.busy, Busy::Queue);
        assert!(b.answer_direct && b.answer_mentions);
        assert_eq!(ok.model_of(b), "m");
        for bad in [
            "server = \"s\"\n[api]\nmodel = \"m\"\n[[bot]]\nuser = \"h\"\n",
            "server = \"s\"\n[api]\nmodel = \"m\"\n[[bot]]\nuser = \"h\"\ntoken_env = \"A\"\ntoken_file = \"f\"\n",
            "server = \"s\"\n[api]\nmodel = \"m\"\n[[bot]]\nuser = \"h\"\ntoken_env = \"A\"\nfoo = 1\n",
            "server = \"s\"\n[api]\nmodel = \"m\"\n[[bot]]\nuser = \"h h\"\ntoken_env = \"A\"\n",
            "server = \"s\"\n[api]\nmodel = \"m\"\n",
        ] {
            assert!(BotsFile::parse(bad).is_err(), "{bad}");
        }
    }
}
