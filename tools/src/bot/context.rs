//! The messages sent to the model for one question: the system prompt, then
//! as much recent history as fits the bot's token budget (newest kept
//! first), then the question. Tokens are estimated as characters / 4
//! ([`estimate_tokens`]); no tokenizer is shipped. No I/O.

use tern_protocol::pb::{self, entry::Body as EntryBody};

use super::{limits::estimate_tokens, llm::ChatMessage};

/// Extra tokens counted per message for the API's framing of it (role,
/// separators), as OpenAI documents for its chat format.
pub const TOKENS_PER_MESSAGE: u64 = 4;

/// The text of a message entry worth showing the model: a text message,
/// not recalled, not still being written.
pub fn entry_text(e: &pb::Entry) -> Option<&str> {
    let Some(EntryBody::Message(m)) = &e.body else {
        return None;
    };
    if m.recalled || m.streaming {
        return None;
    }
    match m.content.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(pb::content::Kind::Text(t)) if !t.text.is_empty() => Some(&t.text),
        _ => None,
    }
}

/// Builds the request's messages. `history` is in increasing seq and may
/// include the question itself (it is then not repeated); `me` is the bot
/// (its messages are the assistant's); in a group, others' messages are
/// prefixed with their sender so the model can tell people apart.
pub fn build(
    system_prompt: &str,
    history: &[pb::Entry],
    question: &pb::Entry,
    me: &str,
    group: bool,
    tokens_max: u32,
) -> Vec<ChatMessage> {
    let as_message = |e: &pb::Entry, text: &str| {
        if e.sender == me {
            ChatMessage {
                role: "assistant",
                content: text.to_owned(),
            }
        } else if group {
            ChatMessage {
                role: "user",
                content: format!("{}: {text}", e.sender),
            }
        } else {
            ChatMessage {
                role: "user",
                content: text.to_owned(),
            }
        }
    };
    let cost = |m: &ChatMessage| estimate_tokens(&m.content) + TOKENS_PER_MESSAGE;
    let mut out = Vec::new();
    let mut left = u64::from(tokens_max);
    if !system_prompt.is_empty() {
        let s = ChatMessage {
            role: "system",
            content: system_prompt.to_owned(),
        };
        left = left.saturating_sub(cost(&s));
        out.push(s);
    }
    // The question always goes, cut to what is left if it alone is larger.
    let mut q = as_message(question, entry_text(question).unwrap_or(""));
    let q_cost = cost(&q);
    if q_cost > left {
        let chars = (left.saturating_sub(TOKENS_PER_MESSAGE) * 4) as usize;
        q.content = q.content.chars().take(chars).collect();
        left = 0;
    } else {
        left -= q_cost;
    }
    let mut earlier = Vec::new();
    for e in history.iter().rev() {
        if e.seq >= question.seq || e.conversation_id != question.conversation_id {
            continue;
        }
        let Some(text) = entry_text(e) else { continue };
        let m = as_message(e, text);
        let c = cost(&m);
        if c > left {
            break;
        }
        left -= c;
        earlier.push(m);
    }
    out.extend(earlier.into_iter().rev());
    out.push(q);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(conv: &str, seq: u64, sender: &str, t: &str) -> pb::Entry {
        pb::Entry {
            conversation_id: conv.into(),
            seq,
            sender: sender.into(),
            body: Some(EntryBody::Message(pb::Message {
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text { text: t.into() })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn context_keeps_the_newest_history_that_fits_in_order() {
        // Proves the order (system, oldest kept … newest, question), the
        // roles, the group prefix, and that the oldest entries are dropped
        // first when the budget is short.
        let c = "g:team";
        let h = vec![
            text(c, 1, "ann", &"x".repeat(400)),
            text(c, 2, "bot", "earlier answer"),
            text(c, 3, "bob", "hello"),
        ];
        let q = text(c, 4, "ann", "@bot what now?");
        let m = build("be brief", &h, &q, "bot", true, 60);
        let got: Vec<(&str, &str)> = m.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("system", "be brief"),
                ("assistant", "earlier answer"),
                ("user", "bob: hello"),
                ("user", "ann: @bot what now?"),
            ]
        );
        let all = build("", &h, &q, "bot", false, 10_000);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].content.len(), 400);
    }
}
