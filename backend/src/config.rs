//! The chat domain's settings, with their defaults and what they mean.
//!
//! Never read from the environment or a file here: the gateway owns the
//! config file and passes a [`Config`] in.

/// One day, in milliseconds.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Settings of the chat domain. `Config::default()` is what a single node
/// runs with; every field says its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long after sending the sender may recall a message. Group admins
    /// and the owner may recall members' messages at any time. Default
    /// 120 000 (2 minutes).
    pub recall_window_ms: u64,
    /// How long a `(conversation, sender, client_msg_id)` is remembered, so
    /// that a resent message is answered with its original seq. At least
    /// 24 h ([`Config::validate`] refuses less). Default 24 h.
    pub dedup_window_ms: u64,
    /// Whether users who are not friends may message each other 1:1.
    /// Default true (what most business deployments need); false answers
    /// such sends with `ERROR_CODE_NOT_FRIENDS`.
    pub allow_non_friend_messages: bool,
    /// Largest page of a `sync` or `history` answer, in entries. Default 200.
    pub page_entries_max: u32,
    /// Largest page of a conversation list. Default 200.
    pub conversations_page_max: u32,
    /// Largest page of a group member list. Default 500.
    pub members_page_max: u32,
    /// Most members a group may have (owner included). Default 10 000.
    pub group_members_max: u32,
    /// Most users one `group_invite` (or `group_create`) may add. Default 500.
    pub invite_users_max: u32,
    /// How long a `typing = true` holds without being repeated; after it the
    /// domain emits `typing = false` itself (see `Domain::poll_expired`).
    /// Default 6 000.
    pub typing_expiry_ms: u64,
    /// How long a presence set by a user holds without being set again;
    /// after it the user reads as offline. Default 300 000 (5 minutes; the
    /// gateway re-sets presence on heartbeats well within it).
    pub presence_expiry_ms: u64,
    /// Largest text of a `Text` content, in bytes. Default 8 192.
    pub text_bytes_max: u32,
    /// Largest encoded message content (any kind), in bytes. Default 65 536.
    pub content_bytes_max: u32,
    /// Most users one message may @-mention. Default 100.
    pub mentions_max: u32,
    /// Unread counts stop at this value (a client shows "999+"); it bounds
    /// the entries read to count them. Default 999.
    pub unread_count_max: u32,
    /// Most seqs in one `read_by` query. Default 100.
    pub read_by_seqs_max: u32,
    /// Most users in one `presence_query`. Default 500.
    pub presence_users_max: u32,
    /// Most cursors in one `sync` request. Default 10 000.
    pub sync_cursors_max: u32,
    /// Longest short text (group name, nickname, remark, friend request
    /// greeting, presence text, profile nickname), in bytes. Default 256.
    pub short_text_bytes_max: u32,
    /// Longest long text (announcement, bio, avatar URL), in bytes.
    /// Default 4 096.
    pub long_text_bytes_max: u32,
    /// Typing states the domain tracks for expiry, at most; beyond it a
    /// typing event is still pushed but not expired by the server. Default
    /// 100 000.
    pub typing_states_max: u32,
    /// Groups whose member lists are cached for fan-out, at most. Default
    /// 10 000.
    pub member_cache_groups_max: u32,
    /// How long after sending the sender may edit a message; 0: no edits at
    /// all. Default 24 h.
    pub edit_window_ms: u64,
    /// Most edits of one message (a bot streaming a reply edits it many
    /// times). Default 1 000.
    pub edits_per_message_max: u32,
    // ---- search (issue 19; docs/backend.md, "Search") ----
    /// Whether `search` is served (and messages indexed). Turn it off where
    /// message contents are encrypted at rest and the index, which holds
    /// their words in clear, must not exist: `search` is then answered
    /// with `ERROR_CODE_SEARCH_DISABLED`. Default true.
    pub search_enabled: bool,
    /// Largest page of a `search` answer, in messages. Default 50.
    pub search_page_max: u32,
    /// Candidate messages one `search` request examines at most (each a
    /// point read of the log); a page ends early with a cursor when they
    /// are used up. Default 1 000.
    pub search_scan_max: u32,
    /// How long a call rings a participant who does not answer; then they
    /// are MISSED (and a call nobody answered ends MISSED). Default 30 000.
    pub call_ring_timeout_ms: u64,
    /// Calls in progress this domain instance (one gateway node) owns at
    /// most (the calls whose invite it took); an invite beyond gets
    /// `LIMIT_REACHED`. Default 10 000.
    pub calls_max: u32,
    /// The lease of a call in progress in the store: the owning node renews
    /// it every third of this; if that node dies, the call is gone this
    /// long after its last renewal. At least 3 000 (the domain is polled
    /// about once a second). Default 60 000.
    pub call_lease_ms: u64,
    // ---- offline push (issue 20; docs/push.md) ----
    /// Whether push tokens may be registered (the gateway's `[push]
    /// enabled`); off: the push frames get `PUSH_DISABLED`. Default false.
    pub push_enabled: bool,
    /// Push tokens one user holds at most (all devices); one more gets
    /// `PUSH_TOKENS_FULL`. Default 10.
    pub push_tokens_per_user_max: u32,
    /// Conversations one user mutes at most; one more gets
    /// `PUSH_MUTES_FULL`. Default 500.
    pub push_muted_conversations_max: u32,
    // ---- rooms (issue 19; docs/protocol.md, "Rooms") ----
    /// Messages a room keeps (its recent window): each post drops the one
    /// this far back; `room_history` serves no older one. Default 200.
    pub room_recent_max: u32,
    // ---- tenants (issue 20; docs/tenants.md) ----
    /// Pairs of tenants whose users may name each other (chat, friends,
    /// groups, presence, rooms): the one exception to "nothing crosses
    /// tenants". Default none.
    pub federation: Federation,
    /// Messages a second each named tenant's users may send through this
    /// node together (sends, API sends and room posts); past it a send gets
    /// `RATE_LIMITED` with `retry_after_ms`. Tenants not named: no limit.
    /// Default none.
    pub tenant_messages_per_second: Vec<(String, u32)>,
    /// Users each named tenant may have: a user takes a seat at their first
    /// login and keeps it until an operator frees it; a login of a user
    /// without a seat when all are taken is kicked with `TENANT_FULL`.
    /// Tenants not named: no limit. Default none.
    pub tenant_users_max: Vec<(String, u64)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            recall_window_ms: 120_000,
            dedup_window_ms: DAY_MS,
            allow_non_friend_messages: true,
            page_entries_max: 200,
            conversations_page_max: 200,
            members_page_max: 500,
            group_members_max: 10_000,
            invite_users_max: 500,
            typing_expiry_ms: 6_000,
            presence_expiry_ms: 300_000,
            text_bytes_max: 8_192,
            content_bytes_max: 65_536,
            mentions_max: 100,
            unread_count_max: 999,
            read_by_seqs_max: 100,
            presence_users_max: 500,
            sync_cursors_max: 10_000,
            short_text_bytes_max: 256,
            long_text_bytes_max: 4_096,
            typing_states_max: 100_000,
            member_cache_groups_max: 10_000,
            edit_window_ms: DAY_MS,
            edits_per_message_max: 1_000,
            search_enabled: true,
            search_page_max: 50,
            search_scan_max: 1_000,
            call_ring_timeout_ms: 30_000,
            calls_max: 10_000,
            call_lease_ms: 60_000,
            push_enabled: false,
            push_tokens_per_user_max: 10,
            push_muted_conversations_max: 500,
            room_recent_max: 200,
            federation: Federation::default(),
            tenant_messages_per_second: Vec::new(),
            tenant_users_max: Vec::new(),
        }
    }
}

/// Tenants allowed to talk to each other (docs/tenants.md, "Federation").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Federation {
    /// `(a, b)` with `a < b`, sorted.
    pairs: Vec<(String, String)>,
}

impl Federation {
    /// From `a:b` strings (either order; the default tenant cannot be
    /// federated: it is a deployment's own users).
    pub fn parse<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut out = Vec::new();
        for p in pairs {
            let (a, b) = p
                .split_once(':')
                .ok_or_else(|| format!("{p:?}: expected <tenant>:<tenant>"))?;
            for t in [a, b] {
                tern_protocol::ids::check_tenant(t)
                    .map_err(|_| format!("{p:?}: {t:?} is not 1 to 32 of [a-z0-9-]"))?;
            }
            if a == b {
                return Err(format!("{p:?}: a tenant is federated with itself already"));
            }
            out.push(if a < b {
                (a.to_owned(), b.to_owned())
            } else {
                (b.to_owned(), a.to_owned())
            });
        }
        out.sort_unstable();
        out.dedup();
        Ok(Self { pairs: out })
    }

    /// Whether a user of tenant `a` may name ids of tenant `b`.
    pub fn allows(&self, a: &str, b: &str) -> bool {
        if a == b {
            return true;
        }
        let pair = if a < b { (a, b) } else { (b, a) };
        self.pairs
            .binary_search_by(|(x, y)| (x.as_str(), y.as_str()).cmp(&pair))
            .is_ok()
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `dedup_window_ms` is below 24 h, which the protocol promises clients.
    #[error("dedup_window_ms must be at least 24 h ({DAY_MS} ms)")]
    DedupWindowTooShort,
    /// A page or size maximum is 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A duration is below its minimum (ms).
    #[error("{0} must be at least {1}")]
    TooSmall(&'static str, u64),
}

impl Config {
    /// Checks the settings against what the protocol promises.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dedup_window_ms < DAY_MS {
            return Err(ConfigError::DedupWindowTooShort);
        }
        for (name, v) in [
            ("page_entries_max", self.page_entries_max),
            ("conversations_page_max", self.conversations_page_max),
            ("members_page_max", self.members_page_max),
            ("group_members_max", self.group_members_max),
            ("invite_users_max", self.invite_users_max),
            ("text_bytes_max", self.text_bytes_max),
            ("content_bytes_max", self.content_bytes_max),
            ("unread_count_max", self.unread_count_max),
            ("read_by_seqs_max", self.read_by_seqs_max),
            ("presence_users_max", self.presence_users_max),
            ("sync_cursors_max", self.sync_cursors_max),
            ("short_text_bytes_max", self.short_text_bytes_max),
            ("long_text_bytes_max", self.long_text_bytes_max),
            ("search_page_max", self.search_page_max),
            ("search_scan_max", self.search_scan_max),
            ("room_recent_max", self.room_recent_max),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.call_lease_ms < CALL_LEASE_MS_MIN {
            return Err(ConfigError::TooSmall("call_lease_ms", CALL_LEASE_MS_MIN));
        }
        Ok(())
    }
}

/// The shortest `call_lease_ms`: three polls of about a second each.
pub const CALL_LEASE_MS_MIN: u64 = 3_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_pairs_parse_strictly_and_go_both_ways() {
        // Proves a pair allows both directions, nothing else is allowed,
        // and malformed pairs are refused.
        let f = Federation::parse(["globex:acme", "acme:globex", "a:b"]).unwrap();
        assert!(f.allows("acme", "globex") && f.allows("globex", "acme"));
        assert!(f.allows("initech", "initech"));
        assert!(!f.allows("acme", "initech") && !f.allows("acme", ""));
        assert!(f.allows("b", "a"));
        for bad in [
            "acme",
            "acme:",
            ":acme",
            "Acme:globex",
            "acme:acme",
            "a:b:c",
        ] {
            assert!(Federation::parse([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid_and_short_dedup_is_refused() {
        // Proves the defaults pass validation and a dedup window under the
        // promised 24 h does not.
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            dedup_window_ms: DAY_MS - 1,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::DedupWindowTooShort));
        let c = Config {
            page_entries_max: 0,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("page_entries_max")));
    }
}
