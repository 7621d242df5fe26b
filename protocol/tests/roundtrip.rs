//! Property: every `Frame` survives encode → decode unchanged, over TCP
//! framing (prefix + body) and WebSocket (body only), and a stream of several
//! frames decodes to the same frames wherever the reads split it.
//!
//! The strategy covers client and server variants, `Deliver`/`SyncResult`
//! with entries of every body kind, `Send` with every content kind, enum
//! values outside the schema (kept as i32), and arbitrary Unicode text.

use proptest::collection::vec;
use proptest::prelude::*;
use tern_protocol::codec::{
    Decoded, decode_body, decode_frame, encode_body, encode_frame, encode_prefix,
};
use tern_protocol::pb::{self, frame::Body};

/// Frames in these tests stay far below this; the limit is not under test.
const MAX: usize = 1 << 20;

// ---- leaf strategies ---------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9._@-]{1,10}"
}

/// Any i32: enum fields must round-trip values the schema does not define.
fn enum_i32() -> impl Strategy<Value = i32> {
    prop_oneof![0..8i32, any::<i32>()]
}

fn ids() -> impl Strategy<Value = Vec<String>> {
    vec(id(), 0..4)
}

fn cursor() -> impl Strategy<Value = pb::Cursor> {
    (id(), any::<u64>()).prop_map(|(c, seq)| pb::Cursor {
        conversation_id: format!("g:{c}"),
        seq,
    })
}

fn cursors() -> impl Strategy<Value = Vec<pb::Cursor>> {
    vec(cursor(), 0..4)
}

fn media() -> impl Strategy<Value = pb::MediaRef> {
    (
        id(),
        text(),
        any::<u64>(),
        any::<(u32, u32, u32)>(),
        proptest::option::of(id()),
        text(),
    )
        .prop_map(
            |(media_id, mime, size_bytes, (width, height, duration_ms), thumb, sha256)| {
                pb::MediaRef {
                    media_id,
                    mime,
                    size_bytes,
                    width,
                    height,
                    duration_ms,
                    thumbnail: thumb.map(|t| pb::Thumbnail {
                        media_id: t,
                        mime: "image/jpeg".into(),
                        width: 16,
                        height: 9,
                    }),
                    sha256,
                }
            },
        )
}

fn content() -> impl Strategy<Value = pb::Content> {
    use pb::content::Kind;
    let no_nan = any::<f64>().prop_filter("NaN is not equal to itself", |f| !f.is_nan());
    let kind = prop_oneof![
        text().prop_map(|text| Kind::Text(pb::Text { text })),
        proptest::option::of(media()).prop_map(|media| Kind::Image(pb::Image { media })),
        (proptest::option::of(media()), text())
            .prop_map(|(media, name)| Kind::File(pb::File { media, name })),
        proptest::option::of(media()).prop_map(|media| Kind::Voice(pb::Voice { media })),
        proptest::option::of(media()).prop_map(|media| Kind::Video(pb::Video { media })),
        (no_nan.clone(), no_nan, text(), text()).prop_map(
            |(latitude, longitude, name, address)| {
                Kind::Location(pb::Location {
                    latitude,
                    longitude,
                    name,
                    address,
                })
            }
        ),
        (text(), vec(any::<u8>(), 0..24))
            .prop_map(|(r#type, data)| Kind::Custom(pb::Custom { r#type, data })),
    ];
    proptest::option::of(kind).prop_map(|kind| pb::Content { kind })
}

fn group_event() -> impl Strategy<Value = pb::GroupEvent> {
    use pb::group_event::Kind;
    let members = || ids().prop_map(|user_ids| pb::MembersChanged { user_ids });
    let kind = prop_oneof![
        (text(), id()).prop_map(|(name, owner)| Kind::Created(pb::GroupCreated { name, owner })),
        members().prop_map(Kind::Joined),
        members().prop_map(Kind::Left),
        members().prop_map(Kind::Kicked),
        text().prop_map(Kind::Renamed),
        text().prop_map(Kind::Announcement),
        (id(), enum_i32())
            .prop_map(|(user_id, role)| Kind::RoleChanged(pb::RoleChanged { user_id, role })),
        (id(), any::<u64>(), any::<bool>()).prop_map(|(user_id, muted_until_ms, muted_all)| {
            Kind::MuteChanged(pb::MuteChanged {
                user_id,
                muted_until_ms,
                muted_all,
            })
        }),
        any::<bool>().prop_map(Kind::Dissolved),
        (id(), text()).prop_map(|(user_id, nickname)| {
            Kind::NicknameChanged(pb::NicknameChanged { user_id, nickname })
        }),
        (enum_i32(), any::<bool>()).prop_map(|(join_policy, history_visible)| {
            Kind::PolicyChanged(pb::PolicyChanged {
                join_policy,
                history_visible,
            })
        }),
    ];
    proptest::option::of(kind).prop_map(|kind| pb::GroupEvent { kind })
}

fn entry() -> impl Strategy<Value = pb::Entry> {
    use pb::entry::Body as E;
    let body = prop_oneof![
        (content(), ids(), any::<bool>(), any::<u64>(), any::<bool>()).prop_map(
            |(content, mentions, mention_all, reply_to_seq, recalled)| {
                E::Message(pb::Message {
                    content: Some(content),
                    mentions,
                    mention_all,
                    reply_to_seq,
                    recalled,
                    edit_count: 0,
                    edited_at_ms: 0,
                    reactions: vec![],
                    streaming: false,
                    thread_root_seq: 0,
                    thread: None,
                })
            }
        ),
        any::<u64>().prop_map(|seq| E::Recalled(pb::Recalled { seq })),
        any::<u64>().prop_map(|up_to_seq| E::Read(pb::ReadMark { up_to_seq })),
        group_event().prop_map(E::GroupEvent),
    ];
    (
        id(),
        any::<u64>(),
        id(),
        text(),
        text(),
        any::<u64>(),
        proptest::option::of(body),
    )
        .prop_map(
            |(c, seq, sender, sender_device, client_msg_id, time_ms, body)| pb::Entry {
                conversation_id: format!("g:{c}"),
                seq,
                sender,
                sender_device,
                client_msg_id,
                time_ms,
                body,
            },
        )
}

fn entries() -> impl Strategy<Value = Vec<pb::Entry>> {
    vec(entry(), 0..6)
}

// ---- frames --------------------------------------------------------------------

fn client_body() -> impl Strategy<Value = Body> {
    use pb::send::To;
    let to = prop_oneof![id().prop_map(To::UserId), id().prop_map(To::GroupId)];
    prop_oneof![
        (
            text(),
            id(),
            enum_i32(),
            any::<u32>(),
            vec(text(), 0..3),
            cursors(),
            text()
        )
            .prop_map(
                |(
                    token,
                    device_id,
                    platform,
                    protocol_version,
                    capabilities,
                    resume_cursors,
                    v,
                )| {
                    Body::Auth(pb::Auth {
                        token,
                        device_id,
                        platform,
                        protocol_version,
                        capabilities,
                        resume_cursors,
                        client_version: v,
                    })
                }
            ),
        any::<u64>().prop_map(|nonce| Body::Ping(pb::Ping { nonce })),
        (
            id(),
            proptest::option::of(to),
            proptest::option::of(content()),
            ids(),
            any::<bool>()
        )
            .prop_map(|(client_msg_id, to, content, mentions, mention_all)| {
                Body::Send(pb::Send {
                    client_msg_id,
                    to,
                    content,
                    mentions,
                    mention_all,
                    reply_to_seq: 0,
                    streaming: false,
                    thread_root_seq: 0,
                })
            }),
        cursors().prop_map(|cursors| Body::DeliverAck(pb::DeliverAck { cursors })),
        (cursors(), any::<u32>())
            .prop_map(|(cursors, limit)| Body::Sync(pb::SyncRequest { cursors, limit })),
        (id(), any::<u64>(), any::<u32>()).prop_map(|(c, before_seq, limit)| {
            Body::History(pb::HistoryRequest {
                conversation_id: c,
                before_seq,
                limit,
                thread_root_seq: 0,
            })
        }),
        (id(), any::<bool>()).prop_map(|(c, typing)| {
            Body::Typing(pb::TypingRequest {
                conversation_id: c,
                typing,
            })
        }),
        (enum_i32(), text())
            .prop_map(|(state, text)| Body::SetPresence(pb::SetPresenceRequest { state, text })),
        ids().prop_map(|user_ids| Body::PresenceQuery(pb::PresenceQuery { user_ids })),
        (id(), vec(any::<u64>(), 0..8)).prop_map(|(c, seqs)| {
            Body::ReadBy(pb::ReadByQuery {
                conversation_id: c,
                seqs,
            })
        }),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text())
        )
            .prop_map(|(nickname, avatar, bio)| {
                Body::ProfileUpdate(pb::ProfileUpdate {
                    nickname,
                    avatar,
                    bio,
                })
            }),
        (text(), text(), ids(), enum_i32(), any::<bool>()).prop_map(
            |(group_id, name, members, join_policy, history_visible)| {
                Body::GroupCreate(pb::GroupCreate {
                    group_id,
                    name,
                    members,
                    join_policy,
                    history_visible,
                })
            }
        ),
        (id(), ids()).prop_map(|(group_id, user_ids)| {
            Body::GroupInvite(pb::GroupInvite { group_id, user_ids })
        }),
        Just(Body::FriendList(pb::FriendListRequest {})),
        (enum_i32(), text(), text()).prop_map(|(platform, token, topic)| {
            Body::PushRegister(pb::PushTokenRegister {
                platform,
                token,
                topic,
            })
        }),
        (enum_i32(), text()).prop_map(|(platform, token)| {
            Body::PushUnregister(pb::PushTokenUnregister { platform, token })
        }),
        Just(Body::PushList(pb::PushListRequest {})),
        (text(), any::<u64>()).prop_map(|(conversation_id, until_ms)| {
            Body::PushMute(pb::PushMute {
                conversation_id,
                until_ms,
            })
        }),
        (id(), text(), enum_i32(), ids()).prop_map(|(room_id, name, kind, admins)| {
            Body::RoomCreate(pb::RoomCreate {
                room_id,
                name,
                kind,
                admins,
            })
        }),
        id().prop_map(|room_id| Body::RoomJoin(pb::RoomJoin { room_id })),
        (id(), proptest::option::of(content()), id()).prop_map(
            |(room_id, content, client_msg_id)| {
                Body::RoomPost(pb::RoomPost {
                    room_id,
                    content,
                    client_msg_id,
                })
            }
        ),
        id().prop_map(|room_id| Body::RoomDelete(pb::RoomDelete { room_id })),
        (id(), any::<u64>(), any::<u32>()).prop_map(|(room_id, before_seq, limit)| {
            Body::RoomHistory(pb::RoomHistoryRequest {
                room_id,
                before_seq,
                limit,
            })
        }),
        (enum_i32(), text(), id(), any::<u64>()).prop_map(|(platform, token, device_id, t)| {
            Body::PushListResult(pb::PushListResult {
                tokens: vec![pb::PushToken {
                    platform,
                    token,
                    topic: String::new(),
                    device_id,
                    registered_ms: t,
                }],
                dnd_until_ms: t / 2,
                muted: vec![pb::MutedConversation {
                    conversation_id: "g:team".into(),
                    until_ms: t,
                }],
            })
        }),
    ]
}

fn server_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            id(),
            id(),
            any::<u32>(),
            any::<(u32, u32, u32, u32)>(),
            any::<u64>()
        )
            .prop_map(
                |(user_id, device_id, heartbeat_interval_ms, (a, b, c, d), server_time_ms)| {
                    Body::Welcome(pb::Welcome {
                        user_id,
                        device_id,
                        heartbeat_interval_ms,
                        limits: Some(pb::Limits {
                            frame_bytes_max: a,
                            text_bytes_max: b,
                            unacked_window_max: c,
                            page_entries_max: d,
                        }),
                        node_id: "n1".into(),
                        server_time_ms,
                        protocol_version: 1,
                        tenant_id: String::new(),
                    })
                }
            ),
        any::<(u64, u64)>().prop_map(|(nonce, server_time_ms)| {
            Body::Pong(pb::Pong {
                nonce,
                server_time_ms,
            })
        }),
        (id(), id(), any::<u64>(), any::<bool>()).prop_map(|(m, c, seq, duplicate)| {
            Body::SendAck(pb::SendAck {
                client_msg_id: m,
                conversation_id: c,
                seq,
                server_time_ms: seq / 2,
                duplicate,
            })
        }),
        entries().prop_map(|entries| Body::Deliver(pb::Deliver { entries })),
        (entries(), cursors(), any::<bool>()).prop_map(|(entries, heads, more)| {
            Body::SyncResult(pb::SyncResult {
                entries,
                heads,
                more,
            })
        }),
        (entries(), any::<bool>())
            .prop_map(|(entries, more)| Body::HistoryResult(pb::HistoryResult { entries, more })),
        (enum_i32(), text(), any::<u32>()).prop_map(|(code, reason, retry_after_ms)| {
            Body::Error(pb::Error {
                code,
                reason,
                retry_after_ms,
            })
        }),
        (enum_i32(), text(), text(), any::<u32>()).prop_map(
            |(reason, message, redirect, retry_after_ms)| {
                Body::Kick(pb::Kick {
                    reason,
                    message,
                    redirect,
                    retry_after_ms,
                })
            }
        ),
        (any::<u64>(), text()).prop_map(|(seq, id)| Body::Ok(pb::Ok { seq, id })),
        (id(), enum_i32(), text(), any::<u64>()).prop_map(
            |(user_id, state, text, last_seen_ms)| {
                Body::PresenceEvent(pb::PresenceEvent {
                    presence: Some(pb::Presence {
                        user_id,
                        state,
                        text,
                        last_seen_ms,
                    }),
                })
            }
        ),
        (id(), id(), text()).prop_map(|(group_id, user_id, message)| {
            Body::Event(pb::ServerEvent {
                kind: Some(pb::server_event::Kind::GroupJoinRequested(
                    pb::GroupJoinRequested {
                        group_id,
                        user_id,
                        message,
                    },
                )),
            })
        }),
        (
            id(),
            proptest::option::of(entry()),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(peer, last, unread, mentioned)| {
                Body::ConversationsResult(pb::ConversationListResult {
                    conversations: vec![pb::ConversationSummary {
                        conversation_id: format!("g:{peer}"),
                        peer,
                        last,
                        unread,
                        read_seq: unread / 2,
                        mentioned,
                        last_activity_ms: unread,
                    }],
                    more: mentioned,
                })
            }),
        (id(), enum_i32(), text()).prop_map(|(user_id, role, nickname)| {
            Body::GroupMembersResult(pb::GroupMembersResult {
                members: vec![pb::GroupMember {
                    user_id,
                    role,
                    nickname,
                    ..Default::default()
                }],
                more: false,
            })
        }),
        (id(), text(), enum_i32(), ids(), any::<u64>()).prop_map(
            |(room_id, name, kind, admins, last_seq)| {
                Body::RoomJoined(pb::RoomJoined {
                    room: Some(pb::RoomInfo {
                        room_id,
                        name,
                        kind,
                        owner: String::new(),
                        admins,
                        created_ms: last_seq / 2,
                        last_seq,
                    }),
                })
            }
        ),
        proptest::option::of(entry())
            .prop_map(|entry| Body::RoomDeliver(pb::RoomDeliver { entry })),
        id().prop_map(|room_id| Body::RoomClosed(pb::RoomClosed { room_id })),
        entries().prop_map(|entries| Body::RoomHistoryResult(pb::RoomHistoryResult { entries })),
    ]
}

fn frame() -> impl Strategy<Value = pb::Frame> {
    let body = prop_oneof![client_body(), server_body()];
    (any::<u64>(), proptest::option::of(body))
        .prop_map(|(request_id, body)| pb::Frame { request_id, body })
}

// ---- properties ------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_round_trips_with_and_without_prefix(f in frame()) {
        // Proves decode(encode(f)) == f for TCP framing and for a bare body,
        // and that the TCP form is exactly prefix + body.
        let mut tcp = Vec::new();
        encode_frame(&f, &mut tcp);
        let decoded = decode_frame(&tcp, MAX).unwrap();
        prop_assert_eq!(decoded, Decoded::Frame { frame: f.clone(), consumed: tcp.len() });

        let mut body = Vec::new();
        encode_body(&f, &mut body);
        prop_assert_eq!(decode_body(&body, MAX).unwrap(), f);
        let mut manual = Vec::new();
        encode_prefix(body.len(), &mut manual);
        manual.extend_from_slice(&body);
        prop_assert_eq!(manual, tcp);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_to_the_same_frames(
        frames in vec(frame(), 1..8),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        // Proves a driver that appends each read and decodes whole frames
        // recovers exactly the frames sent, in order, for any split of the
        // stream into reads (including empty and 1-byte reads).
        let mut wire = Vec::new();
        for f in &frames {
            encode_frame(f, &mut wire);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();

        let mut pending = Vec::new();
        let mut got = Vec::new();
        for read in points.windows(2).map(|w| &wire[w[0]..w[1]]) {
            pending.extend_from_slice(read);
            while let Decoded::Frame { frame, consumed } = decode_frame(&pending, MAX).unwrap() {
                got.push(frame);
                pending.drain(..consumed);
            }
        }
        prop_assert!(pending.is_empty());
        prop_assert_eq!(got, frames);
    }
}
