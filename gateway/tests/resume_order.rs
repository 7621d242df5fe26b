//! Push order on a reconnected connection, over real loopback sockets with
//! the real backend, on both drivers (epoll, and io_uring where the kernel
//! has it): the resume push (the backend's sync on the device's behalf)
//! and the live pushes that race it reach the device in seq order.

mod support;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use support::{Client, Gateway, drivers};
use tern_gateway::config::Driver;
use tern_protocol::pb::{self, frame::Body};

const CONV: &str = "d:alice:bob";
const MESSAGES: u64 = 300;

fn each_driver(test: impl Fn(Driver)) {
    for d in drivers() {
        eprintln!("-- driver {d:?}");
        test(d);
    }
}

/// Logs in as bob's phone with `resume_cursors` at `cursor`.
fn resume(gw: &Gateway, cursor: u64) -> Client {
    let mut c = Client::connect(gw.tcp);
    let w = c.request(Body::Auth(pb::Auth {
        token: Gateway::token("bob"),
        device_id: "phone".into(),
        protocol_version: 1,
        resume_cursors: vec![pb::Cursor {
            conversation_id: CONV.into(),
            seq: cursor,
        }],
        ..Default::default()
    }));
    assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");
    c
}

/// The seqs of `CONV` in a frame, if it is a Deliver.
fn deliver_seqs(f: &pb::Frame) -> Option<Vec<u64>> {
    let Some(Body::Deliver(d)) = &f.body else {
        return None;
    };
    Some(
        d.entries
            .iter()
            .filter(|e| e.conversation_id == CONV)
            .map(|e| e.seq)
            .collect(),
    )
}

/// While alice sends 300 messages to bob (one at a time, each acked), bob's
/// device reconnects with resume cursors again and again. On every
/// connection the seqs pushed in the conversation are strictly increasing
/// (no seq goes backwards, none comes twice), and everything pushed plus a
/// final sync covers every seq sent.
#[test]
fn pushes_after_a_resume_keep_seq_order() {
    each_driver(|d| check_resume_order(Gateway::start(d)));
}

/// The same through a one-slot backend queue: resume syncs often wait for
/// room (in the shard's line of blocked requests) while live pushes are
/// held, and the rule still holds.
#[test]
fn pushes_after_a_resume_keep_seq_order_behind_a_full_backend_queue() {
    each_driver(|d| {
        check_resume_order(Gateway::start_with(d, |c| c.backend.queue_entries_max = 1))
    });
}

fn check_resume_order(gw: Gateway) {
    {
        let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
        let done = Arc::new(AtomicBool::new(false));
        let sending = {
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..MESSAGES {
                    let r = alice.send_text("bob", &format!("m{i}"), "hi");
                    assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
                }
                done.store(true, Ordering::Relaxed);
            })
        };
        // Everything bob holds, and its contiguous cursor.
        let mut held = BTreeSet::new();
        let cursor =
            |held: &BTreeSet<u64>| (1..).take_while(|s| held.contains(s)).last().unwrap_or(0);
        let mut connections = 0;
        let mut out_of_order = Vec::new();
        // Bounded: at most 200 connections of at most 300 ms each.
        while connections < 200 {
            let last = done.load(Ordering::Relaxed);
            let mut c = resume(&gw, cursor(&held));
            connections += 1;
            let mut seen: Vec<u64> = Vec::new();
            let until = Instant::now() + Duration::from_millis(if last { 500 } else { 300 });
            while seen.len() < 30 || last {
                let Some(f) = c.read_frame_until(until) else {
                    break;
                };
                let Some(seqs) = deliver_seqs(&f) else {
                    continue;
                };
                seen.extend(&seqs);
                held.extend(&seqs);
                c.send_frame(&pb::Frame {
                    request_id: 0,
                    body: Some(Body::DeliverAck(pb::DeliverAck {
                        cursors: vec![pb::Cursor {
                            conversation_id: CONV.into(),
                            seq: cursor(&held),
                        }],
                    })),
                });
            }
            if seen.windows(2).any(|w| w[0] >= w[1]) {
                out_of_order.push(seen);
            }
            if last {
                break;
            }
        }
        sending.join().unwrap();
        assert!(
            out_of_order.is_empty(),
            "{} of {connections} connections got seqs out of order, e.g. {:?}",
            out_of_order.len(),
            out_of_order[0]
        );
        // Nothing was lost: a final sync fills whatever pushes skipped.
        let mut c = resume(&gw, cursor(&held));
        loop {
            let r = c.request(Body::Sync(pb::SyncRequest {
                cursors: vec![pb::Cursor {
                    conversation_id: CONV.into(),
                    seq: cursor(&held),
                }],
                limit: 0,
            }));
            let Some(Body::SyncResult(s)) = r.body else {
                panic!("{r:?}")
            };
            held.extend(s.entries.iter().map(|e| e.seq));
            if !s.more {
                break;
            }
        }
        assert_eq!(held, (1..=MESSAGES).collect::<BTreeSet<_>>());
        eprintln!("{connections} connections");
    }
}
