//! Request paths as clients send them: normalization never panics, and
//! what it returns is canonical — no dot segments and no backslashes left
//! to walk around a policy with, no escape of an unreserved character,
//! merged slashes where the mode merges them — and normalizing it again
//! changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypoint::normalize::{is_canonical, normalize, PathNormalization};

const MODES: [PathNormalization; 3] = [
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

fn unreserved_escape(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    (0..bytes.len().saturating_sub(2)).find_map(|i| {
        let escape = path.get(i..i + 3)?;
        let value = u8::from_str_radix(escape.strip_prefix('%')?, 16).ok()?;
        (bytes[i] == b'%'
            && (value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~')))
        .then(|| escape.to_owned())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for mode in MODES {
        if is_canonical(path, mode) {
            assert_eq!(
                normalize(path, mode).as_deref(),
                Ok(path),
                "{mode:?}: {path:?} was told canonical"
            );
        }
        let Ok(out) = normalize(path, mode) else {
            continue;
        };
        let query_free = path.split('#').next().unwrap_or_default();
        if !(query_free.starts_with('/') || query_free.starts_with('\\')) {
            assert_eq!(out, query_free, "non-path targets are left alone");
            continue;
        }
        assert!(out.starts_with('/'), "{path:?} → {out:?}");
        assert!(!out.contains('\\'), "{path:?} → {out:?}");
        assert!(
            !out.split('/').any(|s| s == "." || s == ".."),
            "{mode:?}: {path:?} → {out:?} keeps a dot segment"
        );
        assert_eq!(
            unreserved_escape(&out),
            None,
            "{mode:?}: {path:?} → {out:?} keeps an escaped unreserved character"
        );
        if mode != PathNormalization::Base {
            assert!(!out.contains("//"), "{mode:?}: {path:?} → {out:?}");
        }
        if mode == PathNormalization::DecodeAndMergeSlashes {
            let upper = out.to_ascii_uppercase();
            assert!(
                !upper.contains("%2F") && !upper.contains("%5C"),
                "{path:?} → {out:?}"
            );
        }
        assert_eq!(
            normalize(&out, mode).as_deref(),
            Ok(out.as_str()),
            "{mode:?}: {path:?} → {out:?} is not stable"
        );
    }
});
