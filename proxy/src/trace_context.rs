//! W3C Trace Context (`traceparent`, `tracestate`): continuing a caller's
//! trace with a span of our own, or starting one.

use http::{HeaderMap, HeaderValue};

/// The trace a request belongs to and the span this proxy makes for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// This proxy's span.
    pub span_id: [u8; 8],
    /// The caller's span, when the request came with a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    /// `tracestate`, carried as received.
    pub state: Option<String>,
}

/// A `traceparent` as read: trace id, parent id, flags.
type Parent = ([u8; 16], [u8; 8], u8);

impl TraceContext {
    /// Continues the trace `headers` carry, keeping the caller's sampling
    /// decision; without a valid `traceparent`, starts a trace sampled with
    /// probability `sample_percent`/100.
    pub fn continue_or_start(headers: &HeaderMap, sample_percent: f64) -> Self {
        let span_id = nonzero_bytes();
        let parsed = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match parsed {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id,
                parent_id: Some(parent),
                sampled: flags & 1 == 1,
                state: headers
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            },
            None => Self {
                trace_id: nonzero_bytes(),
                span_id,
                parent_id: None,
                sampled: sample_percent >= 100.0 || rand::random::<f64>() * 100.0 < sample_percent,
                state: None,
            },
        }
    }

    /// The `traceparent` that names this proxy's span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    /// Sets `traceparent` (and `tracestate`, as received) on a request
    /// going onward.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::from_str(&self.traceparent()) {
            headers.insert("traceparent", value);
        }
        headers.remove("tracestate");
        if let Some(value) = self
            .state
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            headers.insert("tracestate", value);
        }
    }
}

/// Reads a `traceparent` as the W3C recommendation says: version `ff` is
/// invalid; version 00 is exactly `00-<32 hex>-<16 hex>-<2 hex>`; a later
/// version is read by its first four fields and may carry more after a
/// `-`. Hex is lower case; all-zero ids are invalid.
pub fn parse_traceparent(value: &str) -> Option<Parent> {
    let value = value.trim();
    let version = value.get(..2)?;
    if version == "ff" || !is_lower_hex(version) {
        return None;
    }
    if version == "00" && value.len() != 55 {
        return None;
    }
    if value.len() < 55 || (value.len() > 55 && value.as_bytes()[55] != b'-') {
        return None;
    }
    let b = value.as_bytes();
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace: [u8; 16] = unhex(&value[3..35])?.try_into().ok()?;
    let parent: [u8; 8] = unhex(&value[36..52])?.try_into().ok()?;
    let flags = unhex(&value[53..55])?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !is_lower_hex(text) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn nonzero_bytes<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = std::array::from_fn(|_| rand::random());
        if bytes != [0; N] {
            return bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[test]
    fn traceparents_are_read_as_the_recommendation_says() {
        let valid = format!("00-{TRACE}-{PARENT}-01");
        let cases: Vec<(String, Option<u8>)> = vec![
            (valid.clone(), Some(1)),
            (format!("00-{TRACE}-{PARENT}-00"), Some(0)),
            (format!("  00-{TRACE}-{PARENT}-01 "), Some(1)),
            // A later version may add fields.
            (format!("01-{TRACE}-{PARENT}-01-extra"), Some(1)),
            (format!("01-{TRACE}-{PARENT}-01"), Some(1)),
            (format!("01-{TRACE}-{PARENT}-01x"), None),
            // Version 00 is exactly 55 characters.
            (format!("00-{TRACE}-{PARENT}-01-extra"), None),
            (format!("ff-{TRACE}-{PARENT}-01"), None),
            (format!("00-{}-{PARENT}-01", TRACE.to_uppercase()), None),
            (format!("00-{}-{PARENT}-01", "0".repeat(32)), None),
            (format!("00-{TRACE}-{}-01", "0".repeat(16)), None),
            (format!("00-{TRACE}-{PARENT}-0g"), None),
            (format!("00_{TRACE}-{PARENT}-01"), None),
            (format!("00-{TRACE}{PARENT}-01"), None),
            (String::new(), None),
        ];
        for (header, flags) in cases {
            assert_eq!(
                parse_traceparent(&header).map(|(_, _, f)| f),
                flags,
                "{header:?}"
            );
        }
        let (trace, parent, _) = parse_traceparent(&valid).unwrap();
        assert_eq!(hex(&trace), TRACE);
        assert_eq!(hex(&parent), PARENT);
    }

    #[test]
    fn a_trace_is_continued_with_a_span_of_our_own() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
        );
        headers.insert("tracestate", "vendor=opaque".parse().unwrap());
        let ctx = TraceContext::continue_or_start(&headers, 0.0);
        assert_eq!(hex(&ctx.trace_id), TRACE);
        assert_eq!(ctx.parent_id.map(|p| hex(&p)), Some(PARENT.into()));
        assert!(ctx.sampled, "the caller's decision is kept");
        let mut onward = headers.clone();
        ctx.inject(&mut onward);
        let sent = onward["traceparent"].to_str().unwrap();
        assert!(sent.starts_with(&format!("00-{TRACE}-")), "{sent}");
        assert!(!sent.contains(PARENT), "our span is the parent now: {sent}");
        assert!(sent.ends_with("-01"));
        assert_eq!(onward["tracestate"], "vendor=opaque");

        // Unsampled stays unsampled, whatever our own rate.
        headers.insert(
            "traceparent",
            format!("00-{TRACE}-{PARENT}-00").parse().unwrap(),
        );
        assert!(!TraceContext::continue_or_start(&headers, 100.0).sampled);
    }

    #[test]
    fn without_a_parent_a_trace_is_started_at_the_sampling_rate() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "garbage".parse().unwrap());
        let started = TraceContext::continue_or_start(&headers, 100.0);
        assert_eq!(started.parent_id, None);
        assert!(started.sampled);
        assert!(parse_traceparent(&started.traceparent()).is_some());
        assert!(!TraceContext::continue_or_start(&headers, 0.0).sampled);
        let sampled = (0..2000)
            .filter(|_| TraceContext::continue_or_start(&HeaderMap::new(), 10.0).sampled)
            .count();
        assert!(
            (100..300).contains(&sampled),
            "about 10% of 2000: {sampled}"
        );
    }
}
