//! How a person names a conversation on the command line: `@bob` (the 1:1
//! chat with bob), `#team` (the group team), a wire id (`d:alice:bob`,
//! `g:team`), or a bare name (`launch`), which is a group you are in or a
//! user, whichever it names (`exec::resolve` asks the server; this module
//! does no I/O). Ids are checked here so a typo is a usage error before
//! anything is sent.

use tern_protocol::ids::{self, ConversationId};

use super::ClientError;

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A 1:1 chat with this user.
    User(String),
    /// A group.
    Group(String),
}

impl Target {
    /// Parses `bob`, `@bob`, `#team`, `d:a:b` (with `me` one of a, b) or
    /// `g:team`. A bare name reads as a user here; [`is_bare`] says when
    /// it may instead be a group (see `exec::resolve`).
    pub fn parse(me: &str, s: &str) -> Result<Self, ClientError> {
        let s = s.trim();
        if s.starts_with("d:") || s.starts_with("g:") {
            let conv = ConversationId::parse(s)
                .map_err(|e| ClientError::Usage(format!("conversation {s:?}: {e}")))?;
            return match &conv {
                ConversationId::Group(g) => Ok(Self::Group(g.clone())),
                ConversationId::Direct { .. } => conv
                    .peer_of(me)
                    .map(|p| Self::User(p.to_owned()))
                    .ok_or_else(|| ClientError::Usage(format!("{me} is not part of {s}"))),
            };
        }
        if let Some(g) = s.strip_prefix('#') {
            return Ok(Self::Group(checked(g, "group id")?));
        }
        let user = s.strip_prefix('@').unwrap_or(s);
        Ok(Self::User(checked(user, "user id")?))
    }

    /// The user target `user` (checked).
    pub fn user(user: &str) -> Result<Self, ClientError> {
        Ok(Self::User(checked(user, "user id")?))
    }

    /// The group target `group` (checked; a leading `#` is allowed).
    pub fn group(group: &str) -> Result<Self, ClientError> {
        let g = group.strip_prefix('#').unwrap_or(group);
        Ok(Self::Group(checked(g, "group id")?))
    }

    /// The wire conversation id, seen by `me`.
    pub fn conversation(&self, me: &str) -> Result<String, ClientError> {
        match self {
            Self::Group(g) => Ok(ConversationId::group(g).to_string()),
            Self::User(u) => ConversationId::direct(me, u)
                .map(|c| c.to_string())
                .ok_or_else(|| {
                    ClientError::Usage("a conversation with yourself does not exist".into())
                }),
        }
    }

    /// `@bob` or `#team`.
    pub fn label(&self) -> String {
        match self {
            Self::User(u) => format!("@{u}"),
            Self::Group(g) => format!("#{g}"),
        }
    }
}

/// Whether `s` is a bare name (`launch`): neither `@user`, `#group` nor a
/// wire id, so it may name a group or a user.
pub fn is_bare(s: &str) -> bool {
    let s = s.trim();
    !(s.starts_with('@') || s.starts_with('#') || s.starts_with("d:") || s.starts_with("g:"))
}

/// A conversation id from any of the [`Target::parse`] spellings.
pub fn conversation(me: &str, s: &str) -> Result<String, ClientError> {
    Target::parse(me, s)?.conversation(me)
}

/// `@peer` or `#group` for a wire conversation id seen by `me`; the id
/// itself when it is neither.
pub fn label(me: &str, conv: &str) -> String {
    match ConversationId::parse(conv) {
        Ok(ConversationId::Group(g)) => format!("#{g}"),
        Ok(c) => c
            .peer_of(me)
            .map_or_else(|| conv.to_owned(), |p| format!("@{p}")),
        Err(_) => conv.to_owned(),
    }
}

/// Checks an id, naming what it is in the error.
pub fn checked(id: &str, what: &str) -> Result<String, ClientError> {
    ids::check_id(id).map_err(|e| ClientError::Usage(format!("{what} {id:?}: {e}")))?;
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_names_the_same_conversation() {
        // Proves user, @user, d:..., #group and g:... parse to the wire id
        // the server builds, and bad ids are usage errors.
        for s in ["bob", "@bob", "d:alice:bob"] {
            assert_eq!(conversation("alice", s).unwrap(), "d:alice:bob", "{s}");
        }
        for s in ["#team", "g:team"] {
            assert_eq!(conversation("alice", s).unwrap(), "g:team", "{s}");
        }
        assert_eq!(label("bob", "d:alice:bob"), "@alice");
        assert_eq!(label("bob", "g:team"), "#team");
        assert!(matches!(
            conversation("alice", "d:bob:carol"),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            conversation("alice", "alice"),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            Target::parse("alice", "b o b"),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            Target::parse("alice", "#"),
            Err(ClientError::Usage(_))
        ));
        assert!(is_bare("launch") && is_bare(" bob"));
        for s in ["@bob", "#launch", "d:alice:bob", "g:launch"] {
            assert!(!is_bare(s), "{s}");
        }
    }
}
