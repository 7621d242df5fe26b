//! The command tree. [`SharedCommand`] is one grammar for both modes:
//! `tern-cli friend add bob` in a script is `/friend add bob` in the chat.
//! Where a command needs a conversation, the chat's open one is the
//! default; a script names it (`--conv`, `--to`, `--group`).

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::{conn::REQUEST_TIMEOUT_MS_DEFAULT, token::TOKEN_TTL_SECS_DEFAULT};

/// Default server address (the gateway's default TCP listener).
pub const SERVER_DEFAULT: &str = "127.0.0.1:7400";
/// Default device id of the interactive mode.
pub const CHAT_DEVICE_DEFAULT: &str = "cli";
/// Default device id of the scripted commands: a different one, so that a
/// script run as the same user does not displace an open chat.
pub const SCRIPT_DEVICE_DEFAULT: &str = "cli-script";
/// Default page size of `history`.
pub const HISTORY_LIMIT_DEFAULT: u32 = 20;

/// `tern-cli`: chat on a Tern server from a terminal or a script.
#[derive(Parser, Debug)]
#[command(
    name = "tern-cli",
    version,
    about = "Chat on a Tern server: interactive (default) or one command per run",
    after_help = "Exit codes: 0 ok, 1 refused by the server (ERROR_CODE_* on stderr), \
                  2 usage, 3 connection, 4 not available yet."
)]
pub struct Cli {
    /// Gateway TCP address, or WebSocket URL (`ws://host:7401/`,
    /// `wss://host/`); several, comma-separated (`a:7400,b:7400`), are
    /// tried in order, and the chat moves to the next one when its node
    /// drains (a SHUTDOWN kick).
    #[arg(long, env = "TERN_SERVER", default_value = SERVER_DEFAULT, global = true, help_heading = "Login and output")]
    pub server: String,
    /// A token issued by your service (the JWT's `sub` is the user).
    #[arg(
        long,
        env = "TERN_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Login and output"
    )]
    pub token: Option<String>,
    /// Base URL of the gateway's HTTP edge, for media uploads (`send-file`).
    #[arg(long = "http", env = "TERN_HTTP_URL", default_value = super::conn::HTTP_URL_DEFAULT, global = true, help_heading = "Login and output")]
    pub http_url: String,
    /// The user to mint a development token for (with --jwt-secret).
    // Its own id: subcommands have positional `user` arguments, and a global
    // argument sharing their id would take their values.
    #[arg(
        long = "user",
        id = "login_user",
        value_name = "USER",
        env = "TERN_USER",
        global = true,
        help_heading = "Login and output"
    )]
    pub user: Option<String>,
    /// The HS256 secret of a development server (`tern serve --jwt-secret`).
    #[arg(
        long,
        env = "TERN_JWT_SECRET",
        hide_env_values = true,
        global = true,
        help_heading = "Login and output"
    )]
    pub jwt_secret: Option<String>,
    /// `aud` claim of a minted token, when the server requires one.
    #[arg(long, global = true, help_heading = "Login and output")]
    pub audience: Option<String>,
    /// Validity of a minted token, in seconds.
    #[arg(long, default_value_t = TOKEN_TTL_SECS_DEFAULT, global = true, help_heading = "Login and output")]
    pub token_ttl_secs: u64,
    /// Device id [default: `cli` for chat, `cli-listen` for listen, `cli-script` otherwise].
    #[arg(
        long,
        env = "TERN_DEVICE",
        global = true,
        help_heading = "Login and output"
    )]
    pub device: Option<String>,
    /// One JSON object per line instead of `kind key=value` lines.
    #[arg(long, global = true, help_heading = "Login and output")]
    pub json: bool,
    /// Wait for each answer this long, in milliseconds.
    #[arg(long, default_value_t = REQUEST_TIMEOUT_MS_DEFAULT, global = true, help_heading = "Login and output")]
    pub timeout_ms: u64,
    /// Connect over TLS (the gateway's `--tls-listen` address as --server).
    #[arg(long, global = true, help_heading = "Login and output")]
    pub tls: bool,
    /// With --tls: PEM CA certificates to trust [default: the system's bundle].
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        help_heading = "Login and output"
    )]
    pub ca: Option<std::path::PathBuf>,
    /// With --tls: trust any certificate (tests against a self-signed
    /// gateway only: no protection against an active attacker).
    #[arg(long, global = true, help_heading = "Login and output")]
    pub insecure: bool,
    /// What to do [default: chat].
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The TLS settings of `--tls`, `--ca` and `--insecure` (`None`: plain
    /// TCP).
    pub fn tls_options(&self) -> Option<crate::tls::TlsOptions> {
        self.tls.then(|| crate::tls::TlsOptions {
            ca_file: self.ca.clone(),
            insecure: self.insecure,
            server_name: None,
        })
    }
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Interactive chat with slash commands (the default).
    Chat,
    /// Print pushes (messages, receipts, typing, presence, events) as they
    /// arrive; prints `ready …` once logged in.
    Listen {
        /// Stop after this many items (exit 3 with CLI_TIMEOUT if --for-ms
        /// ends first).
        #[arg(long)]
        count: Option<usize>,
        /// Join this room first and print its messages too (repeatable, or
        /// comma-separated; joined for this connection only).
        #[arg(long = "room", value_delimiter = ',', value_name = "ROOM")]
        rooms: Vec<String>,
        /// Stop after this long, in milliseconds.
        #[arg(long)]
        for_ms: Option<u64>,
    },
    /// Print a development token for --user, signed with --jwt-secret.
    Token,
    /// A request (the same grammar as the chat's slash commands).
    #[command(flatten)]
    Shared(SharedCommand),
}

/// Commands of both modes.
#[derive(Subcommand, Debug, Clone)]
pub enum SharedCommand {
    /// Send a text (emoji are text). `@user` words mention, `@all` mentions all.
    Send(SendArgs),
    /// Upload a file or an image (png, jpg, gif, webp) over HTTP (--http) and send it.
    SendFile(SendFileArgs),
    /// A page of a conversation's history, oldest first.
    History(HistoryArgs),
    /// Pull every entry this device lacks, then the heads of all conversations.
    Sync(SyncArgs),
    /// Your conversations, newest activity first, with unread counts.
    Convs(ConvsArgs),
    /// Recall a message by its seq.
    Recall(RecallArgs),
    /// Edit one of your messages: its seq, then the new text.
    Edit(EditArgs),
    /// Search the text of your conversations' messages (all words must match).
    Search(SearchArgs),
    /// Reply in the thread under a message: its seq, then the text.
    Thread(ThreadArgs),
    /// A page of the thread under a message (oldest first), with its
    /// summary and your unread count; marks the thread read.
    Threadlog(ThreadlogArgs),
    /// Turn a message into a to-do for some members: its seq, then users.
    Todo(TodoArgs),
    /// Mark a to-do of yours done (or open again with --undo).
    Done(DoneArgs),
    /// Your open to-dos.
    Todos(TodosArgs),
    /// React to a message: its seq, then the reaction (an emoji).
    React(ReactArgs),
    /// Take your reaction back: the message's seq, then the reaction.
    Unreact(ReactArgs),
    /// Pin a message of the conversation (groups: admins and the owner).
    Pin(PinArgs),
    /// Unpin a message.
    Unpin(PinArgs),
    /// List the conversation's pinned messages.
    Pins(PinsArgs),
    /// Mark a conversation read (up to SEQ, default its newest entry).
    Read(ReadArgs),
    /// How many read the given messages.
    ReadBy(ReadByArgs),
    /// Tell the conversation you type (or stopped: `off`).
    Typing(TypingArgs),
    /// Set your presence (`online|busy|away|offline [TEXT]`) or query others'
    /// (`get USER...`).
    Presence(PresenceArgs),
    /// Show a profile (yours by default), or update yours with flags.
    Profile(ProfileArgs),
    /// Measure the round trip to the server.
    Ping,
    /// Your connected devices: platform, node, login time, client version.
    Devices,
    /// Log out one of your other devices (it is kicked and must log in again).
    Logout(LogoutArgs),
    /// Push notifications: register, unregister or list this device's
    /// push token, and mute notifications (docs/push.md).
    Push(PushArgs),
    /// Call a user or a group (default: the open conversation): rings them.
    Call(CallArgs),
    /// Answer the call you are rung for (the latest one, or CALL_ID).
    Accept(CallIdArgs),
    /// Decline the call you are rung for (the latest one, or CALL_ID).
    Reject(CallIdArgs),
    /// Leave the call (as its caller before anyone answered: cancel it).
    Hangup(CallIdArgs),
    /// Friends: add, accept, reject, delete, list, requests, remark, block, unblock.
    #[command(subcommand)]
    Friend(FriendCommand),
    /// Groups: create, list, info, members, join, invite, kick, leave, dissolve,
    /// rename, announce, nick, remark, role, mute, unmute, decide, policy.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Rooms and broadcast channels: create, info, join, leave, post,
    /// history (docs/cli.md, "Rooms").
    #[command(subcommand)]
    Room(RoomCommand),
}

/// Where a message goes (one of them; the chat's open conversation when
/// none).
#[derive(Args, Debug, Clone, Default)]
pub struct ToArgs {
    /// A user (1:1 chat).
    #[arg(long, conflicts_with_all = ["group", "conv"])]
    pub to: Option<String>,
    /// A group.
    #[arg(long, conflicts_with = "conv")]
    pub group: Option<String>,
    /// A conversation: `bob`, `#team`, `d:alice:bob`, `g:team`.
    #[arg(long)]
    pub conv: Option<String>,
}

/// `send`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// The recipient.
    #[command(flatten)]
    pub to: ToArgs,
    /// Mention this user too (repeatable; `@user` words in the text count).
    #[arg(long = "mention", value_name = "USER")]
    pub mentions: Vec<String>,
    /// Mention every member (group owner and admins).
    #[arg(long)]
    pub mention_all: bool,
    /// The seq of the message this one answers.
    #[arg(long, value_name = "SEQ")]
    pub reply_to: Option<u64>,
    /// Your own client message id (makes a rerun of the script idempotent).
    #[arg(long = "id", value_name = "CLIENT_MSG_ID")]
    pub client_msg_id: Option<String>,
    /// The text; several words are joined with spaces.
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    pub text: Vec<String>,
}

/// `send-file`.
#[derive(Args, Debug, Clone)]
pub struct SendFileArgs {
    /// The recipient.
    #[command(flatten)]
    pub to: ToArgs,
    /// Your own client message id (makes a rerun of the script idempotent).
    #[arg(long = "id", value_name = "CLIENT_MSG_ID")]
    pub client_msg_id: Option<String>,
    /// The file or image to send.
    pub path: std::path::PathBuf,
}

/// `history`.
#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// The conversation: `bob`, `#team`, `d:alice:bob`, `g:team`.
    #[arg(long)]
    pub conv: Option<String>,
    /// At most this many entries (capped by the server's page size).
    #[arg(long, default_value_t = HISTORY_LIMIT_DEFAULT)]
    pub limit: u32,
    /// Entries below this seq (page up); default: the newest.
    #[arg(long, value_name = "SEQ")]
    pub before: Option<u64>,
}

/// `sync`.
#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    /// What this device holds already: `CONV=SEQ` (repeatable); others sync
    /// from their beginning.
    #[arg(long = "cursor", value_name = "CONV=SEQ")]
    pub cursors: Vec<String>,
    /// Entries per page (0: the server's maximum).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
}

/// `convs`.
#[derive(Args, Debug, Clone)]
pub struct ConvsArgs {
    /// At most this many (0: the server's maximum).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Skip this many (from a previous page).
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
}

/// `recall`.
#[derive(Args, Debug, Clone)]
pub struct RecallArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// The message's seq.
    pub seq: u64,
}

/// `edit`.
#[derive(Args, Debug, Clone)]
pub struct EditArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// Your own client edit id (makes a rerun of the script idempotent).
    #[arg(long = "id", value_name = "CLIENT_EDIT_ID")]
    pub client_edit_id: Option<String>,
    /// More edits follow (the message shows as being written).
    #[arg(long)]
    pub streaming: bool,
    /// The message's seq.
    pub seq: u64,
    /// The new text; several words are joined with spaces.
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    pub text: Vec<String>,
}

/// `react` and `unreact`.
#[derive(Args, Debug, Clone)]
pub struct ReactArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// The message's seq.
    pub seq: u64,
    /// The reaction: an emoji, or a short code such as `:+1:` (at most 32
    /// bytes, no spaces).
    #[arg(allow_hyphen_values = true)]
    pub emoji: String,
}

/// `pin` and `unpin`.
#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// The message's seq.
    pub seq: u64,
}

/// `pins`.
#[derive(Args, Debug, Clone)]
pub struct PinsArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
}

/// `thread`.
#[derive(Args, Debug, Clone)]
pub struct ThreadArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// Your own client message id (makes a rerun of the script idempotent).
    #[arg(long = "id", value_name = "CLIENT_MSG_ID")]
    pub client_msg_id: Option<String>,
    /// The seq of the thread's root message.
    pub seq: u64,
    /// The text; several words are joined with spaces.
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    pub text: Vec<String>,
}

/// `threadlog`.
#[derive(Args, Debug, Clone)]
pub struct ThreadlogArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// At most this many replies (capped by the server's page size).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Replies before this seq (the `more before=` of the previous page).
    #[arg(long)]
    pub before: Option<u64>,
    /// The seq of the thread's root message.
    pub seq: u64,
}

/// `todo`.
#[derive(Args, Debug, Clone)]
pub struct TodoArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// The message's seq.
    pub seq: u64,
    /// Who should do it (1 to 20 members).
    #[arg(required = true, num_args = 1..)]
    pub users: Vec<String>,
}

/// `done`.
#[derive(Args, Debug, Clone)]
pub struct DoneArgs {
    /// The conversation (default: the open one; `todos` prints it).
    #[arg(long)]
    pub conv: Option<String>,
    /// Open it again instead.
    #[arg(long)]
    pub undo: bool,
    /// The to-do's message seq.
    pub seq: u64,
}

/// `todos`.
#[derive(Args, Debug, Clone)]
pub struct TodosArgs {
    /// At most this many (the server's page is at most 100).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// `call`.
#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    /// Whom: a user, `#group`, or a conversation id (default: the open one).
    pub target: Option<String>,
    /// A video call (else audio).
    #[arg(long)]
    pub video: bool,
    /// In a group: ring only these members (repeat or comma-separate).
    #[arg(long = "invite", value_delimiter = ',')]
    pub invitees: Vec<String>,
}

/// `accept`, `reject`, `hangup`.
#[derive(Args, Debug, Clone)]
pub struct CallIdArgs {
    /// The call (default: the latest one this chat saw).
    pub call_id: Option<String>,
}

/// `logout`.
#[derive(Args, Debug, Clone)]
pub struct LogoutArgs {
    /// The device id (see `devices`). Not named `device`: that is the
    /// global `--device` of this run's own login.
    #[arg(value_name = "DEVICE")]
    pub device_id: String,
}

/// `push`.
#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: PushAction,
}

/// `push …`.
#[derive(Subcommand, Debug, Clone)]
pub enum PushAction {
    /// Register this device's push token (APNs device token in hex, or FCM
    /// registration token); a token another user holds moves to you.
    Register {
        /// `apns` or `fcm`.
        platform: PushPlatformArg,
        /// The token. (Not named `token`: that is the global `--token`
        /// of this run's own login.)
        #[arg(value_name = "TOKEN")]
        push_token: String,
        /// APNs: the app's bundle id (default: the server's).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Remove one of your push tokens.
    Unregister {
        /// `apns` or `fcm`.
        platform: PushPlatformArg,
        /// The token.
        #[arg(value_name = "TOKEN")]
        push_token: String,
    },
    /// Your push tokens (every device's) and your mutes.
    List,
    /// Mute notifications of one conversation (`--conv`), or all of them
    /// (do not disturb), until `--until-ms` (default: until unmuted).
    Mute {
        /// The conversation (default: all: do not disturb).
        #[arg(long)]
        conv: Option<String>,
        /// Muted until this time (Unix ms).
        #[arg(long, value_name = "UNIX_MS")]
        until_ms: Option<u64>,
        /// Unmute instead.
        #[arg(long, conflicts_with = "until_ms")]
        off: bool,
    },
}

/// A push platform on the command line.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushPlatformArg {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
}

/// `search`.
#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Only this conversation (default: all of yours).
    #[arg(long)]
    pub conv: Option<String>,
    /// Only messages of this sender.
    #[arg(long, value_name = "USER")]
    pub from: Option<String>,
    /// Only messages sent at or after this time (Unix ms).
    #[arg(long, value_name = "UNIX_MS")]
    pub since_ms: Option<u64>,
    /// Only messages sent before this time (Unix ms).
    #[arg(long, value_name = "UNIX_MS")]
    pub until_ms: Option<u64>,
    /// At most this many results (capped by the server: 50).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Continue a search where the last page said `more cursor=...`.
    #[arg(long)]
    pub cursor: Option<String>,
    /// The words to find; several are joined with spaces.
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    pub text: Vec<String>,
}

/// `read`.
#[derive(Args, Debug, Clone)]
pub struct ReadArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// Up to and including this seq (default: the newest entry).
    pub seq: Option<u64>,
}

/// `read-by`.
#[derive(Args, Debug, Clone)]
pub struct ReadByArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// The messages' seqs.
    #[arg(required = true, num_args = 1..)]
    pub seqs: Vec<u64>,
}

/// On or off.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOff {
    /// Started.
    #[default]
    On,
    /// Stopped.
    Off,
}

/// `typing`.
#[derive(Args, Debug, Clone)]
pub struct TypingArgs {
    /// The conversation (default: the open one).
    #[arg(long)]
    pub conv: Option<String>,
    /// `on` (default) or `off`.
    #[arg(value_enum, default_value_t = OnOff::On)]
    pub state: OnOff,
}

/// What `presence` does.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceVerb {
    /// Set yourself online.
    Online,
    /// Set yourself busy.
    Busy,
    /// Set yourself away.
    Away,
    /// Set yourself offline.
    Offline,
    /// Query the users that follow.
    Get,
}

/// `presence`.
#[derive(Args, Debug, Clone)]
pub struct PresenceArgs {
    /// A state to set, or `get`.
    #[arg(value_enum)]
    pub verb: PresenceVerb,
    /// The status text (for a state), or the users (for `get`).
    #[arg(num_args = 0.., allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

/// `profile`.
#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// Whose profile (default: yours).
    pub user: Option<String>,
    /// Set your nickname.
    #[arg(long)]
    pub nickname: Option<String>,
    /// Set your avatar (a URL or media id).
    #[arg(long)]
    pub avatar: Option<String>,
    /// Set your bio.
    #[arg(long)]
    pub bio: Option<String>,
}

/// `friend …`.
#[derive(Subcommand, Debug, Clone)]
pub enum FriendCommand {
    /// Ask USER to be your friend, with an optional greeting.
    Add {
        /// The user.
        user: String,
        /// A greeting.
        #[arg(num_args = 0..)]
        message: Vec<String>,
    },
    /// Accept USER's request.
    Accept {
        /// The user.
        user: String,
    },
    /// Refuse USER's request.
    Reject {
        /// The user.
        user: String,
    },
    /// End the friendship with USER.
    Delete {
        /// The user.
        user: String,
    },
    /// Your friends and the users you blocked.
    List,
    /// Pending requests, both ways.
    Requests,
    /// Your private name for a friend (empty clears it).
    Remark {
        /// The friend.
        user: String,
        /// The remark.
        #[arg(num_args = 0..)]
        remark: Vec<String>,
    },
    /// Block USER.
    Block {
        /// The user.
        user: String,
    },
    /// Unblock USER.
    Unblock {
        /// The user.
        user: String,
    },
}

/// A group role.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    /// A plain member.
    Member,
    /// An admin.
    Admin,
    /// The owner (hands ownership over; you become an admin).
    Owner,
}

/// A join policy.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyArg {
    /// Anyone may join.
    #[default]
    Open,
    /// Joining asks the admins.
    Approval,
    /// Only invited users become members.
    InviteOnly,
}

/// Approve or reject.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let them in.
    Approve,
    /// Refuse.
    Reject,
}

/// `room …` (docs/cli.md, "Rooms").
#[derive(Subcommand, Debug, Clone)]
pub enum RoomCommand {
    /// Create a room with id ROOM (you become its owner).
    Create {
        /// Its id.
        room: String,
        /// Its name (several words are joined; default: the id).
        name: Vec<String>,
        /// A broadcast channel: only you and the admins post.
        #[arg(long)]
        broadcast: bool,
        /// Who may post in a broadcast channel besides you (repeatable, or
        /// comma-separated).
        #[arg(long = "admin", value_delimiter = ',', value_name = "USER")]
        admins: Vec<String>,
    },
    /// A room's name, kind, owner, admins and newest seq.
    Info {
        /// The room.
        room: String,
    },
    /// Join a room on this connection (`listen --room` keeps printing its
    /// messages; the chat prints them until it ends or leaves).
    Join {
        /// The room.
        room: String,
    },
    /// Leave a room on this connection.
    Leave {
        /// The room.
        room: String,
    },
    /// Post a message to a room.
    Post {
        /// The room.
        room: String,
        /// The text; several words are joined with spaces.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        text: Vec<String>,
    },
    /// Delete a room you own: its recent messages go, and every joined
    /// connection gets `room_closed`.
    Delete {
        /// The room.
        room: String,
    },
    /// The room's recent messages, oldest first.
    History {
        /// The room.
        room: String,
        /// Only messages before this seq.
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
        /// At most this many (0: the whole kept window).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

/// `group …`.
#[derive(Subcommand, Debug, Clone)]
pub enum GroupCommand {
    /// Create a group named NAME; you become its owner.
    Create {
        /// The group's name (several words are joined).
        #[arg(required = true, num_args = 1..)]
        name: Vec<String>,
        /// Its id (default: the server picks one).
        #[arg(long)]
        id: Option<String>,
        /// Initial members (repeatable, or comma-separated).
        #[arg(
            long = "member",
            short = 'm',
            value_delimiter = ',',
            value_name = "USER"
        )]
        members: Vec<String>,
        /// Who may join.
        #[arg(long, value_enum, default_value_t = PolicyArg::Open)]
        policy: PolicyArg,
        /// New members can read what came before they joined.
        #[arg(long)]
        history_visible: bool,
    },
    /// The groups you are in.
    List,
    /// A group's settings and your role.
    Info {
        /// The group.
        group: String,
    },
    /// A group's members.
    Members {
        /// The group.
        group: String,
        /// Continue after this user id.
        #[arg(long)]
        after: Option<String>,
        /// At most this many (0: the server's maximum).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Join a group (or ask to, if it needs approval).
    Join {
        /// The group.
        group: String,
        /// A note for the admins.
        #[arg(num_args = 0..)]
        message: Vec<String>,
    },
    /// Add users to a group.
    Invite {
        /// The group.
        group: String,
        /// The users.
        #[arg(required = true, num_args = 1..)]
        users: Vec<String>,
    },
    /// Remove a member.
    Kick {
        /// The group.
        group: String,
        /// The member.
        user: String,
    },
    /// Leave a group.
    Leave {
        /// The group.
        group: String,
    },
    /// Dissolve a group (owner).
    Dissolve {
        /// The group.
        group: String,
    },
    /// Rename a group.
    Rename {
        /// The group.
        group: String,
        /// The new name.
        #[arg(required = true, num_args = 1..)]
        name: Vec<String>,
    },
    /// Set (or with no text, clear) the announcement.
    Announce {
        /// The group.
        group: String,
        /// The announcement.
        #[arg(num_args = 0..)]
        text: Vec<String>,
    },
    /// Your nickname in a group (none clears it).
    Nick {
        /// The group.
        group: String,
        /// The nickname.
        #[arg(num_args = 0..)]
        nickname: Vec<String>,
    },
    /// Your private remark for a group (none clears it).
    Remark {
        /// The group.
        group: String,
        /// The remark.
        #[arg(num_args = 0..)]
        remark: Vec<String>,
    },
    /// Make a member admin or member, or hand over ownership.
    Role {
        /// The group.
        group: String,
        /// The member.
        user: String,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Mute a member, or the whole group when no user is named.
    Mute {
        /// The group.
        group: String,
        /// The member (none: the whole group).
        user: Option<String>,
        /// How long: `90s`, `10m`, `2h`, `1d` or milliseconds.
        #[arg(long = "for", default_value = "1h", value_name = "DURATION")]
        duration: String,
    },
    /// Unmute a member, or the whole group.
    Unmute {
        /// The group.
        group: String,
        /// The member (none: the whole group).
        user: Option<String>,
    },
    /// Approve or reject a request to join.
    Decide {
        /// The group.
        group: String,
        /// Who asked.
        user: String,
        /// `approve` or `reject`.
        #[arg(value_enum)]
        decision: Decision,
    },
    /// Set who may join and whether new members see the history.
    Policy {
        /// The group.
        group: String,
        /// Who may join.
        #[arg(value_enum)]
        policy: PolicyArg,
        /// New members can read what came before they joined.
        #[arg(long)]
        history_visible: bool,
    },
}

/// The chat's own commands, besides every [`SharedCommand`].
#[derive(Parser, Debug)]
#[command(
    name = "",
    no_binary_name = true,
    disable_version_flag = true,
    disable_help_subcommand = true,
    help_template = "{subcommands}"
)]
pub struct ReplLine {
    /// The command.
    #[command(subcommand)]
    pub command: ReplCommand,
}

/// Slash commands.
#[derive(Subcommand, Debug)]
pub enum ReplCommand {
    /// Open a conversation: `/open bob`, `/open #team`; shows its recent
    /// history and marks it read.
    Open {
        /// `bob`, `#team`, `d:alice:bob`, `g:team`.
        target: String,
    },
    /// Close the open conversation.
    Close,
    /// Log in again, as another user or with another token.
    Login {
        /// The user (a development token is minted with the secret given
        /// here or at start).
        user: Option<String>,
        /// A token from your service.
        #[arg(long)]
        token: Option<String>,
        /// The development server's secret.
        #[arg(long)]
        jwt_secret: Option<String>,
        /// Device id.
        #[arg(long)]
        device: Option<String>,
    },
    /// Mark new messages in the open conversation read as they arrive.
    Autoread {
        /// `on` or `off`.
        #[arg(value_enum)]
        state: OnOff,
    },
    /// List the commands.
    Help,
    /// Leave.
    #[command(alias = "exit")]
    Quit,
    /// A request.
    #[command(flatten)]
    Shared(SharedCommand),
}

/// Milliseconds of `90s`, `10m`, `2h`, `1d`, `1500ms` or a bare number of
/// milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_trees_are_consistent() {
        // Proves clap accepts both command trees (no clashing names/flags).
        Cli::command().debug_assert();
        ReplLine::command().debug_assert();
    }

    #[test]
    fn one_grammar_for_scripts_and_slash_commands() {
        // Proves `friend add bob hi there` parses the same in both modes.
        let cli = Cli::try_parse_from(["tern-cli", "friend", "add", "bob", "hi", "there"]).unwrap();
        let Some(Command::Shared(SharedCommand::Friend(FriendCommand::Add { user, message }))) =
            cli.command
        else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(
            (user.as_str(), message.join(" ")),
            ("bob", "hi there".into())
        );
        let line = ReplLine::try_parse_from(["friend", "add", "bob", "hi", "there"]).unwrap();
        assert!(matches!(
            line.command,
            ReplCommand::Shared(SharedCommand::Friend(FriendCommand::Add { .. }))
        ));
        // The global --user is not the subcommand's positional USER.
        let cli = Cli::try_parse_from(["tern-cli", "--user", "alice", "friend", "accept", "bob"])
            .unwrap();
        assert_eq!(cli.user.as_deref(), Some("alice"));
        let Some(Command::Shared(SharedCommand::Friend(FriendCommand::Accept { user }))) =
            cli.command
        else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(user, "bob");
        let send = Cli::try_parse_from(["tern-cli", "send", "--to", "bob", "-", "x"]).unwrap();
        let Some(Command::Shared(SharedCommand::Send(a))) = send.command else {
            panic!()
        };
        assert_eq!(a.text, ["-", "x"]);
    }

    #[test]
    fn durations_take_units() {
        // Proves the duration grammar of `group mute --for`.
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("10m"), Some(600_000));
        assert_eq!(parse_duration_ms("1500"), Some(1500));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("x"), None);
        assert_eq!(parse_duration_ms("5y"), None);
        assert_eq!(parse_duration_ms("99999999999999999999d"), None);
    }
}
