//! One bot's life: a protocol loop on its own thread (a
//! [`Session`](crate::cli::session::Session): login, pushes, acks, sync,
//! reconnects) that picks the questions to answer, and one reply thread per
//! question being answered, which fetches the context, calls the API off the
//! protocol loop and streams the answer into one message.
//!
//! The protocol loop decides, in this order, for each new text message:
//! whether it is a question for this bot (a 1:1 message, or a group message
//! whose `mentions` name the bot), whether its conversation is already
//! being answered (`busy`: queue it, or refuse), whether too many replies
//! are in flight, and whether the rate limits and the budget admit it
//! (else a polite refusal, at most one per user and reason per minute, so
//! refusals cannot be used to make the bot talk).
//!
//! A reply thread always ends with a visible message (the answer, or a short
//! error) and with `typing = false`, whatever happened: the typing guard
//! stops it on every path, panics included.

use std::{
    collections::{HashMap, VecDeque},
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex, RwLock};
use tern_protocol::{
    ids::ConversationId,
    pb::{self, frame::Body},
};

use super::{
    config::{BotConfig, BotsFile, Busy},
    context,
    limits::{self, Limits, Refusal},
    llm::{ChatRequest, Completion, LlmClient, LlmError, StreamOptions},
};
use crate::cli::{
    ClientError,
    conn::ConnectOptions,
    cursors::Cursors,
    session::{Pushed, Session, expect_body},
};

/// How long the protocol loop waits for a push before it looks at finished
/// replies again, in milliseconds.
const LOOP_WAIT_MS: u64 = 100;
/// `typing = true` is repeated this often while a reply is written (the
/// server expires it after about 6 s), in milliseconds.
const TYPING_RENEW_MS: u64 = 3_000;
/// First wait before a reconnect, doubled up to [`RECONNECT_WAIT_MS_MAX`].
const RECONNECT_WAIT_MS_MIN: u64 = 200;
/// Longest wait between two reconnect attempts, in milliseconds.
const RECONNECT_WAIT_MS_MAX: u64 = 30_000;
/// Edits of one reply at most before the final one (the server allows
/// 1,000 per message by default): past it, the text grows unseen until
/// the final edit.
const EDITS_PER_REPLY_MAX: u32 = 500;
/// Bytes kept free below `text_bytes_max` for an error note at the end.
const NOTE_BYTES_RESERVED: usize = 256;
/// Attempts of the final edit (same `client_edit_id`) on retryable errors.
const FINAL_EDIT_ATTEMPTS_MAX: u32 = 3;
/// Users (and reasons) whose last refusal notice is remembered, at most.
const NOTICES_TRACKED_MAX: usize = 10_000;

/// What the bot says instead of an answer. Short, polite, and never the
/// API's own error text (that goes to the log).
pub mod say {
    /// The API answered 429.
    pub const API_RATE_LIMITED: &str =
        "⚠ Sorry, the model is busy right now (rate limited). Please try again in a minute.";
    /// The API answered 5xx.
    pub const API_FAILED: &str = "⚠ Sorry, the model failed to answer. Please try again later.";
    /// The API refused the request (a configuration problem).
    pub const API_REFUSED: &str = "⚠ Sorry, I cannot reach my model right now.";
    /// No answer within the timeouts.
    pub const API_TIMEOUT: &str = "⚠ Sorry, the model did not answer in time.";
    /// The stream broke off after some text.
    pub const BROKE_OFF: &str = "⚠ (the answer broke off: the model's stream ended early)";
    /// The answer reached the message size limit.
    pub const CUT: &str = "… (cut: the answer is longer than a message may be)";
    /// The model returned nothing.
    pub const EMPTY: &str = "⚠ Sorry, the model returned an empty answer.";
    /// A question while one streams, with `busy = "refuse"` (or a full queue).
    pub const BUSY: &str =
        "⏳ I'm still answering the previous question here; please ask again when I'm done.";
    /// Too many replies in flight.
    pub const OVERLOADED: &str =
        "⏳ I'm answering too many questions at once; please ask again in a moment.";
    /// The daily budget is spent.
    pub const BUDGET: &str = "⛔ I've used up today's budget; I'll answer again tomorrow (UTC).";
}

/// The refusal text of a rate limit.
fn say_rate(retry_after_ms: u64) -> String {
    format!(
        "⏳ You're asking faster than I can answer; please wait {} s.",
        retry_after_ms.div_ceil(1000).max(1)
    )
}

/// Runs every bot of `file` until `stop` is set (or forever), each on its
/// own thread; returns when all have ended.
pub fn run(file: &BotsFile, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let target = file.api_target();
    let llm = Arc::new(LlmClient::new(&target)?);
    let mut threads = Vec::new();
    for cfg in &file.bots {
        cfg.token_source()?; // a missing variable or file fails the start
        let bot = BotLoop::new(file, cfg.clone(), llm.clone(), stop.clone());
        let name = format!("bot-{}", cfg.user);
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || bot.run())?,
        );
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// The current session of a bot, replaced on reconnect; reply threads take
/// it afresh for every request.
#[derive(Debug, Default)]
struct SessionSlot(RwLock<Option<Arc<Session>>>);

impl SessionSlot {
    fn get(&self) -> Result<Arc<Session>, ClientError> {
        self.0
            .read()
            .clone()
            .ok_or_else(|| ClientError::Closed("not connected".into()))
    }
    fn set(&self, s: Option<Arc<Session>>) {
        *self.0.write() = s;
    }
}

/// A question taken for an answer.
#[derive(Debug, Clone)]
struct Question {
    entry: pb::Entry,
    /// Where the answer goes.
    to: pb::send::To,
    group: bool,
}

#[derive(Debug, Default)]
struct ConvState {
    answering: bool,
    queue: VecDeque<Question>,
}

/// What every reply thread of one bot shares.
#[derive(Debug)]
struct Shared {
    cfg: BotConfig,
    model: String,
    llm: Arc<LlmClient>,
    slot: SessionSlot,
    limits: Mutex<Limits>,
}

struct BotLoop {
    shared: Arc<Shared>,
    opts: ConnectOptions,
    stop: Arc<AtomicBool>,
    convs: HashMap<String, ConvState>,
    in_flight: usize,
    done_tx: mpsc::Sender<String>,
    done_rx: mpsc::Receiver<String>,
    notices: HashMap<String, u64>,
    /// Questions older than this (ms since the epoch, the server's clock at
    /// the first login) are backlog from before the start: not answered.
    started_ms: u64,
}

impl BotLoop {
    fn new(file: &BotsFile, cfg: BotConfig, llm: Arc<LlmClient>, stop: Arc<AtomicBool>) -> Self {
        let mut opts = ConnectOptions::new(file.server.clone(), String::new(), cfg.device.clone());
        opts.tls = file.tls_options();
        opts.platform = pb::Platform::Bot;
        let (done_tx, done_rx) = mpsc::channel();
        Self {
            shared: Arc::new(Shared {
                model: file.model_of(&cfg),
                limits: Mutex::new(Limits::new(
                    cfg.user_questions_per_minute,
                    cfg.bot_questions_per_minute,
                    cfg.daily_tokens_max,
                )),
                cfg,
                llm,
                slot: SessionSlot::default(),
            }),
            opts,
            stop,
            convs: HashMap::new(),
            in_flight: 0,
            done_tx,
            done_rx,
            notices: HashMap::new(),
            started_ms: now_ms(),
        }
    }

    fn user(&self) -> &str {
        &self.shared.cfg.user
    }

    fn run(mut self) {
        let mut cursors = Cursors::new();
        let mut first = true;
        let mut wait_ms = RECONNECT_WAIT_MS_MIN;
        while !self.stop.load(Ordering::Relaxed) {
            let session = match self.connect(cursors.clone()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tern-bot {}: cannot log in: {e}", self.user());
                    if matches!(e.server_code(), Some(pb::ErrorCode::AuthFailed)) {
                        return;
                    }
                    pause(&self.stop, wait_ms);
                    wait_ms = (wait_ms * 2).min(RECONNECT_WAIT_MS_MAX);
                    continue;
                }
            };
            wait_ms = RECONNECT_WAIT_MS_MIN;
            if first {
                // The server's clock, which stamps the entries compared to it.
                self.started_ms = session.welcome().server_time_ms;
            }
            eprintln!(
                "tern-bot {}: logged in to {}",
                self.user(),
                session.server()
            );
            self.shared.slot.set(Some(session.clone()));
            // What arrived while this bot was away: answered if it came
            // after the start (a reconnect), never the backlog from before.
            match session.sync_all(0) {
                Ok(out) => {
                    for e in out.entries {
                        self.consider(e);
                    }
                }
                Err(e) => eprintln!("tern-bot {}: sync: {e}", self.user()),
            }
            first = false;
            let closed = self.serve(&session);
            cursors = session.cursors();
            self.shared.slot.set(None);
            session.close();
            match closed {
                Some(c) if !c.may_reconnect() => {
                    eprintln!(
                        "tern-bot {}: {}; not reconnecting",
                        self.user(),
                        c.describe()
                    );
                    return;
                }
                Some(c) => {
                    eprintln!("tern-bot {}: {}; reconnecting", self.user(), c.describe());
                    pause(&self.stop, c.retry_after_ms().max(RECONNECT_WAIT_MS_MIN));
                }
                None => {}
            }
        }
    }

    fn connect(&self, cursors: Cursors) -> Result<Arc<Session>, ClientError> {
        let mut opts = self.opts.clone();
        opts.token = self
            .shared
            .cfg
            .token_source()
            .map_err(|e| ClientError::Usage(format!("{e:#}")))?
            .token()?;
        Ok(Arc::new(Session::resume(opts, cursors)?))
    }

    /// The protocol loop of one connection; `Some` when it closed.
    fn serve(&mut self, session: &Session) -> Option<crate::cli::conn::Closed> {
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(conv) = self.done_rx.try_recv() {
                self.finished(&conv);
            }
            match session.next_pushed(Duration::from_millis(LOOP_WAIT_MS)) {
                Ok(Some(Pushed::Entries(es))) => {
                    for e in es {
                        self.consider(e);
                    }
                }
                Ok(Some(Pushed::Closed(c))) => return Some(c),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("tern-bot {}: {e}", self.user());
                    if session.is_closed() {
                        // The close event follows; the next turn takes it.
                        continue;
                    }
                }
            }
        }
        None
    }

    /// Decides what to do with one new entry.
    fn consider(&mut self, e: pb::Entry) {
        let me = self.user().to_owned();
        if e.sender == me || e.time_ms < self.started_ms {
            return;
        }
        let Some(pb::entry::Body::Message(m)) = &e.body else {
            return;
        };
        if context::entry_text(&e).is_none() {
            return;
        }
        let Ok(conv) = ConversationId::parse(&e.conversation_id) else {
            return;
        };
        let (to, group) = match (&conv, conv.group_id()) {
            (_, Some(g)) => {
                if !self.shared.cfg.answer_mentions || !m.mentions.contains(&me) {
                    return;
                }
                (pb::send::To::GroupId(g.to_owned()), true)
            }
            (c, None) => {
                if !self.shared.cfg.answer_direct {
                    return;
                }
                let Some(peer) = c.peer_of(&me) else { return };
                (pb::send::To::UserId(peer.to_owned()), false)
            }
        };
        let q = Question {
            entry: e,
            to,
            group,
        };
        let (busy, queue_max, in_flight_max) = {
            let cfg = &self.shared.cfg;
            (cfg.busy, cfg.queue_max, cfg.replies_in_flight_max)
        };
        let (answering, queued) = self
            .convs
            .get(&q.entry.conversation_id)
            .map_or((false, 0), |s| (s.answering, s.queue.len()));
        if answering {
            if busy == Busy::Queue && queued < queue_max {
                if let Err(r) = self.admit(&q) {
                    self.refuse(&q, r);
                    return;
                }
                self.convs
                    .entry(q.entry.conversation_id.clone())
                    .or_default()
                    .queue
                    .push_back(q);
            } else {
                self.notice(&q, "busy", say::BUSY.to_owned());
            }
            return;
        }
        if self.in_flight >= in_flight_max {
            self.notice(&q, "overloaded", say::OVERLOADED.to_owned());
            return;
        }
        if let Err(r) = self.admit(&q) {
            self.refuse(&q, r);
            return;
        }
        self.start(q);
    }

    fn admit(&self, q: &Question) -> Result<(), Refusal> {
        self.shared.limits.lock().admit(&q.entry.sender, now_ms())
    }

    fn refuse(&mut self, q: &Question, r: Refusal) {
        let (kind, text) = match r {
            Refusal::User { retry_after_ms } => ("user-rate", say_rate(retry_after_ms)),
            Refusal::Bot { retry_after_ms } => ("bot-rate", say_rate(retry_after_ms)),
            Refusal::Budget => ("budget", say::BUDGET.to_owned()),
        };
        self.notice(q, kind, text);
    }

    /// Sends a refusal, unless this user got one for the same reason within
    /// the last minute (so refusals cannot make the bot talk at will).
    fn notice(&mut self, q: &Question, kind: &str, text: String) {
        let now = now_ms();
        let key = format!("{kind}/{}", q.entry.sender);
        if self
            .notices
            .get(&key)
            .is_some_and(|t| now.saturating_sub(*t) < limits::WINDOW_MS)
        {
            return;
        }
        if self.notices.len() >= NOTICES_TRACKED_MAX {
            self.notices
                .retain(|_, t| now.saturating_sub(*t) < limits::WINDOW_MS);
            if self.notices.len() >= NOTICES_TRACKED_MAX {
                self.notices.clear();
            }
        }
        self.notices.insert(key, now);
        eprintln!(
            "tern-bot {}: refused a question of {} in {} ({kind})",
            self.user(),
            q.entry.sender,
            q.entry.conversation_id
        );
        // Off the protocol loop: a send may wait for its answer.
        let shared = self.shared.clone();
        let q = q.clone();
        std::thread::spawn(move || {
            if let Err(e) = shared.send_whole(&q, text) {
                eprintln!("tern-bot {}: sending a refusal: {e}", shared.cfg.user);
            }
        });
    }

    fn start(&mut self, q: Question) {
        let conv = q.entry.conversation_id.clone();
        let conv_of_thread = conv.clone();
        self.convs.entry(conv.clone()).or_default().answering = true;
        self.in_flight += 1;
        let shared = self.shared.clone();
        let done = self.done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("reply-{}", self.user()))
            .spawn(move || {
                // Reported done on every path, a panic of the reply included.
                struct Done(mpsc::Sender<String>, String);
                impl Drop for Done {
                    fn drop(&mut self) {
                        let _ = self.0.send(std::mem::take(&mut self.1));
                    }
                }
                let _done = Done(done, conv_of_thread);
                shared.reply(&q);
            });
        if let Err(e) = spawned {
            eprintln!("tern-bot {}: cannot start a reply thread: {e}", self.user());
            self.finished(&conv);
        }
    }

    /// A reply in `conv` ended: the next queued question there starts.
    fn finished(&mut self, conv: &str) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let next = match self.convs.get_mut(conv) {
            Some(s) => {
                s.answering = false;
                s.queue.pop_front()
            }
            None => None,
        };
        match next {
            Some(q) => self.start(q),
            None => {
                self.convs.remove(conv);
            }
        }
    }
}

impl Shared {
    /// Answers one question: typing, context, the API call streamed into
    /// one message, the final text or a short error, tokens counted.
    fn reply(&self, q: &Question) {
        let conv = &q.entry.conversation_id;
        let _typing = Typing::start(self, conv);
        let history = self.history(q);
        let me = &self.cfg.user;
        let messages = context::build(
            &self.cfg.system_prompt,
            &history,
            &q.entry,
            me,
            q.group,
            self.cfg.context_tokens_max,
        );
        let prompt_chars: String = messages.iter().map(|m| m.content.as_str()).collect();
        let req = ChatRequest {
            model: &self.model,
            messages: &messages,
            max_tokens: self.cfg.reply_tokens_max,
            temperature: self.cfg.temperature,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
        };
        let text_max = self
            .slot
            .get()
            .ok()
            .and_then(|s| {
                s.welcome()
                    .limits
                    .as_ref()
                    .map(|l| l.text_bytes_max as usize)
            })
            .unwrap_or(16_384)
            .saturating_sub(NOTE_BYTES_RESERVED)
            .max(64);
        let mut stream = Streamer::new(self, q);
        let mut text = String::new();
        let result = self.llm.stream(&req, |piece| {
            if text.len() + piece.len() > text_max {
                let room = text_max.saturating_sub(text.len());
                let cut = floor_char_boundary(piece, room);
                text.push_str(&piece[..cut]);
                return ControlFlow::Break(());
            }
            text.push_str(piece);
            stream.grow(&text);
            ControlFlow::Continue(())
        });
        let (final_text, usage) = match result {
            Ok(Completion { cut, usage, .. }) => {
                let t = if text.trim().is_empty() {
                    say::EMPTY.to_owned()
                } else if cut {
                    format!("{text}{}", say::CUT)
                } else {
                    text.clone()
                };
                (t, usage)
            }
            Err(e) => {
                eprintln!("tern-bot {me}: answering in {conv}: {e}");
                let note = match &e {
                    LlmError::RateLimited => say::API_RATE_LIMITED,
                    LlmError::Server(_) => say::API_FAILED,
                    LlmError::Refused { .. } | LlmError::Connect(_) => say::API_REFUSED,
                    LlmError::Timeout => say::API_TIMEOUT,
                    LlmError::Broken { .. } => say::BROKE_OFF,
                };
                let t = if text.trim().is_empty() {
                    note.to_owned()
                } else {
                    format!("{text}\n\n{note}")
                };
                (t, None)
            }
        };
        // Counted before the final text shows, so a question that follows
        // it is measured against the budget this reply left.
        let tokens = usage.map_or_else(
            || limits::estimate_tokens(&prompt_chars) + limits::estimate_tokens(&text),
            |u| u.total(),
        );
        self.limits.lock().spend(tokens, now_ms());
        stream.finish(final_text);
    }

    /// The conversation up to the question (one page), or nothing if the
    /// request fails (the question is then answered without context).
    fn history(&self, q: &Question) -> Vec<pb::Entry> {
        let req = Body::History(pb::HistoryRequest {
            conversation_id: q.entry.conversation_id.clone(),
            before_seq: q.entry.seq + 1,
            limit: self.cfg.history_entries_max,
            thread_root_seq: 0,
        });
        match self
            .slot
            .get()
            .and_then(|s| expect_body!(s.request(req), HistoryResult))
        {
            Ok(h) => h.entries,
            Err(e) => {
                eprintln!("tern-bot {}: history: {e}", self.cfg.user);
                Vec::new()
            }
        }
    }

    /// Sends `text` as one whole message answering `q`.
    fn send_whole(&self, q: &Question, text: String) -> Result<u64, ClientError> {
        self.send(q, text, false)
    }

    fn send(&self, q: &Question, text: String, streaming: bool) -> Result<u64, ClientError> {
        let msg = pb::Send {
            client_msg_id: new_id("bot"),
            to: Some(q.to.clone()),
            content: Some(text_content(text)),
            reply_to_seq: q.entry.seq,
            streaming,
            ..Default::default()
        };
        Ok(self.slot.get()?.send(msg)?.seq)
    }

    fn edit(
        &self,
        conv: &str,
        seq: u64,
        id: &str,
        text: &str,
        streaming: bool,
    ) -> Result<(), ClientError> {
        let req = Body::Edit(pb::EditRequest {
            conversation_id: conv.to_owned(),
            seq,
            client_edit_id: id.to_owned(),
            content: Some(text_content(text.to_owned())),
            streaming,
        });
        expect_body!(self.slot.get()?.request(req), Ok).map(|_| ())
    }
}

/// The message a reply streams into: sent with the first text, edited at
/// most `edits_per_second`, finished by one last edit.
struct Streamer<'a> {
    shared: &'a Shared,
    q: &'a Question,
    /// The message's seq once sent.
    seq: Option<u64>,
    /// Sending it failed: the reply goes out whole at the end.
    failed: bool,
    interval: Option<Duration>,
    last: Instant,
    edits: u32,
    shown: usize,
}

impl<'a> Streamer<'a> {
    fn new(shared: &'a Shared, q: &'a Question) -> Self {
        let eps = shared.cfg.edits_per_second;
        Self {
            shared,
            q,
            seq: None,
            failed: false,
            interval: (eps > 0.0).then(|| Duration::from_secs_f64(1.0 / eps)),
            last: Instant::now(),
            edits: 0,
            shown: 0,
        }
    }

    /// The text so far: shown if the edit rate allows.
    fn grow(&mut self, text: &str) {
        let Some(interval) = self.interval else {
            return;
        };
        if self.failed || text.len() == self.shown {
            return;
        }
        let Some(seq) = self.seq else {
            match self.shared.send(self.q, text.to_owned(), true) {
                Ok(seq) => {
                    self.seq = Some(seq);
                    self.shown = text.len();
                    self.last = Instant::now();
                }
                Err(e) => {
                    eprintln!("tern-bot {}: streaming send: {e}", self.shared.cfg.user);
                    self.failed = true;
                }
            }
            return;
        };
        if self.last.elapsed() < interval || self.edits >= EDITS_PER_REPLY_MAX {
            return;
        }
        self.last = Instant::now();
        self.edits += 1;
        let id = new_id("edit");
        match self
            .shared
            .edit(&self.q.entry.conversation_id, seq, &id, text, true)
        {
            Ok(()) => self.shown = text.len(),
            // The next edit carries the whole text again.
            Err(e) => eprintln!("tern-bot {}: edit: {e}", self.shared.cfg.user),
        }
    }

    /// The final text: the last edit (clearing `streaming`), or the whole
    /// message when nothing was sent yet.
    fn finish(self, text: String) {
        let user = &self.shared.cfg.user;
        let Some(seq) = self.seq else {
            if let Err(e) = self.shared.send_whole(self.q, text) {
                eprintln!("tern-bot {user}: sending the reply: {e}");
            }
            return;
        };
        let id = new_id("edit");
        for attempt in 1..=FINAL_EDIT_ATTEMPTS_MAX {
            match self
                .shared
                .edit(&self.q.entry.conversation_id, seq, &id, &text, false)
            {
                Ok(()) => return,
                Err(e) if attempt < FINAL_EDIT_ATTEMPTS_MAX && retryable(&e) => {
                    let wait = match &e {
                        ClientError::Server { retry_after_ms, .. } => u64::from(*retry_after_ms),
                        _ => 0,
                    };
                    // A reply thread, waiting on purpose before a retry.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(Duration::from_millis(wait.clamp(100, 5_000)));
                }
                Err(e) => {
                    eprintln!("tern-bot {user}: final edit: {e}");
                    return;
                }
            }
        }
    }
}

fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Timeout(_) | ClientError::Closed(_) => true,
        ClientError::Server { .. } => matches!(
            e.server_code(),
            Some(
                pb::ErrorCode::RateLimited
                    | pb::ErrorCode::Overloaded
                    | pb::ErrorCode::Timeout
                    | pb::ErrorCode::Internal
            )
        ),
        _ => false,
    }
}

/// `typing = true` in a conversation, renewed by a small thread until
/// dropped; dropping it sends `typing = false`.
struct Typing<'a> {
    shared: &'a Shared,
    conv: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renew: Option<JoinHandle<()>>,
}

impl<'a> Typing<'a> {
    fn start(shared: &'a Shared, conv: &str) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let session = shared.slot.get().ok();
        let renew = session.map(|s| {
            let stop = stop.clone();
            let conv = conv.to_owned();
            std::thread::spawn(move || {
                loop {
                    let _ = s.fire(Body::Typing(pb::TypingRequest {
                        conversation_id: conv.clone(),
                        typing: true,
                    }));
                    let (lock, cv) = &*stop;
                    let mut stopped = lock.lock();
                    if !*stopped {
                        cv.wait_for(&mut stopped, Duration::from_millis(TYPING_RENEW_MS));
                    }
                    if *stopped {
                        return;
                    }
                }
            })
        });
        Self {
            shared,
            conv: conv.to_owned(),
            stop,
            renew,
        }
    }
}

impl Drop for Typing<'_> {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock() = true;
            cv.notify_all();
        }
        if let Some(t) = self.renew.take() {
            let _ = t.join();
        }
        if let Ok(s) = self.shared.slot.get() {
            let _ = s.fire(Body::Typing(pb::TypingRequest {
                conversation_id: self.conv.clone(),
                typing: false,
            }));
        }
    }
}

fn text_content(text: String) -> pb::Content {
    pb::Content {
        kind: Some(pb::content::Kind::Text(pb::Text { text })),
    }
}

/// The largest index `<= at` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A fresh client id (`client_msg_id`, `client_edit_id`): time and 64
/// random bits.
fn new_id(kind: &str) -> String {
    format!("{kind}-{:x}-{:016x}", now_ms(), rand::random::<u64>())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits `ms`, or less if `stop` is set meanwhile.
fn pause(stop: &AtomicBool, ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        // The bot's own thread, waiting on purpose before a reconnect.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}
