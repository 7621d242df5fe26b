//! The Redis key schema: every key the Redis store reads or writes is built
//! here, from ids that were checked first.
//!
//! Never builds a key from an unchecked id. Ids may hold only
//! `[A-Za-z0-9._@-]` ([`check_id`]) and a conversation id must be
//! `d:<id>:<id>` or `g:<id>`, so no id part can contain `{`, `}` or `:`: it can
//! neither end its hash tag early (steering the key to another Cluster slot)
//! nor run into the suffix that names the key's role. docs/redis.md lists
//! the schema.
//!
//! Three kinds of hash tag, one slot each:
//! - `{c:<conversation>}`: a conversation's log, head, dedup records, the
//!   users' records for it, and for a group (`{c:g:<group>}`) the group's
//!   record, members and join requests. Everything one append or one group
//!   change touches is here, so one function call does it atomically.
//! - `{u:<user>}`: one user's indexes (conversations, friends, requests,
//!   blocks), profile and presence.
//! - `{p:<a>:<b>}` (`a < b`): the social records between two users
//!   (friendship both ways, requests both ways, blocks both ways).
//!
//! And `{k:<call>}:call`, one call in progress, alone in its slot;
//! `{a:<tenant>}`: a tenant's audit log (issue 20).
//! - `{r:<room>}`: a room's record, seq and kept messages (issue 19).

use tern_protocol::ids::{IdError, check_id};

/// An id that cannot be part of a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} id {id:?} refused as part of a Redis key: {source}")]
pub struct KeyError {
    /// Which id it was ("user", "group", "conversation", ...).
    pub what: &'static str,
    /// The refused id, truncated for the message.
    pub id: String,
    /// Why it was refused.
    pub source: IdError,
}

/// Longest prefix of a refused id quoted in a [`KeyError`].
const REFUSED_ID_QUOTE_BYTES_MAX: usize = 80;

fn refuse(what: &'static str, id: &str, source: IdError) -> KeyError {
    let mut end = id.len().min(REFUSED_ID_QUOTE_BYTES_MAX);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    KeyError {
        what,
        id: id[..end].to_owned(),
        source,
    }
}

/// Checks a user, group or client message id for use in a key.
pub fn id(what: &'static str, id: &str) -> Result<(), KeyError> {
    check_id(id).map_err(|e| refuse(what, id, e))
}

/// The keys of one conversation (all under `{c:<conversation>}`).
#[derive(Debug, Clone)]
pub struct ConvKeys {
    /// Hash: `s` newest seq, `t` its time, `a` newest activity time.
    pub head: String,
    /// Hash: seq → entry (prost bytes, without `seq` and `conversation_id`).
    pub log: String,
    /// Hash: `<sender>:<client_msg_id>` → `<seq>:<time_ms>:<expires_at_ms>`.
    pub dedup: String,
    /// Sorted set: dedup field scored by its expiry, for bounded purging.
    pub dedup_expiry: String,
    /// Hash: user → `<visible_from>:<visible_to>:<read_seq>`.
    pub user_convs: String,
    /// Hash: user → member record (groups only).
    pub members: String,
    /// Sorted set, all scores 0: member user ids in byte order (groups only).
    pub member_order: String,
    /// String: the group's version (groups only).
    pub group_version: String,
    /// String: the group record (groups only).
    pub group_meta: String,
    /// Hash: user → join request record (groups only).
    pub join_requests: String,
    // ---- search (issue 19) ----
    /// Sorted set, one member `m`: the search index mark as its score (the
    /// log is indexed up to it; `ZADD GT` only raises it).
    pub search_mark: String,
    /// `{c:<conv>}:sx:` — prefix of the postings of each token (see
    /// [`ConvKeys::search_postings`]).
    search_prefix: String,
    /// Hash: annotation records (`crate::store::Annotation`): `r:<seq>` →
    /// the reactions on that message, `p` → the pins (the domain's bytes).
    pub annotations: String,
    /// Sorted set, all scores 0: the thread index, one member
    /// [`thread_member`] per reply that is not recalled.
    pub threads: String,
    /// Hash: message seq → `<version>:<to-do record (prost bytes)>`.
    pub todos: String,
}

impl ConvKeys {
    /// The keys of `conversation` (wire form): `d:<a>:<b>` or `g:<group>`
    /// with every part a valid id. What makes a key safe is checked here;
    /// the canonical order of a 1:1 id (`a < b`) is the domain's business,
    /// so a non-canonical one is simply another (empty) conversation.
    pub fn new(conversation: &str) -> Result<Self, KeyError> {
        let parts = if let Some(rest) = conversation.strip_prefix("d:") {
            rest.split_once(':')
                .ok_or(IdError::BadConversation)
                .and_then(|(a, b)| check_id(a).and(check_id(b)))
        } else if let Some(g) = conversation.strip_prefix("g:") {
            check_id(g)
        } else {
            Err(IdError::BadConversation)
        };
        parts.map_err(|e| refuse("conversation", conversation, e))?;
        Ok(Self::of_checked(conversation))
    }

    /// The keys of group `group_id`'s conversation.
    pub fn group(group_id: &str) -> Result<Self, KeyError> {
        id("group", group_id)?;
        Ok(Self::of_checked(&format!("g:{group_id}")))
    }

    fn of_checked(c: &str) -> Self {
        let k = |role: &str| format!("{{c:{c}}}:{role}");
        Self {
            head: k("h"),
            log: k("l"),
            dedup: k("d"),
            dedup_expiry: k("x"),
            user_convs: k("u"),
            members: k("m"),
            member_order: k("o"),
            group_version: k("v"),
            group_meta: k("g"),
            join_requests: k("j"),
            search_mark: k("sxm"),
            search_prefix: k("sx:"),
            annotations: k("a"),
            threads: k("t"),
            todos: k("td"),
        }
    }

    /// Sorted set: the seqs (score and member) of the messages of this
    /// conversation holding `token`, the newest
    /// `SEARCH_POSTINGS_PER_TOKEN_MAX` of them. The token comes after the
    /// hash tag and the role, so whatever it holds it cannot move the key to
    /// another slot or onto another role's key.
    pub fn search_postings(&self, token: &str) -> String {
        format!("{}{token}", self.search_prefix)
    }
}

/// The keys of one room (all under `{r:<room>}`; issue 19).
#[derive(Debug, Clone)]
pub struct RoomKeys {
    /// String: the room record (written once, `SET NX`).
    pub meta: String,
    /// String: the room's newest seq (`INCR`).
    pub head: String,
    /// List, newest first: the kept messages, each an entry with its seq
    /// field appended (trimmed to the newest `keep` by every post).
    pub recent: String,
}

impl RoomKeys {
    /// The keys of room `room_id`, a valid id.
    pub fn new(room_id: &str) -> Result<Self, KeyError> {
        id("room", room_id)?;
        let k = |role: &str| format!("{{r:{room_id}}}:{role}");
        Ok(Self {
            meta: k("m"),
            head: k("h"),
            recent: k("l"),
        })
    }
}

/// The keys of one user (all under `{u:<user>}`).
#[derive(Debug, Clone)]
pub struct UserKeys {
    /// Sorted set, all scores 0: every conversation the user ever had a
    /// record for (a superset: see docs/redis.md).
    pub convs: String,
    /// Sorted set: users this user ever had a friendship record with.
    pub friends: String,
    /// Sorted set: users who ever sent this user a friend request.
    pub requests_in: String,
    /// Sorted set: users this user ever sent a friend request.
    pub requests_out: String,
    /// Sorted set: users this user ever blocked.
    pub blocked: String,
    /// String: the profile (prost bytes).
    pub profile: String,
    /// String with a TTL: the presence record (prost bytes).
    pub presence: String,
    /// String: the chosen presence setting (prost bytes), kept until changed.
    pub presence_setting: String,
    /// Set: the gateway nodes where the user has a device that counts
    /// toward presence, kept by the gateway's backend workers (see the
    /// gateway's docs/cluster.md). While it is not empty, a presence record
    /// saying the user's last device left is not written.
    pub presence_nodes: String,
    /// String: the ban (prost bytes), kept until lifted.
    pub ban: String,
    /// String: the PHC string of the local account's password hash.
    pub credential: String,
    /// Sorted set: [`user_item`] of (conversation, thread root) → the
    /// user's read mark of that thread (the score).
    pub thread_reads: String,
    /// Sorted set, all scores 0: [`user_item`] of every to-do that may be
    /// open for the user (a superset, see `Store::set_todo_open`).
    pub todos_open: String,
    /// Hash: `<platform>:<token>` → the push token record (prost bytes) of
    /// each token the user holds (a superset: a token whose owner key
    /// names another user is not the user's; see [`push_owner`]).
    pub push_tokens: String,
    /// Hash: `<platform>:<device>` → the `push_tokens` field of that
    /// device's token (one per device and platform).
    pub push_devices: String,
    /// String: the user's notification mutes (prost bytes).
    pub push_settings: String,
}

/// The owner key of a push token, `{t:<platform>:<token in base64url>}`: a
/// string naming the one user who holds it. Tokens are arbitrary printable
/// ASCII (they may hold `{` and `}`): base64url keeps them out of the hash
/// tag's syntax.
pub fn push_owner(platform: i32, token: &str) -> String {
    use base64::Engine as _;
    let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    format!("{{t:{platform}:{t}}}")
}

/// The field of a push token in [`UserKeys::push_tokens`].
pub fn push_field(platform: i32, token: &str) -> String {
    format!("{platform}:{token}")
}

impl UserKeys {
    /// The keys of `user`, which must be a valid id.
    pub fn new(user: &str) -> Result<Self, KeyError> {
        id("user", user)?;
        let k = |role: &str| format!("{{u:{user}}}:{role}");
        Ok(Self {
            convs: k("c"),
            friends: k("f"),
            requests_in: k("ri"),
            requests_out: k("ro"),
            blocked: k("b"),
            profile: k("p"),
            presence: k("s"),
            presence_setting: k("ps"),
            presence_nodes: k("pn"),
            ban: k("ban"),
            credential: k("pw"),
            thread_reads: k("tr"),
            todos_open: k("to"),
            push_tokens: k("pt"),
            push_devices: k("pd"),
            push_settings: k("pm"),
        })
    }
}

/// The keys of the social records between two distinct users (all under
/// `{p:<a>:<b>}`, `a < b`).
#[derive(Debug, Clone)]
pub struct PairKeys {
    /// Hash: user → that user's friendship record for the other.
    pub friends: String,
    /// Hash: requester → their pending request to the other.
    pub requests: String,
    /// Set: users of the pair who block the other.
    pub blocks: String,
}

impl PairKeys {
    /// The keys of the pair `{x, y}` (either order). A user paired with
    /// themself gets a pair too (`{p:x:x}`): the domain decides whether
    /// that is allowed, the store only keeps it apart from everything else.
    pub fn new(x: &str, y: &str) -> Result<Self, KeyError> {
        id("user", x)?;
        id("user", y)?;
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        let k = |role: &str| format!("{{p:{a}:{b}}}:{role}");
        Ok(Self {
            friends: k("f"),
            requests: k("r"),
            blocks: k("b"),
        })
    }

    /// The hash tag content, which decides the Cluster slot.
    pub fn tag(&self) -> &str {
        tag_of(&self.friends)
    }
}

/// The key of call `call` in progress (`{k:<call>}:call`): a string
/// `<version>:<state>` with the call's lease as its TTL.
pub fn call(call: &str) -> Result<String, KeyError> {
    id("call", call)?;
    Ok(format!("{{k:{call}}}:call"))
}

/// The keys of `tenant`'s audit log (`""`: the default tenant's), one
/// slot: `{a:<tenant>}:audit` (a hash of seq → encoded record) and
/// `{a:<tenant>}:audit:n` (the newest seq).
pub fn audit(tenant: &str) -> Result<(String, String), KeyError> {
    if !tenant.is_empty() {
        tern_protocol::ids::check_tenant(tenant).map_err(|e| refuse("tenant", tenant, e))?;
    }
    Ok((
        format!("{{a:{tenant}}}:audit"),
        format!("{{a:{tenant}}}:audit:n"),
    ))
}

/// The keys of `tenant`'s departments, all in one slot (`{o:<tenant>}`)
/// so a change of its tree is one atomic step: `…:d` (a hash of department
/// → record) and `…:dv` (department → version).
pub fn org(tenant: &str) -> Result<(String, String), KeyError> {
    org_tenant(tenant)?;
    Ok((format!("{{o:{tenant}}}:d"), format!("{{o:{tenant}}}:dv")))
}

/// `{o:<tenant>}:m:<dept>`: a hash of a department's members (user →
/// record).
pub fn org_members(tenant: &str, dept: &str) -> Result<String, KeyError> {
    org_tenant(tenant)?;
    id("department", dept)?;
    Ok(format!("{{o:{tenant}}}:m:{dept}"))
}

/// `{o:<tenant>}:u:<user>`: the set of a user's departments.
pub fn org_user(tenant: &str, user: &str) -> Result<String, KeyError> {
    org_tenant(tenant)?;
    id("user", user)?;
    Ok(format!("{{o:{tenant}}}:u:{user}"))
}

/// `{o:<tenant>}:seats`: the users holding a seat of the tenant.
pub fn seats(tenant: &str) -> Result<String, KeyError> {
    org_tenant(tenant)?;
    Ok(format!("{{o:{tenant}}}:seats"))
}

/// `{o:<tenant>}:bytes`: the tenant's stored media bytes, as counted.
pub fn storage(tenant: &str) -> Result<String, KeyError> {
    org_tenant(tenant)?;
    Ok(format!("{{o:{tenant}}}:bytes"))
}

fn org_tenant(tenant: &str) -> Result<(), KeyError> {
    if tenant.is_empty() {
        return Ok(());
    }
    tern_protocol::ids::check_tenant(tenant).map_err(|e| refuse("tenant", tenant, e))
}

/// hold `:`, so the split is unambiguous).
pub fn dedup_field(sender: &str, client_msg_id: &str) -> Result<String, KeyError> {
    id("sender", sender)?;
    id("client message", client_msg_id)?;
    Ok(format!("{sender}:{client_msg_id}"))
}

/// The dedup field of an edit: `<sender>:e:<client_edit_id>`, which no
/// message's field (one `:` only) can equal.
pub fn edit_dedup_field(sender: &str, client_edit_id: &str) -> Result<String, KeyError> {
    id("sender", sender)?;
    id("client edit", client_edit_id)?;
    Ok(format!("{sender}:e:{client_edit_id}"))
}

/// The field of an annotation record in [`ConvKeys::annotations`].
pub fn annotation_field(key: crate::store::Annotation) -> String {
    match key {
        crate::store::Annotation::Reactions(seq) => format!("r:{seq}"),
        crate::store::Annotation::Pins => "p".to_owned(),
    }
}

/// A member of a conversation's thread index: `<root>:<seq>`, both 20
/// digits, so byte order is (root, seq) order (tern.lua builds the same).
pub fn thread_member(root: u64, seq: u64) -> String {
    format!("{root:020}:{seq:020}")
}

/// A member of a user's per-conversation index: `<conversation>!<seq>`
/// with 20 digits. `!` sorts below every id character, so byte order is
/// (conversation, seq) order, as in the embedded store.
pub fn user_item(conversation: &str, seq: u64) -> String {
    format!("{conversation}!{seq:020}")
}

/// The (conversation, seq) of a [`user_item`].
pub fn parse_user_item(item: &str) -> Option<(&str, u64)> {
    let (conv, seq) = item.rsplit_once('!')?;
    Some((conv, seq.parse().ok()?))
}

/// The hash tag of a key built here (between its first `{` and `}`).
pub fn tag_of(key: &str) -> &str {
    // Every key built here starts with `{` and holds exactly one `}`
    // (checked ids hold none), so both finds succeed; fall back to the whole
    // key rather than panic if that ever changes.
    match (key.find('{'), key.find('}')) {
        (Some(open), Some(close)) if open < close => &key[open + 1..close],
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_conversation_share_one_tag() {
        // Proves every conversation key is under `{c:<conversation>}`, so
        // they hash to one Cluster slot.
        let k = ConvKeys::new("d:alice:bob").unwrap();
        for key in [
            &k.head,
            &k.log,
            &k.dedup,
            &k.dedup_expiry,
            &k.user_convs,
            &k.members,
        ] {
            assert_eq!(tag_of(key), "c:d:alice:bob", "{key}");
        }
        let g = ConvKeys::group("team").unwrap();
        assert_eq!(tag_of(&g.group_meta), "c:g:team");
        assert_eq!(g.log, ConvKeys::new("g:team").unwrap().log);
    }

    #[test]
    fn ids_that_could_break_out_of_a_key_are_refused() {
        // Proves an id with `{`, `}`, `:` or other bytes never becomes a key:
        // the constructor returns a typed error instead.
        for bad in ["a}b", "{x", "a:b", "", "a b", "é"] {
            assert!(UserKeys::new(bad).is_err(), "{bad:?}");
            assert!(ConvKeys::group(bad).is_err(), "{bad:?}");
            assert!(PairKeys::new("ok", bad).is_err(), "{bad:?}");
            assert!(dedup_field("ok", bad).is_err(), "{bad:?}");
        }
        for bad in [
            "d:a", "g:{x}", "x:y", "g:", "d:a:b:c", "d:a}:b", "d::b", "g:a:b",
        ] {
            assert!(ConvKeys::new(bad).is_err(), "{bad:?}");
        }
        let e = UserKeys::new(&"}".repeat(1000)).unwrap_err();
        assert!(e.id.len() <= REFUSED_ID_QUOTE_BYTES_MAX);
    }

    #[test]
    fn pair_keys_do_not_depend_on_argument_order() {
        // Proves both users of a pair reach the same records.
        assert_eq!(
            PairKeys::new("b", "a").unwrap().friends,
            PairKeys::new("a", "b").unwrap().friends
        );
        assert_eq!(PairKeys::new("a", "b").unwrap().tag(), "p:a:b");
    }
}
