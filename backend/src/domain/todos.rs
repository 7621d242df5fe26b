//! To-dos (issue 19): a message turned into a to-do for some members of its
//! conversation, each of whom marks it done (or open again) for themself.
//!
//! A to-do is identified by its message, `(conversation, seq)`: at most one
//! per message. Every change appends a `todo` entry to the conversation's
//! log (pushed to the members, the assignees among them, and synced like
//! any entry) and writes the to-do record in the same atomic store step, a
//! compare-and-set on the record's version ([`AppendEffect::Todo`]).
//!
//! "My open to-dos" is an index per user kept as a superset of the truth:
//! an entry is added before the to-do opens for the user (create, undo) and
//! removed after it closes (done), so a crash between the two steps leaves
//! at worst a stale entry, which the listing checks against the record and
//! skips.
//!
//! [`AppendEffect::Todo`]: crate::store::AppendEffect::Todo

use tern_protocol::ids::ConversationId;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;
use tern_protocol::validate::TODO_ASSIGNEES_MAX;

use super::messages::Active;
use super::{Caller, Domain, Effect, Handled, Outcome, check_id, page, parse_conv};
use crate::error::DomainError;
use crate::store::{Append, AppendEffect, AppendRefused, MemberOf, TodoRecord};

/// How many times a done/undo is decided again when the record changed
/// between the read and the store's compare-and-set (another assignee's
/// change won the race).
const TODO_ATTEMPTS_MAX: usize = 4;

/// Largest page of `todo_list`.
pub const TODO_LIST_PAGE_MAX: u32 = 100;

impl Domain {
    pub(super) fn todo(&self, me: &Caller, now_ms: u64, req: pb::TodoRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.seq == 0 {
            return Err(DomainError::InvalidArgument("seq is 0".into()));
        }
        let action = pb::TodoAction::try_from(req.action)
            .map_err(|_| DomainError::InvalidArgument("unknown todo action".into()))?;
        let active = self.active(&me.user_id, &conv)?;
        let view = self.view(&me.user_id, &conv)?;
        let missing = DomainError::NotFound("no message at this seq");
        if req.seq < view.from || req.seq > view.to {
            return Err(missing);
        }
        let Some(target) = self.store.entries(&view.conv, req.seq, req.seq, 1)?.pop() else {
            return Err(missing);
        };
        let Some(pb::entry::Body::Message(msg)) = &target.body else {
            return Err(missing);
        };
        match action {
            pb::TodoAction::Create => {
                if msg.recalled {
                    return Err(DomainError::MessageRecalled);
                }
                self.todo_create(me, now_ms, &conv, &active, req)
            }
            pb::TodoAction::Done | pb::TodoAction::Undo => {
                self.todo_mark(me, now_ms, &conv, &active, req.seq, action)
            }
            pb::TodoAction::Unspecified => Err(DomainError::InvalidArgument(
                "todo action is unspecified".into(),
            )),
        }
    }

    fn todo_create(
        &self,
        me: &Caller,
        now_ms: u64,
        conv: &ConversationId,
        active: &Active,
        req: pb::TodoRequest,
    ) -> Handled {
        if req.assignees.is_empty() || req.assignees.len() > TODO_ASSIGNEES_MAX {
            return Err(DomainError::InvalidArgument(format!(
                "a to-do has 1 to {TODO_ASSIGNEES_MAX} assignees"
            )));
        }
        let mut assignees: Vec<String> = Vec::with_capacity(req.assignees.len());
        for a in req.assignees {
            check_id("assignees", &a)?;
            if !assignees.contains(&a) {
                assignees.push(a);
            }
        }
        for a in &assignees {
            let member = match conv {
                ConversationId::Direct { a: x, b: y } => a == x || a == y,
                ConversationId::Group(gid) => self.store.group_member(gid, a)?.is_some(),
            };
            if !member {
                return Err(DomainError::AssigneeNotMember(a.clone()));
            }
        }
        let conv_s = conv.to_string();
        if self.store.todo(&conv_s, req.seq)?.is_some() {
            return Err(DomainError::AlreadyExists("a to-do on this message"));
        }
        // The index first (a superset; see the module doc).
        for a in &assignees {
            self.store.set_todo_open(a, &conv_s, req.seq, true)?;
        }
        let record = TodoRecord {
            todo: Some(pb::Todo {
                conversation_id: conv_s.clone(),
                seq: req.seq,
                creator: me.user_id.clone(),
                created_ms: now_ms,
                assignees: assignees
                    .iter()
                    .map(|a| pb::TodoAssignee {
                        user_id: a.clone(),
                        done: false,
                        done_ms: 0,
                    })
                    .collect(),
            }),
            version: 0,
        };
        let event = pb::TodoEvent {
            seq: req.seq,
            action: pb::TodoAction::Create as i32,
            assignees,
        };
        match self.todo_append(me, now_ms, conv, active, event, 0, record)? {
            Ok(out) => Ok(out),
            Err(AppendRefused::TodoChanged) => {
                Err(DomainError::AlreadyExists("a to-do on this message"))
            }
            Err(other) => Err(DomainError::Internal(format!("to-do refused: {other}"))),
        }
    }

    fn todo_mark(
        &self,
        me: &Caller,
        now_ms: u64,
        conv: &ConversationId,
        active: &Active,
        seq: u64,
        action: pb::TodoAction,
    ) -> Handled {
        let conv_s = conv.to_string();
        let done = action == pb::TodoAction::Done;
        for _ in 0..TODO_ATTEMPTS_MAX {
            let Some(mut record) = self.store.todo(&conv_s, seq)? else {
                return Err(DomainError::NotFound("no to-do on this message"));
            };
            let version = record.version;
            let Some(mine) = record
                .todo
                .as_mut()
                .and_then(|t| t.assignees.iter_mut().find(|a| a.user_id == me.user_id))
            else {
                return Err(DomainError::PermissionDenied(
                    "not an assignee of this to-do",
                ));
            };
            if mine.done == done {
                // Already in the state asked for: nothing to append.
                return Ok(Outcome::ok(0));
            }
            mine.done = done;
            mine.done_ms = if done { now_ms } else { 0 };
            if !done {
                // Open again: into the index first.
                self.store.set_todo_open(&me.user_id, &conv_s, seq, true)?;
            }
            let event = pb::TodoEvent {
                seq,
                action: action as i32,
                assignees: Vec::new(),
            };
            match self.todo_append(me, now_ms, conv, active, event, version, record)? {
                Ok(out) => {
                    if done {
                        self.store.set_todo_open(&me.user_id, &conv_s, seq, false)?;
                    }
                    return Ok(out);
                }
                // Another assignee changed it since it was read: again.
                Err(AppendRefused::TodoChanged) => continue,
                Err(other) => {
                    return Err(DomainError::Internal(format!("to-do refused: {other}")));
                }
            }
        }
        Err(DomainError::Internal(
            "the to-do kept changing while it was marked".into(),
        ))
    }

    /// Appends a `todo` entry with its record change; `Ok(Err(_))` for the
    /// store's refusals other than membership.
    #[allow(clippy::too_many_arguments)]
    fn todo_append(
        &self,
        me: &Caller,
        now_ms: u64,
        conv: &ConversationId,
        active: &Active,
        event: pb::TodoEvent,
        expect_version: u32,
        record: TodoRecord,
    ) -> Result<Result<Outcome, AppendRefused>, DomainError> {
        let member_of = match active {
            Active::Group { meta, .. } => Some(MemberOf {
                group_id: meta.group_id.clone(),
                user_id: me.user_id.clone(),
            }),
            Active::Direct { .. } => None,
        };
        let seq = event.seq;
        let entry = Domain::entry(me, now_ms, pb::entry::Body::Todo(event));
        let append = Append {
            conversation: conv.to_string(),
            entry,
            activity: true,
            dedup: None,
            member_of,
            effect: AppendEffect::Todo {
                seq,
                expect_version,
                record: Box::new(record),
            },
            participants: Vec::new(),
        };
        let result = self
            .store
            .append_batch(now_ms, std::slice::from_ref(&append))?
            .pop()
            .ok_or_else(|| DomainError::Internal("no result".into()))?;
        match result {
            Err(AppendRefused::NotMember) => Err(DomainError::NotMember),
            Err(other) => Ok(Err(other)),
            Ok(done) => {
                let recipients = self.conv_recipients(conv, active)?;
                let mut entry = append.entry;
                entry.seq = done.seq;
                entry.conversation_id = append.conversation;
                Ok(Ok(Outcome::with(
                    Body::Ok(pb::Ok {
                        seq: done.seq,
                        id: String::new(),
                    }),
                    vec![Effect::Deliver { entry, recipients }],
                )))
            }
        }
    }

    pub(super) fn todo_list(&self, me: &Caller, req: pb::TodoListRequest) -> Handled {
        let after = match &req.after {
            Some(c) => {
                parse_conv(&c.conversation_id)?;
                Some((c.conversation_id.as_str(), c.seq))
            }
            None => None,
        };
        let limit = page(req.limit, TODO_LIST_PAGE_MAX);
        let index = self.store.todo_index(&me.user_id, after, limit)?;
        // A full page of the index may have more after it.
        let next = (index.len() == limit).then(|| {
            let (conv, seq) = &index[index.len() - 1];
            pb::Cursor {
                conversation_id: conv.clone(),
                seq: *seq,
            }
        });
        let mut todos = Vec::with_capacity(index.len());
        for (conv, seq) in &index {
            // The index is a superset: list only what the record says is
            // open for the caller.
            let Some(todo) = self.store.todo(conv, *seq)?.and_then(|r| r.todo) else {
                continue;
            };
            let open = todo
                .assignees
                .iter()
                .any(|a| a.user_id == me.user_id && !a.done);
            if open {
                todos.push(todo);
            }
        }
        Ok(Outcome::reply(Body::TodoListResult(pb::TodoListResult {
            todos,
            next,
        })))
    }
}
