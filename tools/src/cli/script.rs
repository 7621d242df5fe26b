//! The scripted mode: one command per run. Results go to stdout, one
//! [`Record`](super::record::Record) per line (or one JSON object per line
//! with `--json`); a failure goes to stderr as `error code=NAME reason=…`
//! and sets the exit code ([`super::error`]).

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use super::{
    ClientError,
    args::{Cli, Command, SCRIPT_DEVICE_DEFAULT},
    conn::{ConnectOptions, PRESENCE_QUIET},
    error::EXIT_OK,
    exec::{self, Context},
    record::Item,
    session::{Pushed, Session},
    token::{TokenSource, mint_hs256},
};

/// Default device id of `listen`: neither the chat's nor the other
/// commands', so a script can listen and act as one user at once.
pub const LISTEN_DEVICE_DEFAULT: &str = "cli-listen";
/// How long `listen` waits for a push between checks of its deadline, in ms.
const LISTEN_POLL_MS: u64 = 200;

/// Where results and errors go.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// JSON lines instead of records.
    pub json: bool,
}

impl Output {
    /// Prints one item on stdout.
    pub fn item(&self, item: &Item) {
        let line = if self.json {
            item.record().to_json().to_string()
        } else {
            item.to_line()
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) is the reader's choice, not an error.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Prints an error on stderr.
    pub fn error(&self, e: &ClientError) {
        let line = if self.json {
            serde_json::json!({"type": "error", "code": e.code_name(), "reason": e.reason()})
                .to_string()
        } else {
            let mut r = String::from("error code=");
            r.push_str(&e.code_name());
            r.push_str(" reason=");
            r.push_str(&serde_json::to_string(&e.reason()).unwrap_or_default());
            r
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// Runs a scripted command (anything but `chat`); returns the exit code.
pub fn main(cli: &Cli) -> i32 {
    let out = Output { json: cli.json };
    match run(cli, &out) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            out.error(&e);
            e.exit_code()
        }
    }
}

/// The token source the flags name: `--token`, or `--user` with
/// `--jwt-secret`; `None` when neither.
pub fn token_source(cli: &Cli) -> Result<Option<TokenSource>, ClientError> {
    if let Some(t) = &cli.token {
        return Ok(Some(TokenSource::Fixed(t.clone())));
    }
    match (&cli.user, &cli.jwt_secret) {
        (Some(user), Some(secret)) => Ok(Some(TokenSource::Mint {
            user: user.clone(),
            secret: secret.clone(),
            audience: cli.audience.clone(),
            ttl_secs: cli.token_ttl_secs,
        })),
        (Some(_), None) => Err(ClientError::Usage(
            "--user needs --jwt-secret (the secret of `tern serve`), or pass --token".into(),
        )),
        (None, _) => Ok(None),
    }
}

/// Connection options of a scripted run, from the flags, with
/// `device_default` when no `--device` was given. A script logs in
/// [`PRESENCE_QUIET`]: its connection does not make the user online or
/// offline for their friends (a `presence busy` it sets is kept as the
/// user's setting and shows while one of their other devices is online).
pub fn connect_options(cli: &Cli, token: String, device_default: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(
        cli.server.clone(),
        token,
        cli.device
            .clone()
            .unwrap_or_else(|| device_default.to_owned()),
    );
    o.request_timeout_ms = cli.timeout_ms;
    o.http_url = cli.http_url.clone();
    o.tls = cli.tls_options();
    o.capabilities.push(PRESENCE_QUIET.to_owned());
    o
}

fn login(cli: &Cli, device_default: &str) -> Result<Session, ClientError> {
    let source = token_source(cli)?.ok_or_else(|| {
        ClientError::Usage(
            "log in with --token T, or --user U --jwt-secret S (a development server)".into(),
        )
    })?;
    Session::connect(connect_options(cli, source.token()?, device_default))
}

fn run(cli: &Cli, out: &Output) -> Result<(), ClientError> {
    match &cli.command {
        None | Some(Command::Chat) => Err(ClientError::Usage(
            "the chat is interactive; run it without a command".into(),
        )),
        Some(Command::Token) => {
            let (Some(user), Some(secret)) = (&cli.user, &cli.jwt_secret) else {
                return Err(ClientError::Usage(
                    "token needs --user U --jwt-secret S".into(),
                ));
            };
            let token = mint_hs256(secret, user, cli.token_ttl_secs, cli.audience.as_deref())?;
            out.item(&Item::Token(token));
            Ok(())
        }
        Some(Command::Listen {
            count,
            for_ms,
            rooms,
        }) => listen(cli, out, *count, *for_ms, rooms),
        Some(Command::Shared(cmd)) => {
            if let super::args::SharedCommand::SendFile(a) = cmd {
                // Said before connecting: the user's to fix either way.
                exec::file_exists(&a.path)?;
            }
            let session = login(cli, SCRIPT_DEVICE_DEFAULT)?;
            let items = exec::run(
                &Context {
                    session: &session,
                    open: None,
                    call: None,
                },
                cmd,
            )?;
            for i in &items {
                out.item(i);
            }
            session.close();
            Ok(())
        }
    }
}

fn listen(
    cli: &Cli,
    out: &Output,
    count: Option<usize>,
    for_ms: Option<u64>,
    rooms: &[String],
) -> Result<(), ClientError> {
    let session = login(cli, LISTEN_DEVICE_DEFAULT)?;
    // Joined before `ready`: a script that waits for `ready` then posts
    // finds this connection subscribed.
    for room in rooms {
        let cmd =
            super::args::SharedCommand::Room(super::args::RoomCommand::Join { room: room.clone() });
        exec::run(
            &Context {
                session: &session,
                open: None,
                call: None,
            },
            &cmd,
        )?;
    }
    out.item(&Item::Ready(session.welcome().clone()));
    let deadline = for_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut printed = 0usize;
    loop {
        if count.is_some_and(|c| printed >= c) {
            session.close();
            return Ok(());
        }
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(Duration::from_millis(LISTEN_POLL_MS)),
                _ => {
                    session.close();
                    return match count {
                        // Asked for N items and got fewer: a script waits on this.
                        Some(_) => Err(ClientError::Timeout(for_ms.unwrap_or(0))),
                        None => Ok(()),
                    };
                }
            },
            None => Duration::from_millis(LISTEN_POLL_MS),
        };
        let items: Vec<Item> = match session.next_pushed(wait)? {
            None => continue,
            Some(Pushed::Entries(es)) => es.into_iter().map(Item::Entry).collect(),
            Some(Pushed::Typing(t)) => vec![Item::Typing(t)],
            Some(Pushed::Call(c)) => vec![Item::Call(c)],
            Some(Pushed::CallSignal(c)) => vec![Item::CallSignal(c)],
            Some(Pushed::Presence(p)) => vec![Item::Presence(p)],
            Some(Pushed::Event(e)) => vec![Item::Event(e)],
            Some(Pushed::RoomClosed(r)) => vec![Item::RoomClosed(r)],
            Some(Pushed::Error(e)) => vec![Item::PushError(e)],
            Some(Pushed::Other(_)) => Vec::new(),
            Some(Pushed::Closed(c)) => {
                out.item(&Item::Closed(c.describe()));
                return Err(ClientError::Closed(c.describe()));
            }
        };
        for i in items {
            if count.is_some_and(|c| printed >= c) {
                break;
            }
            out.item(&i);
            printed += 1;
        }
    }
}
