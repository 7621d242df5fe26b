//! Identifiers: what a user, device, group or client message id may contain,
//! and the conversation ids the server builds from them.
//!
//! Ids are 1 to [`ID_BYTES_MAX`] bytes of ASCII letters, digits and `.`, `_`,
//! `-`, `@`. The alphabet is deliberately narrow: an id is used inside storage
//! keys (embedded and Redis), and with no `:`, `{`, `}` or whitespace it can
//! neither break out of its key nor steer a Redis Cluster hash slot.
//!
//! An id may name its tenant (docs/tenants.md): `<tenant>~<local>`, the
//! tenant 1 to [`TENANT_BYTES_MAX`] bytes of `[a-z0-9-]`, at most one `~`.
//! An id without `~` belongs to the default tenant (`""`), so a deployment
//! with one tenant never writes one. Ids carry their tenant the way XMPP
//! and Matrix ids carry their domain: the same local name in two tenants is
//! two ids, and which tenant an id is in is read from the id alone.

use std::fmt;

/// Longest id, in bytes.
pub const ID_BYTES_MAX: usize = 64;

/// Longest tenant id, in bytes.
pub const TENANT_BYTES_MAX: usize = 32;

/// Between an id's tenant and its local part.
pub const TENANT_SEPARATOR: char = '~';

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`ID_BYTES_MAX`] bytes.
    #[error("id is longer than {ID_BYTES_MAX} bytes")]
    TooLong,
    /// The id holds a byte outside `[A-Za-z0-9._@-]`.
    #[error("id holds a character outside [A-Za-z0-9._@-]")]
    BadChar,
    /// The part before `~` is not a tenant id (1 to [`TENANT_BYTES_MAX`]
    /// bytes of `[a-z0-9-]`), the part after it is empty, or there is a
    /// second `~`.
    #[error(
        "id's tenant (before ~) is not 1 to {TENANT_BYTES_MAX} of [a-z0-9-], or its local part is empty"
    )]
    BadTenant,
    /// A conversation id is neither `d:<a>:<b>` (a < b) nor `g:<group>`.
    #[error("conversation id is neither d:<a>:<b> nor g:<group>")]
    BadConversation,
}

/// Checks that `id` is a valid user, device, group or client message id.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > ID_BYTES_MAX {
        return Err(IdError::TooLong);
    }
    let local = match id.split_once(TENANT_SEPARATOR) {
        Some((tenant, local)) => {
            check_tenant(tenant)?;
            if local.is_empty() || local.contains(TENANT_SEPARATOR) {
                return Err(IdError::BadTenant);
            }
            local
        }
        None => id,
    };
    if !local.bytes().all(is_id_byte) {
        return Err(IdError::BadChar);
    }
    Ok(())
}

/// Checks that `tenant` is a valid tenant id (not the default tenant `""`).
pub fn check_tenant(tenant: &str) -> Result<(), IdError> {
    let valid = !tenant.is_empty()
        && tenant.len() <= TENANT_BYTES_MAX
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(IdError::BadTenant)
    }
}

/// The tenant an id belongs to: the part before `~`, or `""` (the default
/// tenant) for an id without one. Reads the shape only; `id` is assumed
/// checked.
pub fn tenant_of(id: &str) -> &str {
    id.split_once(TENANT_SEPARATOR).map_or("", |(t, _)| t)
}

/// The part of an id after its tenant (the whole id in the default
/// tenant).
pub fn local_of(id: &str) -> &str {
    id.split_once(TENANT_SEPARATOR).map_or(id, |(_, l)| l)
}

/// The id of `local` in `tenant` (`local` itself in the default tenant).
pub fn qualify(tenant: &str, local: &str) -> String {
    if tenant.is_empty() {
        local.to_owned()
    } else {
        format!("{tenant}{TENANT_SEPARATOR}{local}")
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@')
}

/// The `conversation_id` of a room's entries, `r:<room>` (docs/protocol.md,
/// "Rooms"). Deliberately not a [`ConversationId`]: a room has no log to
/// sync, no members and no read marks, so nothing that takes a
/// conversation (send, sync, history, read) accepts it.
pub fn room_conversation(room_id: &str) -> String {
    format!("r:{room_id}")
}

/// A conversation: a 1:1 chat between two users, or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    /// The 1:1 chat of two distinct users, `a < b` in byte order.
    Direct {
        /// The user whose id sorts first.
        a: String,
        /// The user whose id sorts second.
        b: String,
    },
    /// A group's chat.
    Group(String),
}

impl ConversationId {
    /// The 1:1 conversation of `x` and `y` (in either order). `None` when
    /// they are the same user: a note-to-self is not a conversation here.
    pub fn direct(x: &str, y: &str) -> Option<Self> {
        match x.cmp(y) {
            std::cmp::Ordering::Less => Some(Self::Direct {
                a: x.to_owned(),
                b: y.to_owned(),
            }),
            std::cmp::Ordering::Greater => Some(Self::Direct {
                a: y.to_owned(),
                b: x.to_owned(),
            }),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// A group's conversation.
    pub fn group(group_id: &str) -> Self {
        Self::Group(group_id.to_owned())
    }

    /// Parses the wire form (`d:<a>:<b>` or `g:<group>`), checking every id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if let Some(rest) = s.strip_prefix("d:") {
            let (a, b) = rest.split_once(':').ok_or(IdError::BadConversation)?;
            check_id(a)?;
            check_id(b)?;
            if a >= b {
                return Err(IdError::BadConversation);
            }
            Ok(Self::Direct {
                a: a.to_owned(),
                b: b.to_owned(),
            })
        } else if let Some(g) = s.strip_prefix("g:") {
            check_id(g)?;
            Ok(Self::Group(g.to_owned()))
        } else {
            Err(IdError::BadConversation)
        }
    }

    /// For a 1:1 conversation that `me` is part of: the other user.
    pub fn peer_of(&self, me: &str) -> Option<&str> {
        match self {
            Self::Direct { a, b } if a == me => Some(b),
            Self::Direct { a, b } if b == me => Some(a),
            _ => None,
        }
    }

    /// The tenants of the users or the group the conversation is of (a 1:1
    /// conversation names two, the same one unless it crosses tenants).
    pub fn tenants(&self) -> [&str; 2] {
        match self {
            Self::Direct { a, b } => [tenant_of(a), tenant_of(b)],
            Self::Group(g) => [tenant_of(g), tenant_of(g)],
        }
    }

    /// The group id, for a group conversation.
    pub fn group_id(&self) -> Option<&str> {
        match self {
            Self::Group(g) => Some(g),
            Self::Direct { .. } => None,
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct { a, b } => write!(f, "d:{a}:{b}"),
            Self::Group(g) => write!(f, "g:{g}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_alphabet_and_refuse_the_rest() {
        assert_eq!(check_id("alice.b_c-d@x9"), Ok(()));
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(&"a".repeat(ID_BYTES_MAX)), Ok(()));
        assert_eq!(
            check_id(&"a".repeat(ID_BYTES_MAX + 1)),
            Err(IdError::TooLong)
        );
        for bad in ["a:b", "{a}", "a b", "é", "a\0", "a\n"] {
            assert_eq!(check_id(bad), Err(IdError::BadChar), "{bad:?}");
        }
    }

    #[test]
    fn ids_may_name_their_tenant_once() {
        assert_eq!(check_id("acme~alice"), Ok(()));
        assert_eq!(check_id("a-1~b.c@d"), Ok(()));
        assert_eq!(tenant_of("acme~alice"), "acme");
        assert_eq!(tenant_of("alice"), "");
        assert_eq!(local_of("acme~alice"), "alice");
        assert_eq!(local_of("alice"), "alice");
        assert_eq!(qualify("acme", "alice"), "acme~alice");
        assert_eq!(qualify("", "alice"), "alice");
        for bad in ["~alice", "acme~", "Acme~alice", "a_b~c", "a~b~c", "a.b~c"] {
            assert_eq!(check_id(bad), Err(IdError::BadTenant), "{bad:?}");
        }
        assert_eq!(
            check_id(&format!("{}~x", "t".repeat(TENANT_BYTES_MAX))),
            Ok(())
        );
        assert_eq!(
            check_id(&format!("{}~x", "t".repeat(TENANT_BYTES_MAX + 1))),
            Err(IdError::BadTenant)
        );
        assert_eq!(check_id("acme~a:b"), Err(IdError::BadChar));
        assert_eq!(check_tenant(""), Err(IdError::BadTenant));
        let c = ConversationId::direct("acme~bob", "acme~alice").unwrap();
        assert_eq!(c.to_string(), "d:acme~alice:acme~bob");
        assert_eq!(
            ConversationId::parse("d:acme~alice:acme~bob"),
            Ok(c.clone())
        );
        assert_eq!(c.tenants(), ["acme", "acme"]);
        assert_eq!(ConversationId::group("x~g").tenants(), ["x", "x"]);
    }

    #[test]
    fn conversation_ids_round_trip_and_are_canonical() {
        let c = ConversationId::direct("bob", "alice").unwrap();
        assert_eq!(c.to_string(), "d:alice:bob");
        assert_eq!(ConversationId::parse("d:alice:bob"), Ok(c.clone()));
        assert_eq!(c.peer_of("alice"), Some("bob"));
        assert_eq!(c.peer_of("carol"), None);
        assert_eq!(ConversationId::direct("x", "x"), None);
        assert_eq!(
            ConversationId::parse("d:bob:alice"),
            Err(IdError::BadConversation)
        );
        assert_eq!(
            ConversationId::parse("d:a:a"),
            Err(IdError::BadConversation)
        );
        assert_eq!(
            ConversationId::parse("g:team"),
            Ok(ConversationId::group("team"))
        );
        assert_eq!(ConversationId::parse("g:{x}"), Err(IdError::BadChar));
        assert_eq!(ConversationId::parse("x:y"), Err(IdError::BadConversation));
        assert_eq!(ConversationId::parse("d:a"), Err(IdError::BadConversation));
    }
}
