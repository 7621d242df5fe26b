//! Call-signalling helpers shared by gateway/tests/calls.rs (one node) and
//! gateway/tests/cluster_calls.rs (several nodes): request bodies and waits
//! for call pushes. Included with
//! `#[path = "support/calls.rs"] mod calls_support;` beside `mod support;`.
#![allow(dead_code)]

use super::support::Client;
use tern_protocol::pb::{self, frame::Body};

pub const AB: &str = "d:alice:bob";

pub fn invite(conv: &str) -> Body {
    Body::Call(pb::CallAction {
        kind: pb::CallActionKind::Invite as i32,
        conversation_id: conv.into(),
        ..Default::default()
    })
}

pub fn step(kind: pb::CallActionKind, id: &str) -> Body {
    Body::Call(pb::CallAction {
        kind: kind as i32,
        call_id: id.into(),
        ..Default::default()
    })
}

pub fn signal(id: &str, to: &str, kind: pb::CallSignalKind, payload: &str) -> Body {
    Body::CallSignal(pb::CallSignal {
        call_id: id.into(),
        to_user_id: to.into(),
        to_device_id: String::new(),
        kind: kind as i32,
        payload: payload.into(),
    })
}

pub fn ok(f: &pb::Frame) -> pb::Ok {
    match &f.body {
        Some(Body::Ok(o)) => o.clone(),
        other => panic!("expected ok, got {other:?}"),
    }
}

pub fn code(f: &pb::Frame) -> pb::ErrorCode {
    match &f.body {
        Some(Body::Error(e)) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Waits for the call event of `kind` on `c`.
pub fn event(c: &mut Client, kind: pb::CallEventKind) -> pb::CallEvent {
    let f = c.wait_push(|f| matches!(&f.body, Some(Body::CallEvent(e)) if e.kind() == kind));
    match f.body {
        Some(Body::CallEvent(e)) => e,
        _ => unreachable!("the predicate matched a call event"),
    }
}

pub fn signal_event(c: &mut Client) -> pb::CallSignalEvent {
    let f = c.wait_push(|f| matches!(f.body, Some(Body::CallSignalEvent(_))));
    match f.body {
        Some(Body::CallSignalEvent(e)) => e,
        _ => unreachable!("the predicate matched a signal"),
    }
}
