//! The interactive mode: a line-oriented chat with slash commands.
//!
//! Two threads share one `Chat`: the input thread reads lines (rustyline
//! on a terminal, so live events print above the prompt without tearing
//! the line being typed; plain stdin lines otherwise) and runs commands;
//! the event thread takes pushes off the session and prints them
//! (messages, receipts, typing, presence, recalls, group events, kicks),
//! marks the open conversation read as messages arrive, and reconnects
//! with backoff and resume cursors when the connection drops for a reason
//! that allows it. Each login bumps a generation number; an event thread
//! whose generation is no longer current stops.
//!
//! No lock is held across a network round trip: a command clones the
//! session's `Arc` and lets go of the state first.

use std::{
    collections::HashMap,
    io::{BufRead as _, IsTerminal as _, Read as _, Write as _},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{CommandFactory as _, Parser as _};
use parking_lot::Mutex;
use rand::Rng as _;
use tern_protocol::pb::{self, frame::Body};

use super::{
    ClientError,
    args::{CHAT_DEVICE_DEFAULT, Cli, OnOff, ReplCommand, ReplLine, SendArgs, ToArgs},
    conn::{Closed, ConnectOptions, PRESENCE_QUIET},
    error::EXIT_OK,
    exec::{self, Context},
    human,
    record::Item,
    script,
    session::{Pushed, Session},
    target::Target,
    token::TokenSource,
};

/// How long the event thread waits for a push before it checks whether its
/// login is still current, in milliseconds.
pub const PUMP_POLL_MS: u64 = 250;
/// Reconnect attempts after a lost connection before giving up.
pub const RECONNECT_ATTEMPTS_MAX: u32 = 8;
/// First reconnect backoff, doubled per attempt (protocol.md 3.6), in ms.
pub const RECONNECT_BACKOFF_MS_BASE: u64 = 500;
/// Longest reconnect backoff, in milliseconds.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 30_000;
/// Entries `/open` shows.
pub const OPEN_HISTORY_ENTRIES: u32 = 20;
/// Conversations listed at login.
pub const LOGIN_CONVERSATIONS_MAX: u32 = 20;
/// A repeated "is typing" from the same user in the same conversation is
/// not shown again within this, in milliseconds.
pub const TYPING_SHOWN_MS: u64 = 5_000;
/// Longest input line read from a non-terminal stdin, in bytes.
pub const INPUT_LINE_BYTES_MAX: usize = 64 * 1024;

/// Runs the chat until `/quit` or end of input; returns the exit code: 0,
/// or when stdin is not a terminal, the code of the first failed command
/// (so `printf '/open bob\nhi\n' | tern-cli` can be checked).
pub fn main(cli: &Cli) -> i32 {
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let (mut input, sink) = match tty.then(editor).flatten() {
        Some((rl, sink)) => (Input::Editor(Box::new(rl)), sink),
        None => (
            Input::Plain(std::io::stdin().lock()),
            Box::new(Stdout) as Box<dyn Sink>,
        ),
    };
    let chat = Arc::new(Chat {
        sink: Mutex::new(sink),
        state: Mutex::new(State {
            session: None,
            token: None,
            device: cli
                .device
                .clone()
                .unwrap_or_else(|| CHAT_DEVICE_DEFAULT.into()),
            generation: 0,
            open: None,
            autoread: true,
            typing_seen: HashMap::new(),
            call: None,
        }),
        server: cli.server.clone(),
        http_url: cli.http_url.clone(),
        tls: cli.tls_options(),
        timeout_ms: cli.timeout_ms,
        secret: Mutex::new(cli.jwt_secret.clone()),
        audience: cli.audience.clone(),
        ttl_secs: cli.token_ttl_secs,
        tty,
        first_error: Mutex::new(None),
    });
    match script::token_source(cli) {
        Ok(Some(source)) => {
            let device = chat.state.lock().device.clone();
            if let Err(e) = chat.login(source, device) {
                chat.error(&e);
            }
        }
        Ok(None) => {
            chat.say("not logged in: /login USER --jwt-secret S, or /login --token T".into())
        }
        Err(e) => chat.error(&e),
    }
    chat.say("/help lists the commands; a line without / goes to the open conversation".into());
    loop {
        let prompt = chat.prompt();
        let line = match input.read(&prompt) {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                chat.error(&e);
                break;
            }
        };
        if let Flow::Quit = chat.handle_line(&line) {
            break;
        }
    }
    chat.logout();
    chat.first_error.lock().unwrap_or(EXIT_OK)
}

/// Where printed lines go.
trait Sink: Send {
    fn print(&mut self, line: String);
}

struct Stdout;

impl Sink for Stdout {
    fn print(&mut self, line: String) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Prints above rustyline's prompt, also while a line is being edited.
struct Printer<P>(P);

impl<P: rustyline::ExternalPrinter + Send> Sink for Printer<P> {
    fn print(&mut self, mut line: String) {
        line.push('\n');
        if self.0.print(line.clone()).is_err() {
            // The editor is gone (shutting down): plain output still works.
            print!("{line}");
        }
    }
}

type Editor = rustyline::DefaultEditor;

fn editor() -> Option<(Editor, Box<dyn Sink>)> {
    let mut rl = Editor::new().ok()?;
    let printer = rl.create_external_printer().ok()?;
    Some((rl, Box::new(Printer(printer))))
}

enum Input {
    Editor(Box<Editor>),
    Plain(std::io::StdinLock<'static>),
}

impl Input {
    /// The next line; `None` at end of input.
    fn read(&mut self, prompt: &str) -> Result<Option<String>, ClientError> {
        match self {
            Self::Editor(rl) => match rl.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = rl.add_history_entry(line.as_str());
                    }
                    Ok(Some(line))
                }
                // Ctrl-C clears the line; Ctrl-D leaves.
                Err(rustyline::error::ReadlineError::Interrupted) => Ok(Some(String::new())),
                Err(rustyline::error::ReadlineError::Eof) => Ok(None),
                Err(e) => Err(ClientError::Io(std::io::Error::other(e))),
            },
            Self::Plain(stdin) => {
                let mut buf = Vec::new();
                let n = stdin
                    .by_ref()
                    .take(INPUT_LINE_BYTES_MAX as u64 + 1)
                    .read_until(b'\n', &mut buf)?;
                if n == 0 {
                    return Ok(None);
                }
                if buf.len() > INPUT_LINE_BYTES_MAX && buf.last() != Some(&b'\n') {
                    // Skip the rest of the overlong line.
                    let mut rest = Vec::new();
                    stdin.read_until(b'\n', &mut rest)?;
                    return Err(ClientError::Usage(format!(
                        "input line longer than {INPUT_LINE_BYTES_MAX} bytes"
                    )));
                }
                let line = String::from_utf8(buf)
                    .map_err(|_| ClientError::Usage("input line is not UTF-8".into()))?;
                Ok(Some(line.trim_end_matches(['\n', '\r']).to_owned()))
            }
        }
    }
}

enum Flow {
    Continue,
    Quit,
}

/// The chat's shared state (see the module doc for who holds it).
struct Chat {
    sink: Mutex<Box<dyn Sink>>,
    state: Mutex<State>,
    server: String,
    /// The HTTP edge, for `/send-file`.
    http_url: String,
    /// `--tls`: connect over TLS with these settings.
    tls: Option<crate::tls::TlsOptions>,
    timeout_ms: u64,
    /// The development secret to mint tokens for `/login USER`.
    secret: Mutex<Option<String>>,
    audience: Option<String>,
    ttl_secs: u64,
    tty: bool,
    /// Exit code of the first failed command (reported for piped input).
    first_error: Mutex<Option<i32>>,
}

struct State {
    session: Option<Arc<Session>>,
    token: Option<TokenSource>,
    device: String,
    /// Bumped by every login and logout; event threads of older ones stop.
    generation: u64,
    open: Option<Target>,
    autoread: bool,
    /// When "is typing" was last shown, per (conversation, user).
    typing_seen: HashMap<(String, String), Instant>,
    /// The latest call this chat started or was rung for, until it ends:
    /// what `/accept`, `/reject` and `/hangup` act on by default.
    call: Option<String>,
}

impl Chat {
    fn say(&self, line: String) {
        self.sink.lock().print(line);
    }

    fn show(&self, me: &str, item: &Item) {
        if let Some(line) = human::show(me, item) {
            self.say(line);
        }
    }

    fn error(&self, e: &ClientError) {
        if !self.tty {
            self.first_error.lock().get_or_insert(e.exit_code());
        }
        self.say(format!("! {}: {}", e.code_name(), e.reason()));
    }

    fn prompt(&self) -> String {
        let st = self.state.lock();
        match (&st.session, &st.open) {
            (None, _) => "(offline)> ".into(),
            (Some(_), Some(t)) => format!("{}> ", t.label()),
            (Some(_), None) => "tern> ".into(),
        }
    }

    fn session(&self) -> Result<(Arc<Session>, Option<Target>), ClientError> {
        let st = self.state.lock();
        let s = st.session.clone().ok_or(ClientError::NotConnected)?;
        Ok((s, st.open.clone()))
    }

    fn is_current(&self, generation: u64) -> bool {
        self.state.lock().generation == generation
    }

    fn handle_line(self: &Arc<Self>, line: &str) -> Flow {
        let text = line.trim();
        if text.is_empty() {
            return Flow::Continue;
        }
        let result = match text.strip_prefix('/') {
            // `//x` sends the text `/x`.
            Some(rest) if rest.starts_with('/') => self.send_text(rest),
            Some(rest) => match split_words(rest) {
                Ok(words) => match ReplLine::try_parse_from(&words) {
                    Ok(l) => self.command(l.command),
                    Err(e) => {
                        // clap speaks of a program; here the commands are slash ones.
                        let shown = e
                            .render()
                            .to_string()
                            .replace("Usage: ", "Usage: /")
                            .replace("'--help'", "'/help' or '/COMMAND --help'");
                        self.say(shown.trim_end().to_owned());
                        if e.use_stderr() && !self.tty {
                            self.first_error
                                .lock()
                                .get_or_insert(super::error::EXIT_USAGE);
                        }
                        Ok(Flow::Continue)
                    }
                },
                Err(e) => Err(e),
            },
            None => self.send_text(line.trim_end()),
        };
        match result {
            Ok(flow) => flow,
            Err(e) => {
                self.error(&e);
                Flow::Continue
            }
        }
    }

    fn command(self: &Arc<Self>, cmd: ReplCommand) -> Result<Flow, ClientError> {
        match cmd {
            ReplCommand::Quit => return Ok(Flow::Quit),
            ReplCommand::Help => self.help(),
            ReplCommand::Open { target } => self.open(&target)?,
            ReplCommand::Close => {
                self.state.lock().open = None;
            }
            ReplCommand::Autoread { state } => {
                self.state.lock().autoread = state == OnOff::On;
                self.say(format!(
                    "autoread {}",
                    if state == OnOff::On { "on" } else { "off" }
                ));
            }
            ReplCommand::Login {
                user,
                token,
                jwt_secret,
                device,
            } => {
                if jwt_secret.is_some() {
                    *self.secret.lock() = jwt_secret;
                }
                let source = match (token, user) {
                    (Some(t), _) => TokenSource::Fixed(t),
                    (None, Some(user)) => TokenSource::Mint {
                        user,
                        secret: self.secret.lock().clone().ok_or_else(|| {
                            ClientError::Usage(
                                "/login USER needs --jwt-secret S (once; it is remembered)".into(),
                            )
                        })?,
                        audience: self.audience.clone(),
                        ttl_secs: self.ttl_secs,
                    },
                    (None, None) => {
                        return Err(ClientError::Usage(
                            "/login USER [--jwt-secret S] or /login --token T".into(),
                        ));
                    }
                };
                let device = device.unwrap_or_else(|| self.state.lock().device.clone());
                self.login(source, device)?;
            }
            ReplCommand::Shared(c) => {
                let (session, open) = self.session()?;
                let call = self.state.lock().call.clone();
                let items = exec::run(
                    &Context {
                        session: &session,
                        open: open.as_ref(),
                        call: call.as_deref(),
                    },
                    &c,
                )?;
                for item in &items {
                    if let Item::Ok { op: "call", ok } = item {
                        self.state.lock().call = Some(ok.id.clone());
                    }
                }
                if items.is_empty() {
                    self.say("(none)".into());
                }
                for item in &items {
                    self.show(session.me(), item);
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn help(&self) {
        let mut cmd = ReplLine::command();
        let list = cmd.render_help().to_string();
        self.say(format!(
            "Plain text goes to the open conversation (@user mentions, @all, :smile: and other \
             shortcodes; //text sends /text).\nCommands (/COMMAND --help for details):\n{}",
            list.trim_end()
        ));
    }

    /// Logs in (closing any current session), lists the conversations with
    /// their unread counts, and starts the event thread.
    fn login(self: &Arc<Self>, source: TokenSource, device: String) -> Result<(), ClientError> {
        self.logout();
        let mut opts = ConnectOptions::new(self.server.clone(), source.token()?, device.clone());
        opts.request_timeout_ms = self.timeout_ms;
        opts.http_url = self.http_url.clone();
        opts.tls = self.tls.clone();
        if !self.tty {
            // Lines piped in are a script: no online/offline for friends.
            opts.capabilities.push(PRESENCE_QUIET.to_owned());
        }
        let session = Arc::new(Session::connect(opts)?);
        let generation = {
            let mut st = self.state.lock();
            st.generation += 1;
            st.session = Some(session.clone());
            st.token = Some(source);
            st.device = device;
            st.open = None;
            st.generation
        };
        self.show(session.me(), &Item::Ready(session.welcome().clone()));
        if let Err(e) = self.list_conversations(&session) {
            self.error(&e);
        }
        let chat = self.clone();
        let spawned = std::thread::Builder::new()
            .name("tern-cli-events".into())
            .spawn(move || chat.pump(session, generation));
        if let Err(e) = spawned {
            self.logout();
            return Err(ClientError::Io(e));
        }
        Ok(())
    }

    /// Closes the current session; its event thread stops.
    fn logout(&self) {
        let old = {
            let mut st = self.state.lock();
            st.generation += 1;
            st.open = None;
            st.session.take()
        };
        if let Some(s) = old {
            s.close();
        }
    }

    fn list_conversations(&self, session: &Session) -> Result<(), ClientError> {
        let r = super::session::expect_body!(
            session.request(Body::Conversations(pb::ConversationListRequest {
                limit: LOGIN_CONVERSATIONS_MAX,
                offset: 0,
            })),
            ConversationsResult
        )?;
        if r.conversations.is_empty() {
            self.say("no conversations yet: /open USER or /group create NAME".into());
            return Ok(());
        }
        let unread: u64 = r.conversations.iter().map(|c| c.unread).sum();
        self.say(format!("conversations ({unread} unread):"));
        for c in r.conversations {
            // Start each at its head: what came before is /history's.
            session.adopt(&c.conversation_id, c.last.as_ref().map_or(0, |e| e.seq));
            self.show(session.me(), &Item::Conv(c));
        }
        if r.more {
            self.say("  … more with /convs --offset 20".into());
        }
        Ok(())
    }

    fn open(&self, spec: &str) -> Result<(), ClientError> {
        let (session, _) = self.session()?;
        let me = session.me().to_owned();
        let target = exec::resolve(&session, spec)?;
        let conv = target.conversation(&me)?;
        let items = exec::history(&session, &conv, 0, OPEN_HISTORY_ENTRIES)?;
        self.say(format!("── {} ──", target.label()));
        let (mut head, mut my_read, mut last_other) = (0, 0, 0);
        for item in &items {
            match item {
                Item::Entry(e) => {
                    head = e.seq;
                    match &e.body {
                        Some(pb::entry::Body::Read(r)) if e.sender == me => {
                            my_read = my_read.max(r.up_to_seq)
                        }
                        Some(pb::entry::Body::Message(_)) if e.sender != me => last_other = e.seq,
                        _ => {}
                    }
                    self.show(&me, item);
                }
                Item::More { value, .. } => {
                    self.say(format!("   (older: /history --before {value})"))
                }
                other => self.show(&me, other),
            }
        }
        if head == 0 {
            self.say("   (no messages yet)".into());
        }
        session.adopt(&conv, head);
        {
            let mut st = self.state.lock();
            st.open = Some(target);
        }
        if last_other > my_read {
            session.request(Body::Read(pb::ReadRequest {
                conversation_id: conv,
                up_to_seq: last_other,
            }))?;
        }
        Ok(())
    }

    fn send_text(&self, text: &str) -> Result<Flow, ClientError> {
        let (session, open) = self.session()?;
        let target = open.ok_or_else(|| {
            ClientError::Usage("no conversation is open: /open USER or /open #GROUP".into())
        })?;
        let args = SendArgs {
            to: ToArgs::default(),
            mentions: Vec::new(),
            mention_all: false,
            reply_to: None,
            client_msg_id: None,
            text: vec![expand_shortcodes(text)],
        };
        let msg = exec::text_message(&target, &args)?;
        let ack = session.send(msg.clone())?;
        // Show the message as the log now holds it.
        let entry = pb::Entry {
            conversation_id: ack.conversation_id.clone(),
            seq: ack.seq,
            sender: session.me().to_owned(),
            sender_device: session.device().to_owned(),
            client_msg_id: ack.client_msg_id.clone(),
            time_ms: ack.server_time_ms,
            body: Some(pb::entry::Body::Message(pb::Message {
                content: msg.content,
                mentions: msg.mentions,
                mention_all: msg.mention_all,
                reply_to_seq: msg.reply_to_seq,
                recalled: false,
                edit_count: 0,
                edited_at_ms: 0,
                reactions: vec![],
                streaming: false,
                thread_root_seq: 0,
                thread: None,
            })),
        };
        if let Some(line) = human::entry(session.me(), &entry) {
            self.say(format!("{line}  ✓"));
        }
        Ok(Flow::Continue)
    }

    /// The event thread: shows pushes until the login changes; reconnects
    /// when the connection is lost.
    fn pump(self: Arc<Self>, mut session: Arc<Session>, mut generation: u64) {
        loop {
            if !self.is_current(generation) {
                return;
            }
            match session.next_pushed(Duration::from_millis(PUMP_POLL_MS)) {
                Ok(None) => {}
                Ok(Some(Pushed::Closed(c))) => {
                    if !self.is_current(generation) {
                        return;
                    }
                    self.say(format!("! {}", c.describe()));
                    match self.reconnect(&session, &c, generation) {
                        Some((s, g)) => (session, generation) = (s, g),
                        None => return,
                    }
                }
                Ok(Some(p)) => self.show_pushed(&session, p),
                Err(e) => self.error(&e),
            }
        }
    }

    fn show_pushed(&self, session: &Session, p: Pushed) {
        let me = session.me();
        match p {
            Pushed::Entries(entries) => self.show_entries(session, &entries),
            Pushed::Typing(t) => {
                if t.user_id == me {
                    return;
                }
                let key = (t.conversation_id.clone(), t.user_id.clone());
                let show = {
                    let mut st = self.state.lock();
                    if t.typing {
                        let recent = st.typing_seen.get(&key).is_some_and(|at| {
                            at.elapsed() < Duration::from_millis(TYPING_SHOWN_MS)
                        });
                        st.typing_seen.insert(key, Instant::now());
                        !recent
                    } else {
                        st.typing_seen.remove(&key).is_some()
                    }
                };
                if show {
                    self.show(me, &Item::Typing(t));
                }
            }
            Pushed::Call(c) => {
                {
                    let mut st = self.state.lock();
                    let kind = pb::CallEventKind::try_from(c.kind).unwrap_or_default();
                    if kind == pb::CallEventKind::Ringing {
                        st.call = Some(c.call_id.clone());
                    } else if kind == pb::CallEventKind::Ended
                        && st.call.as_deref() == Some(c.call_id.as_str())
                    {
                        st.call = None;
                    }
                }
                self.show(me, &Item::Call(c));
            }
            Pushed::CallSignal(c) => self.show(me, &Item::CallSignal(c)),
            Pushed::Presence(p) => self.show(me, &Item::Presence(p)),
            Pushed::Event(e) => self.show(me, &Item::Event(e)),
            Pushed::RoomClosed(r) => self.show(me, &Item::RoomClosed(r)),
            Pushed::Error(e) => self.show(me, &Item::PushError(e)),
            Pushed::Other(f) => self.say(format!(
                "(a push this client does not know: {})",
                super::conn::body_name(f.body.as_ref())
            )),
            Pushed::Closed(c) => self.say(format!("! {}", c.describe())),
        }
    }

    fn show_entries(&self, session: &Session, entries: &[pb::Entry]) {
        let me = session.me();
        let (open_conv, autoread) = {
            let st = self.state.lock();
            (
                st.open.as_ref().and_then(|t| t.conversation(me).ok()),
                st.autoread,
            )
        };
        let mut read_up_to = 0;
        for e in entries {
            if let Some(line) = human::entry(me, e) {
                self.say(line);
            }
            if e.sender != me && matches!(e.body, Some(pb::entry::Body::Message(_))) {
                // A message ends its sender's typing.
                self.state
                    .lock()
                    .typing_seen
                    .remove(&(e.conversation_id.clone(), e.sender.clone()));
                if open_conv.as_deref() == Some(e.conversation_id.as_str()) {
                    read_up_to = read_up_to.max(e.seq);
                }
            }
        }
        if autoread
            && read_up_to > 0
            && let Some(conv) = open_conv
        {
            let r = session.request(Body::Read(pb::ReadRequest {
                conversation_id: conv,
                up_to_seq: read_up_to,
            }));
            if let Err(e) = r {
                self.error(&e);
            }
        }
    }

    /// Reconnects with backoff and the old session's cursors, then syncs
    /// what was missed. `None`: gave up, or the login changed meanwhile.
    fn reconnect(
        &self,
        old: &Session,
        closed: &Closed,
        generation: u64,
    ) -> Option<(Arc<Session>, u64)> {
        if !closed.may_reconnect() {
            self.drop_session(generation, "not reconnecting; /login to log in again");
            return None;
        }
        let source = self.state.lock().token.clone()?;
        let cursors = old.cursors();
        // A draining node's clients move on: the next server of the list.
        let order = super::conn::reconnect_order(&old.options().server, old.server(), closed);
        let servers: Vec<&str> = super::conn::server_list(&order).collect();
        for attempt in 0..RECONNECT_ATTEMPTS_MAX {
            let base = (RECONNECT_BACKOFF_MS_BASE << attempt).min(RECONNECT_BACKOFF_MS_MAX);
            let delay = closed.retry_after_ms() + rand::rng().random_range(0..=base);
            self.say(format!(
                "reconnecting in {:.1} s (attempt {}/{RECONNECT_ATTEMPTS_MAX})",
                delay as f64 / 1000.0,
                attempt + 1
            ));
            if !self.sleep_while_current(generation, delay) {
                return None;
            }
            let mut opts = old.options().clone();
            // Each attempt starts one entry further along the list (and
            // falls through the rest of it when its first is down).
            let first = attempt as usize % servers.len().max(1);
            opts.server = servers[first..]
                .iter()
                .chain(&servers[..first])
                .copied()
                .collect::<Vec<_>>()
                .join(",");
            match source.token() {
                Ok(t) => opts.token = t,
                Err(e) => {
                    self.error(&e);
                    break;
                }
            }
            match Session::resume(opts, cursors.clone()) {
                Ok(s) => {
                    let s = Arc::new(s);
                    let new_generation = {
                        let mut st = self.state.lock();
                        if st.generation != generation {
                            s.close();
                            return None;
                        }
                        st.generation += 1;
                        st.session = Some(s.clone());
                        st.generation
                    };
                    self.say(format!("reconnected to {}", s.server()));
                    match s.sync_all(0) {
                        Ok(out) => self.show_entries(&s, &out.entries),
                        Err(e) => self.error(&e),
                    }
                    return Some((s, new_generation));
                }
                Err(e) => {
                    self.error(&e);
                    let fatal = matches!(
                        e.server_code(),
                        Some(
                            pb::ErrorCode::AuthFailed
                                | pb::ErrorCode::TokenExpired
                                | pb::ErrorCode::UnsupportedVersion
                        )
                    );
                    if fatal {
                        break;
                    }
                }
            }
        }
        self.drop_session(generation, "gave up reconnecting; /login to try again");
        None
    }

    fn drop_session(&self, generation: u64, why: &str) {
        let mut st = self.state.lock();
        if st.generation == generation {
            st.session = None;
            drop(st);
            self.say(why.into());
        }
    }

    /// Sleeps `ms` unless the login changes first; false if it changed.
    fn sleep_while_current(&self, generation: u64, ms: u64) -> bool {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            if !self.is_current(generation) {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            // The event thread of a cli, waiting out a reconnect backoff.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        self.is_current(generation)
    }
}

/// Splits a command line into words: whitespace separates, `"…"` and `'…'`
/// group, a backslash outside single quotes takes the next character as is.
pub fn split_words(line: &str) -> Result<Vec<String>, ClientError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                cur.push(
                    chars
                        .next()
                        .ok_or_else(|| ClientError::Usage("a trailing backslash".into()))?,
                );
                in_word = true;
            }
            '"' | '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => {
                            cur.push(
                                chars.next().ok_or_else(|| {
                                    ClientError::Usage("unterminated quote".into())
                                })?,
                            );
                        }
                        Some(x) => cur.push(x),
                        None => return Err(ClientError::Usage("unterminated quote".into())),
                    }
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Shortcodes the chat turns into emoji (a terminal's own emoji input works
/// too: emoji are text).
const SHORTCODES: &[(&str, &str)] = &[
    (":smile:", "😄"),
    (":grin:", "😁"),
    (":joy:", "😂"),
    (":wink:", "😉"),
    (":heart:", "❤️"),
    (":+1:", "👍"),
    (":thumbsup:", "👍"),
    (":-1:", "👎"),
    (":clap:", "👏"),
    (":tada:", "🎉"),
    (":fire:", "🔥"),
    (":rocket:", "🚀"),
    (":eyes:", "👀"),
    (":thinking:", "🤔"),
    (":cry:", "😢"),
    (":sob:", "😭"),
    (":wave:", "👋"),
    (":ok:", "👌"),
    (":pray:", "🙏"),
    (":100:", "💯"),
    (":coffee:", "☕"),
    (":sunglasses:", "😎"),
];

/// Replaces the shortcodes (`:smile:`, `:+1:`, …) in `text`.
pub fn expand_shortcodes(text: &str) -> String {
    if !text.contains(':') {
        return text.to_owned();
    }
    SHORTCODES
        .iter()
        .fold(text.to_owned(), |t, (code, emoji)| t.replace(code, emoji))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        // Proves quotes group, backslashes escape, and bad quoting is a
        // usage error rather than a guess.
        assert_eq!(
            split_words(r#"group create "Team chat" -m bob,carol it\'s 'a "b"'"#).unwrap(),
            [
                "group",
                "create",
                "Team chat",
                "-m",
                "bob,carol",
                "it's",
                "a \"b\""
            ]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words(r#"x """#).unwrap(), ["x", ""]);
        assert!(matches!(split_words("\"open"), Err(ClientError::Usage(_))));
        assert!(matches!(split_words("x\\"), Err(ClientError::Usage(_))));
    }

    #[test]
    fn shortcodes_become_emoji() {
        // Proves shortcodes expand and other colons stay.
        assert_eq!(
            expand_shortcodes("ship it :rocket: at 10:30 :+1:"),
            "ship it 🚀 at 10:30 👍"
        );
        assert_eq!(expand_shortcodes("plain"), "plain");
    }
}
