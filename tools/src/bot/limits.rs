//! What keeps a bot from running up a bill: questions per user and per bot
//! per minute (sliding windows), and a daily token budget. No I/O and no
//! clock: times are passed in, in milliseconds.

use std::collections::{HashMap, VecDeque};

/// The window of the per-minute limits, in milliseconds.
pub const WINDOW_MS: u64 = 60_000;
/// Users whose recent questions one bot remembers; beyond, the users idle
/// longest are forgotten (they may then ask again at once).
pub const USERS_TRACKED_MAX: usize = 100_000;
/// A day, in milliseconds (the budget resets at 00:00 UTC).
pub const DAY_MS: u64 = 86_400_000;

/// Why a question is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This user asked `user_questions_per_minute` within the last minute;
    /// the next question is let through after `retry_after_ms`.
    User {
        /// Wait until the window lets one through, in milliseconds.
        retry_after_ms: u64,
    },
    /// The bot answered `bot_questions_per_minute` within the last minute.
    Bot {
        /// Wait until the window lets one through, in milliseconds.
        retry_after_ms: u64,
    },
    /// Today's token budget is spent.
    Budget,
}

/// One bot's limits.
#[derive(Debug)]
pub struct Limits {
    user_per_minute: u32,
    bot_per_minute: u32,
    daily_tokens_max: u64,
    users: HashMap<String, VecDeque<u64>>,
    bot: VecDeque<u64>,
    /// The UTC day (`ms / DAY_MS`) `spent` counts.
    day: u64,
    spent: u64,
}

impl Limits {
    /// Limits with these rates (0: that limit is off) and budget (0: none).
    pub fn new(user_per_minute: u32, bot_per_minute: u32, daily_tokens_max: u64) -> Self {
        Self {
            user_per_minute,
            bot_per_minute,
            daily_tokens_max,
            users: HashMap::new(),
            bot: VecDeque::new(),
            day: 0,
            spent: 0,
        }
    }

    /// Admits a question of `user` at `now_ms`, counting it, or says why
    /// not (a refused question is not counted).
    pub fn admit(&mut self, user: &str, now_ms: u64) -> Result<(), Refusal> {
        self.roll_day(now_ms);
        if self.daily_tokens_max > 0 && self.spent >= self.daily_tokens_max {
            return Err(Refusal::Budget);
        }
        if let Some(wait) = full(&mut self.bot, self.bot_per_minute, now_ms) {
            return Err(Refusal::Bot {
                retry_after_ms: wait,
            });
        }
        if self.user_per_minute > 0 {
            if !self.users.contains_key(user) && self.users.len() >= USERS_TRACKED_MAX {
                self.forget_idle(now_ms);
            }
            let log = self.users.entry(user.to_owned()).or_default();
            if let Some(wait) = full(log, self.user_per_minute, now_ms) {
                return Err(Refusal::User {
                    retry_after_ms: wait,
                });
            }
            log.push_back(now_ms);
        }
        if self.bot_per_minute > 0 {
            self.bot.push_back(now_ms);
        }
        Ok(())
    }

    /// Counts tokens a reply spent.
    pub fn spend(&mut self, tokens: u64, now_ms: u64) {
        self.roll_day(now_ms);
        self.spent = self.spent.saturating_add(tokens);
    }

    /// Tokens spent today.
    pub fn spent_today(&self) -> u64 {
        self.spent
    }

    fn roll_day(&mut self, now_ms: u64) {
        let day = now_ms / DAY_MS;
        if day != self.day {
            self.day = day;
            self.spent = 0;
        }
    }

    /// Drops users with nothing in their window; if none, the one whose
    /// last question is oldest.
    fn forget_idle(&mut self, now_ms: u64) {
        let since = now_ms.saturating_sub(WINDOW_MS);
        self.users
            .retain(|_, log| log.back().is_some_and(|t| *t > since));
        if self.users.len() >= USERS_TRACKED_MAX
            && let Some(k) = self
                .users
                .iter()
                .min_by_key(|(_, log)| log.back().copied().unwrap_or(0))
                .map(|(k, _)| k.clone())
        {
            self.users.remove(&k);
        }
    }
}

/// Whether a window of `per_minute` is full at `now_ms` (after dropping
/// what left it): the wait until its oldest entry leaves.
fn full(log: &mut VecDeque<u64>, per_minute: u32, now_ms: u64) -> Option<u64> {
    if per_minute == 0 {
        return None;
    }
    while log
        .front()
        .is_some_and(|t| now_ms.saturating_sub(*t) >= WINDOW_MS)
    {
        log.pop_front();
    }
    if log.len() >= per_minute as usize {
        let oldest = log.front().copied().unwrap_or(now_ms);
        Some((oldest + WINDOW_MS).saturating_sub(now_ms).max(1))
    } else {
        None
    }
}

/// A token estimate for text without a tokenizer: characters / 4, rounded
/// up (about right for English with OpenAI's tokenizers; an overestimate
/// for code, an underestimate for some scripts).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_budget_refuse_and_recover_on_time_passed_in() {
        // Proves the per-user window (another user is unaffected), the
        // retry hint, recovery after a minute, and the budget that refuses
        // once spent and resets at the next UTC day.
        let day0 = 10 * DAY_MS;
        let mut l = Limits::new(2, 3, 100);
        assert_eq!(l.admit("a", day0), Ok(()));
        assert_eq!(l.admit("a", day0 + 1_000), Ok(()));
        assert_eq!(
            l.admit("a", day0 + 2_000),
            Err(Refusal::User {
                retry_after_ms: 58_000
            })
        );
        assert_eq!(l.admit("b", day0 + 2_000), Ok(()));
        assert!(matches!(
            l.admit("c", day0 + 2_000),
            Err(Refusal::Bot { .. })
        ));
        assert_eq!(l.admit("a", day0 + 61_000), Ok(()));
        l.spend(100, day0 + 61_000);
        assert_eq!(l.admit("d", day0 + 200_000), Err(Refusal::Budget));
        assert_eq!(l.admit("d", day0 + DAY_MS), Ok(()));
        assert_eq!(l.spent_today(), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
