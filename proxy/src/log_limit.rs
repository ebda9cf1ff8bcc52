//! Rate-limited log lines.
//!
//! A peer that makes a proxy refuse thousands of connections a second must
//! not also make it write thousands of lines a second: the log would drown
//! what matters and cost more than the refusals. Each kind of line (a
//! `&'static str` key) may be written a few times per window; past that the
//! lines are counted, and the next line written says how many were left
//! out. Counters and metrics are never limited, only the log.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Whether to write a line, and how many of its kind were left out before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `suppressed` lines of this kind were left out since the
    /// last one written.
    Log { suppressed: u64 },
    /// Leave it out (it is counted).
    Suppress,
}

struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

/// At most `per_window` lines of each kind per `window`.
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    kinds: Mutex<HashMap<&'static str, Window>>,
}

impl Default for LogLimiter {
    /// Ten lines of a kind per second.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(1))
    }
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            kinds: Mutex::default(),
        }
    }

    /// Decides about one line of kind `key`, now.
    pub fn admit(&self, key: &'static str) -> Admit {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &'static str, now: Instant) -> Admit {
        let mut kinds = self.kinds.lock().expect("log limiter lock");
        let w = kinds.entry(key).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= self.window {
            w.started = now;
            w.written = 0;
        }
        if w.written < self.per_window {
            w.written += 1;
            let suppressed = std::mem::take(&mut w.suppressed);
            Admit::Log { suppressed }
        } else {
            w.suppressed += 1;
            Admit::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_few_per_window_and_then_says_how_many_it_left_out() {
        let limiter = LogLimiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let steps = [
            ("a", 0, Admit::Log { suppressed: 0 }),
            ("a", 1, Admit::Log { suppressed: 0 }),
            ("a", 2, Admit::Suppress),
            ("a", 3, Admit::Suppress),
            // Another kind has its own budget.
            ("b", 4, Admit::Log { suppressed: 0 }),
            ("a", 999, Admit::Suppress),
            // A new window: the first line carries the count.
            ("a", 1000, Admit::Log { suppressed: 3 }),
            ("a", 1001, Admit::Log { suppressed: 0 }),
        ];
        for (key, ms, expected) in steps {
            assert_eq!(limiter.admit_at(key, at(ms)), expected, "{key} at {ms} ms");
        }
    }
}
