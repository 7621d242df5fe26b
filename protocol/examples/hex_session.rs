//! Prints a short Tern session as the exact bytes a TCP client sends and
//! receives, each frame annotated field by field. docs/protocol.md quotes its
//! output; a client author in another language can compare their encoder
//! against it byte for byte.
//!
//! Run: `cargo run -p tern-protocol --example hex_session`
//!
//! The server's `Welcome` and `Pong` are not written by hand: they are what
//! a [`Session`] with [`SessionConfig::default`] (the gateway's defaults)
//! answers to the client's `auth` and `ping`, so the limits they show are
//! the ones a client sees from a server with the default configuration.
//!
//! Frames are built with the generated `tern_protocol::pb` types and framed
//! with `prost::Message::encode_length_delimited` (varint length prefix, then
//! the `Frame`), which is Tern's TCP framing. Field names in the annotations
//! come from `tern.proto` itself (read at compile time), so they cannot drift
//! from the contract. This example never opens a socket and reads no clock:
//! every value, times included, is fixed so the output is reproducible.

use std::collections::HashMap;
use std::error::Error;
use std::fmt::Write as _;

use prost::Message as _;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;
use tern_protocol::session::{AuthOk, Event, Session, SessionConfig};

/// The schema, the same file build.rs compiles.
const PROTO: &str = include_str!("../proto/tern/v1/tern.proto");

/// An HS256 JWT for `{"sub":"alice","exp":1798761600}` (2027-01-01), signed
/// with the secret `tern-dev-secret`: a real token of realistic size.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
eyJzdWIiOiJhbGljZSIsImV4cCI6MTc5ODc2MTYwMH0.\
DftRR8BiMPtJmiLNXd2t40PVun3JVbsN-2sSmrOI0OE";

/// Alice's `client_msg_id` for her message (a ULID, as a client would pick).
const CLIENT_MSG_ID: &str = "01JGM7Q3ZK8V6T2X9R4B5N1C0D";

/// 2026-01-01T00:00:00Z, the server's clock at Welcome.
const T0_MS: u64 = 1_767_225_600_000;

/// Bytes (tag, length and value) shown per annotation row before eliding
/// the rest with `…`.
const ROW_BYTES_MAX: usize = 12;

/// Width of the bytes column of an annotation, in characters.
const ROW_HEX_CHARS_MAX: usize = 48;

/// String values shown per annotation row before eliding with `…`.
const ROW_STRING_CHARS_MAX: usize = 44;

fn main() -> Result<(), Box<dyn Error>> {
    print!("{}", render()?);
    Ok(())
}

/// The whole printout: every frame of [`session`], dumped and annotated.
fn render() -> Result<String, Box<dyn Error>> {
    let schema = Schema::parse(PROTO)?;
    let mut out = String::new();
    writeln!(out, "# Tern protocol v1: an example session over TCP")?;
    writeln!(
        out,
        "# produced by: cargo run -p tern-protocol --example hex_session"
    )?;
    writeln!(
        out,
        "# Each frame on the wire = varint length prefix + protobuf `Frame`."
    )?;
    writeln!(
        out,
        "# Annotation columns: offset (hex), bytes, field (number, wire type) = value."
    )?;
    for (i, (who, frame)) in session()?.iter().enumerate() {
        let mut wire = Vec::new();
        frame.encode_length_delimited(&mut wire)?;
        // The bytes must decode back to the same frame: the annotation below
        // then describes exactly what a peer would see.
        let back = pb::Frame::decode_length_delimited(wire.as_slice())?;
        if &back != frame {
            return Err(format!("frame {} does not round-trip", i + 1).into());
        }
        let body_len = frame.encoded_len();
        let prefix_len = wire.len() - body_len;
        writeln!(out)?;
        writeln!(out, "-- {}. {who}: {}", i + 1, body_name(frame))?;
        writeln!(
            out,
            "{} bytes on the wire = {prefix_len}-byte length prefix + {body_len}-byte Frame",
            wire.len()
        )?;
        writeln!(out)?;
        out += &hex_dump(&wire);
        writeln!(out)?;
        out += &annotate(&schema, &wire, prefix_len, body_len)?;
    }
    Ok(out)
}

/// The exchange: Alice's phone connects, pings, sends "hi 👋" to Bob; Bob's
/// laptop (already connected) gets the push and acks it.
fn session() -> Result<Vec<(&'static str, pb::Frame)>, Box<dyn Error>> {
    let conversation = "d:alice:bob";
    let text = pb::Content {
        kind: Some(pb::content::Kind::Text(pb::Text {
            text: "hi 👋".into(),
        })),
    };
    let frame = |request_id, body| pb::Frame {
        request_id,
        body: Some(body),
    };
    let auth = frame(
        1,
        Body::Auth(pb::Auth {
            token: TOKEN.into(),
            device_id: "phone-1".into(),
            platform: pb::Platform::Ios.into(),
            protocol_version: tern_protocol::PROTOCOL_VERSION,
            capabilities: vec![],
            // Alice's phone already holds her chat with Carol up to seq 7;
            // the server pushes what came after.
            resume_cursors: vec![pb::Cursor {
                conversation_id: "d:alice:carol".into(),
                seq: 7,
            }],
            client_version: "ios/2.3.0".into(),
        }),
    );
    let ping = frame(2, Body::Ping(pb::Ping { nonce: 1 }));
    let (welcome, pong) = server_answers(&auth, &ping)?;
    Ok(vec![
        ("alice/phone-1 -> server", auth),
        ("server -> alice/phone-1", welcome),
        ("alice/phone-1 -> server", ping),
        ("server -> alice/phone-1", pong),
        (
            "alice/phone-1 -> server",
            frame(
                3,
                Body::Send(pb::Send {
                    client_msg_id: CLIENT_MSG_ID.into(),
                    to: Some(pb::send::To::UserId("bob".into())),
                    content: Some(text.clone()),
                    mentions: vec![],
                    mention_all: false,
                    reply_to_seq: 0,
                    streaming: false,
                    thread_root_seq: 0,
                }),
            ),
        ),
        (
            "server -> alice/phone-1",
            frame(
                3,
                Body::SendAck(pb::SendAck {
                    client_msg_id: CLIENT_MSG_ID.into(),
                    conversation_id: conversation.into(),
                    seq: 1,
                    server_time_ms: T0_MS + 31_250,
                    duplicate: false,
                }),
            ),
        ),
        (
            "server -> bob/laptop (a push: request_id 0)",
            frame(
                0,
                Body::Deliver(pb::Deliver {
                    entries: vec![pb::Entry {
                        conversation_id: conversation.into(),
                        seq: 1,
                        sender: "alice".into(),
                        sender_device: "phone-1".into(),
                        client_msg_id: CLIENT_MSG_ID.into(),
                        time_ms: T0_MS + 31_250,
                        body: Some(pb::entry::Body::Message(pb::Message {
                            content: Some(text),
                            mentions: vec![],
                            mention_all: false,
                            reply_to_seq: 0,
                            recalled: false,
                            edit_count: 0,
                            edited_at_ms: 0,
                            reactions: vec![],
                            streaming: false,
                            thread_root_seq: 0,
                            thread: None,
                        })),
                    }],
                }),
            ),
        ),
        (
            // A deliver_ack needs no request id; one is set so that an error
            // about it (there is none here) could be matched to it.
            "bob/laptop -> server (not answered)",
            frame(
                2,
                Body::DeliverAck(pb::DeliverAck {
                    cursors: vec![pb::Cursor {
                        conversation_id: conversation.into(),
                        seq: 1,
                    }],
                }),
            ),
        ),
    ])
}

/// Alice's `Welcome` and `Pong`, from her connection's [`Session`] on a server
/// with the default configuration: accepted at time 0 (the server's clock
/// reads [`T0_MS`]), the token accepted at once, the ping 30 s later.
fn server_answers(
    auth: &pb::Frame,
    ping: &pb::Frame,
) -> Result<(pb::Frame, pb::Frame), Box<dyn Error>> {
    let cfg = SessionConfig::default();
    let mut session = Session::new(&cfg, 0, 0);
    session.handle_body(&cfg, 0, T0_MS, &auth.encode_to_vec());
    let Some(Event::Authenticate(request)) = session.poll_event() else {
        return Err("the session did not ask to verify the token".into());
    };
    let ok = AuthOk {
        user_id: "alice",
        device_id: &request.device_id,
        node_id: "gw-1",
        unix_ms: T0_MS,
    };
    session.handle_auth_ok(&cfg, 0, ok)?;
    let welcome = transmitted(&mut session)?;
    session.handle_body(&cfg, 30_000, T0_MS + 30_000, &ping.encode_to_vec());
    let pong = transmitted(&mut session)?;
    Ok((welcome, pong))
}

/// The one frame the session has to send now, decoded.
fn transmitted(session: &mut Session) -> Result<pb::Frame, Box<dyn Error>> {
    let body = session.poll_transmit().ok_or("the session sent nothing")?;
    if session.outbox_frames() != 0 {
        return Err("the session sent more than one frame".into());
    }
    Ok(pb::Frame::decode(body)?)
}

/// The `Frame.body` variant's name as written in the schema.
fn body_name(frame: &pb::Frame) -> &'static str {
    match &frame.body {
        Some(Body::Auth(_)) => "auth (Auth)",
        Some(Body::Welcome(_)) => "welcome (Welcome)",
        Some(Body::Ping(_)) => "ping (Ping)",
        Some(Body::Pong(_)) => "pong (Pong)",
        Some(Body::Send(_)) => "send (Send)",
        Some(Body::SendAck(_)) => "send_ack (SendAck)",
        Some(Body::Deliver(_)) => "deliver (Deliver)",
        Some(Body::DeliverAck(_)) => "deliver_ack (DeliverAck)",
        Some(_) => "another frame",
        None => "no body",
    }
}

/// `xxd`-like: offset, 16 bytes, printable ASCII.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (row, chunk) in bytes.chunks(16).enumerate() {
        let mut hex = String::new();
        for (i, b) in chunk.iter().enumerate() {
            if i == 8 {
                hex.push(' ');
            }
            let _ = write!(hex, "{b:02x} ");
        }
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "{:04x}  {hex:<49} |{ascii}|", row * 16);
    }
    out
}

/// One line per prefix, tag and value, nested messages indented.
fn annotate(
    schema: &Schema,
    wire: &[u8],
    prefix_len: usize,
    body_len: usize,
) -> Result<String, Box<dyn Error>> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "offset{:<ROW_HEX_CHARS_MAX$}field (number, wire type) = value",
        "  bytes"
    );
    row(
        &mut out,
        0,
        0,
        &wire[..prefix_len],
        &format!("length prefix: {body_len} bytes follow"),
    );
    let mut walker = Walker { schema, wire, out };
    walker.message("Frame", prefix_len, wire.len(), 0)?;
    Ok(walker.out)
}

fn row(out: &mut String, offset: usize, depth: usize, bytes: &[u8], text: &str) {
    let mut hex = " ".repeat(2 * depth);
    for b in bytes.iter().take(ROW_BYTES_MAX) {
        let _ = write!(hex, "{b:02x} ");
    }
    if bytes.len() > ROW_BYTES_MAX {
        hex.push('…');
    }
    let indent = " ".repeat(2 * depth);
    let _ = writeln!(out, "{offset:04x}  {hex:<ROW_HEX_CHARS_MAX$}{indent}{text}");
}

/// Walks protobuf wire format by hand, naming fields from the schema.
struct Walker<'a> {
    schema: &'a Schema,
    wire: &'a [u8],
    out: String,
}

impl Walker<'_> {
    /// Annotates the message `name` held in `wire[start..end]`.
    fn message(
        &mut self,
        name: &str,
        start: usize,
        end: usize,
        depth: usize,
    ) -> Result<(), Box<dyn Error>> {
        let fields = self
            .schema
            .messages
            .get(name)
            .ok_or(format!("no message {name}"))?;
        let mut at = start;
        while at < end {
            let tag_at = at;
            let tag = varint(self.wire, &mut at, end)?;
            let number = u32::try_from(tag >> 3)?;
            let wire_type = tag & 7;
            let field = fields
                .get(&number)
                .ok_or(format!("{name} has no field {number}"))?;
            let label = format!(
                "{} ({number}, {})",
                field.name, WIRE_TYPES[wire_type as usize]
            );
            match wire_type {
                0 => {
                    let v = varint(self.wire, &mut at, end)?;
                    let shown = self.scalar(&field.ty, v);
                    row(
                        &mut self.out,
                        tag_at,
                        depth,
                        &self.wire[tag_at..at],
                        &format!("{label} = {shown}"),
                    );
                }
                1 => {
                    let bytes: [u8; 8] =
                        self.wire.get(at..at + 8).ok_or("short I64")?.try_into()?;
                    at += 8;
                    let shown = match field.ty.as_str() {
                        "double" => f64::from_le_bytes(bytes).to_string(),
                        _ => u64::from_le_bytes(bytes).to_string(),
                    };
                    row(
                        &mut self.out,
                        tag_at,
                        depth,
                        &self.wire[tag_at..at],
                        &format!("{label} = {shown}"),
                    );
                }
                2 => {
                    let len = usize::try_from(varint(self.wire, &mut at, end)?)?;
                    let value_at = at;
                    at = at
                        .checked_add(len)
                        .filter(|&a| a <= end)
                        .ok_or("LEN past the end")?;
                    let value = &self.wire[value_at..at];
                    match field.ty.as_str() {
                        "string" => {
                            let s = std::str::from_utf8(value)?;
                            let shown: String = s.chars().take(ROW_STRING_CHARS_MAX).collect();
                            let more = if s.chars().count() > ROW_STRING_CHARS_MAX {
                                "…"
                            } else {
                                ""
                            };
                            let text = format!("{label}, {len} bytes = \"{shown}{more}\"");
                            row(&mut self.out, tag_at, depth, &self.wire[tag_at..at], &text);
                        }
                        "bytes" => {
                            let text = format!("{label}, {len} bytes");
                            row(&mut self.out, tag_at, depth, &self.wire[tag_at..at], &text);
                        }
                        ty if self.schema.messages.contains_key(ty) => {
                            let text = format!("{label}, {len} bytes = {ty} {{");
                            row(
                                &mut self.out,
                                tag_at,
                                depth,
                                &self.wire[tag_at..value_at],
                                &text,
                            );
                            self.message(ty, value_at, at, depth + 1)?;
                        }
                        ty => {
                            let text = format!("{label}, {len} bytes of packed {ty}");
                            row(&mut self.out, tag_at, depth, &self.wire[tag_at..at], &text);
                        }
                    }
                }
                5 => {
                    at = at.checked_add(4).filter(|&a| a <= end).ok_or("short I32")?;
                    row(&mut self.out, tag_at, depth, &self.wire[tag_at..at], &label);
                }
                _ => return Err(format!("wire type {wire_type} in {name}").into()),
            }
        }
        Ok(())
    }

    /// A varint's value as its schema type reads it.
    fn scalar(&self, ty: &str, v: u64) -> String {
        if ty == "bool" {
            return (v != 0).to_string();
        }
        if let Some(values) = self.schema.enums.get(ty) {
            let name = i32::try_from(v).ok().and_then(|n| values.get(&n));
            return match name {
                Some(name) => format!("{v} ({name})"),
                None => format!("{v} (unknown {ty})"),
            };
        }
        v.to_string()
    }
}

const WIRE_TYPES: [&str; 8] = [
    "VARINT", "I64", "LEN", "SGROUP", "EGROUP", "I32", "?6", "?7",
];

/// Reads a base-128 varint from `wire[*at..end]`, advancing `at`.
fn varint(wire: &[u8], at: &mut usize, end: usize) -> Result<u64, Box<dyn Error>> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if *at >= end {
            return Err("truncated varint".into());
        }
        let b = wire[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("overlong varint".into())
}

/// Just enough of `tern.proto` to name fields: messages (fields by number,
/// oneof members included) and enums (value names by number). The schema has
/// no nested messages, maps or groups, which keeps this line-based.
struct Schema {
    messages: HashMap<String, HashMap<u32, Field>>,
    enums: HashMap<String, HashMap<i32, String>>,
}

struct Field {
    name: String,
    ty: String,
}

impl Schema {
    fn parse(proto: &str) -> Result<Self, Box<dyn Error>> {
        enum Block {
            Message(String),
            Enum(String),
            Oneof,
        }
        let mut schema = Schema {
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        let mut stack: Vec<Block> = Vec::new();
        for line in proto.lines() {
            let line = line.split("//").next().unwrap_or_default().trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                ["}"] => {
                    stack.pop().ok_or("unbalanced }")?;
                }
                ["message", name, "{"] => {
                    schema.messages.entry((*name).to_owned()).or_default();
                    stack.push(Block::Message((*name).to_owned()));
                }
                ["message", name, "{}"] => {
                    schema.messages.entry((*name).to_owned()).or_default();
                }
                ["enum", name, "{"] => {
                    schema.enums.entry((*name).to_owned()).or_default();
                    stack.push(Block::Enum((*name).to_owned()));
                }
                ["oneof", _, "{"] => stack.push(Block::Oneof),
                _ => {
                    let Some((lhs, number)) = line.trim_end_matches(';').split_once('=') else {
                        continue; // `syntax`, `package`: nothing to name
                    };
                    let lhs: Vec<&str> = lhs.split_whitespace().collect();
                    let number = number.trim();
                    let enclosing = stack.iter().rev().find(|b| !matches!(b, Block::Oneof));
                    match (enclosing, lhs.as_slice()) {
                        (Some(Block::Enum(e)), [value]) => {
                            let values = schema.enums.get_mut(e).ok_or("enum vanished")?;
                            values.insert(number.parse()?, (*value).to_owned());
                        }
                        (
                            Some(Block::Message(m)),
                            [ty, name] | ["repeated" | "optional", ty, name],
                        ) => {
                            let fields = schema.messages.get_mut(m).ok_or("message vanished")?;
                            let field = Field {
                                name: (*name).to_owned(),
                                ty: (*ty).to_owned(),
                            };
                            fields.insert(number.parse()?, field);
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/protocol.md quotes this example's output verbatim; this proves
    /// the quote is current, so the doc's bytes are the bytes Tern sends.
    #[test]
    fn protocol_doc_quotes_the_current_output() {
        let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
        let doc = std::fs::read_to_string(doc_path).expect("docs/protocol.md is readable");
        let out = render().expect("the example session renders");
        assert!(
            doc.contains(out.trim_end()),
            "docs/protocol.md section 8.2 is stale: paste the output of \
             `cargo run -p tern-protocol --example hex_session` into it"
        );
    }

    /// The line-based schema reader must see every message, field and enum
    /// value of tern.proto, or annotations would stop naming fields; this
    /// spot-checks the first, last and nested-in-oneof declarations.
    #[test]
    fn schema_reader_finds_fields_and_enum_values() {
        let s = Schema::parse(PROTO).expect("tern.proto parses");
        let field = |m: &str, n: u32| {
            s.messages[m]
                .get(&n)
                .map(|f| (f.name.as_str(), f.ty.as_str()))
        };
        assert_eq!(field("Frame", 1), Some(("request_id", "uint64")));
        assert_eq!(field("Frame", 10), Some(("auth", "Auth")));
        assert_eq!(field("Frame", 120), Some(("kick", "Kick")));
        assert_eq!(field("Entry", 13), Some(("group_event", "GroupEvent")));
        assert_eq!(field("Auth", 6), Some(("resume_cursors", "Cursor")));
        assert_eq!(field("ProfileUpdate", 1), Some(("nickname", "string")));
        assert_eq!(field("PolicyChanged", 2), Some(("history_visible", "bool")));
        assert!(s.messages["FriendListRequest"].is_empty());
        assert_eq!(s.enums["ErrorCode"][&44], "ERROR_CODE_HEARTBEAT_TIMEOUT");
        assert_eq!(s.enums["JoinPolicy"][&0], "JOIN_POLICY_OPEN");
    }
}
